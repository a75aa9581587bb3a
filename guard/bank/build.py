"""Building a bank from a references folder, encoding only what is new."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from guard.errors import BankError
from guard.extract.images import IMAGE_SUFFIXES, UnreadableImage, image_files
from guard.bank.character import Character, Reference, read_character_dir
from guard.bank.store import Bank, Entry, stack_rows

if TYPE_CHECKING:
    import torch

log = logging.getLogger("guard")


def build_bank(refs_dir: str | Path, encoder, previous: Bank | None = None) -> Bank:
    """Build a bank from ``refs_dir`` (one sub-folder per character with a ``character.toml``).

    Args:
        refs_dir: the references folder.
        encoder: the encoder that embeds reference images and names.
        previous: an earlier bank made with the same encoder; embeddings of unchanged reference
            images and names are reused from it instead of being encoded again.

    Raises:
        BankError: no character folders, duplicate ids, unreadable reference images.
    """
    refs = Path(refs_dir)
    if not refs.is_dir():
        raise BankError(f"references folder {refs} does not exist or is not a folder")
    folders = sorted(p for p in refs.iterdir() if (p / "character.toml").is_file())
    if not folders:
        raise BankError(f"{refs} holds no character folders (sub-folders with a character.toml)")
    bank = Bank(encoder.name, encoder.dim)
    add_characters(bank, folders, encoder, previous)
    return bank


def add_characters(bank: Bank, folders: Iterable[Path], encoder, previous: Bank | None = None) -> list[str]:
    """Add (or replace) the characters in ``folders``; other characters are not re-encoded."""
    bank.require_encoder(encoder.name)
    # Embeddings from another encoder are never reused.
    source = previous if previous is not None and previous.encoder == encoder.name else bank
    reuse_img, reuse_txt = _reusable(source)

    plans = []
    seen: set[str] = set()
    for folder in folders:
        char, images = read_character_dir(Path(folder))
        if char.id in seen:
            raise BankError(f"character id {char.id!r} appears twice (in {folder})")
        seen.add(char.id)
        refs = [Reference(p.name, _sha256(p)) for p in images]
        plans.append((char, images, refs))

    # One batched encoder pass over every new image and name of every character.
    new_images = {r.sha256: p for _, images, refs in plans for p, r in zip(images, refs)
                  if r.sha256 not in reuse_img}
    new_texts = sorted({t for char, _, _ in plans for t in char.all_names} - set(reuse_txt))
    if new_images:
        paths = list(new_images.values())
        try:
            embs = encoder.encode_images(paths)
        except UnreadableImage as exc:
            raise BankError(f"a reference image cannot be read: {exc}; fix or remove it") from None
        reuse_img.update({sha: embs[i] for i, sha in enumerate(new_images)})
    if new_texts:
        reuse_txt.update(zip(new_texts, encoder.encode_texts(new_texts)))
    log.info("bank: encoded %d new images and %d new names", len(new_images), len(new_texts))

    for char, _images, refs in plans:
        char = dataclasses.replace(char, references=tuple(refs))
        texts = char.all_names
        bank.put(Entry(char, stack_rows([reuse_img[r.sha256] for r in refs], bank.dim), texts,
                       stack_rows([reuse_txt[t] for t in texts], bank.dim)))
    return [c.id for c, _, _ in plans]


def _reusable(bank: Bank) -> tuple[dict[str, "torch.Tensor"], dict[str, "torch.Tensor"]]:
    images, texts = {}, {}
    for char in bank.characters:
        entry = bank.entry(char.id)
        images.update({r.sha256: entry.image_embeddings[i] for i, r in enumerate(char.references)})
        texts.update(zip(entry.texts, entry.text_embeddings))
    return images, texts


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def enroll(bank: Bank, character: str, refs: Path, encoder, holder: str | None = None,
           accounts=(), names=None) -> "Character":
    """Enroll or update ``character`` from a rights holder's notice.

    The images in ``refs`` join the character's references (images already in the bank are
    recognised by digest and not encoded again); ``holder``, ``accounts`` and ``names`` update
    its record. A ``character.toml`` in ``refs`` supplies the other fields for a new character.

    Raises:
        BankError: the folder is missing, holds no image, or an image cannot be read.
    """
    bank.require_encoder(encoder.name)
    if not refs.is_dir():
        raise BankError(f"references folder {refs} does not exist or is not a folder")
    if (refs / "character.toml").is_file():
        base, images = read_character_dir(refs)
        if base.id != character:
            raise BankError(f"{refs / 'character.toml'} describes {base.id!r}, not {character!r}")
    else:
        base = bank.character(character) if character in bank else Character.from_dict({"id": character})
        images = image_files(refs)
    if not images:
        raise BankError(f"{refs} holds no reference images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    old = bank.entry(character) if character in bank else None
    known = {r.sha256: old.image_embeddings[i] for i, r in enumerate(old.character.references)} if old else {}
    known_refs = list(old.character.references) if old else []
    new_refs = [Reference(p.name, _sha256(p)) for p in images]
    fresh = [(p, r) for p, r in zip(images, new_refs) if r.sha256 not in known]
    if fresh:
        try:
            embs = encoder.encode_images([p for p, _ in fresh])
        except UnreadableImage as exc:
            raise BankError(f"a reference image cannot be read: {exc}; fix or remove it") from None
        known.update({r.sha256: embs[i] for i, (_, r) in enumerate(fresh)})
    references = known_refs + [r for r in dict.fromkeys(new_refs) if r.sha256 not in {k.sha256 for k in known_refs}]
    char = dataclasses.replace(
        base,
        holder=holder or base.holder,
        authorized_accounts=tuple(dict.fromkeys([*base.authorized_accounts, *accounts])),
        names={**base.names, **(names or {})},
        references=tuple(references),
    )
    texts = char.all_names
    old_texts = dict(zip(old.texts, old.text_embeddings)) if old else {}
    missing = [t for t in texts if t not in old_texts]
    if missing:
        old_texts.update(zip(missing, encoder.encode_texts(missing)))
    bank.put(Entry(char, stack_rows([known[r.sha256] for r in references], bank.dim), texts,
                   stack_rows([old_texts[t] for t in texts], bank.dim)))
    return char
