"""The bank file: one ``.safetensors`` holding embeddings and a JSON manifest.

Tensors (all rows grouped by character, in manifest order)::

    image_embeddings [M, D] fp16   reference-image embeddings (L2-normalised)
    image_owner      [M]    int32  index of the owning character in the manifest
    image_ref        [M]    int32  index into that character's ``references``
    text_embeddings  [T, D] fp16   embeddings of the character's names and aliases
    text_owner       [T]    int32

``__metadata__["guard.bank"]`` holds the manifest (see embeddings/README.md). Loading uses
safetensors only: no pickle, and the file can be memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
from safetensors import SafetensorError, safe_open

from guard.errors import BankError
from guard.bank.character import Character

if TYPE_CHECKING:
    import torch

FORMAT = "diffusion-guard-bank"
FORMAT_VERSION = 1
MANIFEST_KEY = "guard.bank"


@dataclass
class Entry:
    """A character with its embeddings (fp16, one row per reference / per text)."""

    character: Character
    image_embeddings: torch.Tensor
    texts: tuple[str, ...] = ()
    text_embeddings: "torch.Tensor" = field(default_factory=lambda: _empty(0))


class Bank:
    """Protected characters and their embeddings, tied to the encoder that made them.

    A loaded bank keeps its embeddings as the file's arrays until something needs them as
    tensors (a similarity search, an enrolment): its characters, names and aliases are all a
    model-file scan needs, and it then never imports torch.
    """

    def __init__(self, encoder: str, dim: int, entries: Iterable[Entry] = (), digest: str | None = None,
                 path: str | None = None):
        self.encoder = encoder
        self.dim = dim
        self.path = path
        self._loaded: dict[str, Entry] = {}
        #: Read from a file and not yet turned into tensors, by id: (character, image rows,
        #: texts, text rows).
        self._arrays: dict[str, tuple[Character, np.ndarray, tuple[str, ...], np.ndarray]] | None = None
        for entry in entries:
            self.put(entry)
        self._digest = digest

    @property
    def _entries(self) -> dict[str, Entry]:
        arrays = self._arrays
        if arrays is not None:
            import torch

            # Built whole, then published, then the arrays dropped: a thread that comes in
            # meanwhile builds them again rather than seeing a half-filled bank.
            self._loaded = {cid: Entry(c, torch.from_numpy(img), texts, torch.from_numpy(txt))
                            for cid, (c, img, texts, txt) in arrays.items()}
            self._arrays = None
        return self._loaded

    # Contents ----------------------------------------------------------------------------
    @property
    def characters(self) -> list[Character]:
        arrays = self._arrays
        if arrays is not None:
            return [c for c, *_ in arrays.values()]
        return [e.character for e in self._entries.values()]

    def __len__(self) -> int:
        arrays = self._arrays
        return len(arrays) if arrays is not None else len(self._entries)

    def __contains__(self, cid: str) -> bool:
        arrays = self._arrays
        return cid in (arrays if arrays is not None else self._entries)

    def entry(self, cid: str) -> Entry:
        try:
            return self._entries[cid]
        except KeyError:
            raise BankError(f"character {cid!r} is not in the bank; known: {', '.join(self._entries)}") from None

    def character(self, cid: str) -> Character:
        arrays = self._arrays
        if arrays is not None and cid in arrays:
            return arrays[cid][0]
        return self.entry(cid).character

    @property
    def has_text_embeddings(self) -> bool:
        """Whether any character's names are embedded (prompts are then embedded too)."""
        arrays = self._arrays
        if arrays is not None:
            return any(txt.shape[0] for *_, txt in arrays.values())
        return any(e.text_embeddings.shape[0] for e in self._entries.values())

    def put(self, entry: Entry) -> None:
        """Add or replace one character; the other characters' embeddings are untouched."""
        for name, emb in (("image", entry.image_embeddings), ("text", entry.text_embeddings)):
            if emb.numel() and (emb.ndim != 2 or emb.shape[1] != self.dim):
                raise BankError(f"character {entry.character.id!r}: {name} embeddings of shape "
                                f"{tuple(emb.shape)} do not fit this bank's dimension {self.dim}")
        if entry.image_embeddings.shape[0] != len(entry.character.references):
            raise BankError(f"character {entry.character.id!r}: {entry.image_embeddings.shape[0]} image "
                            f"embeddings for {len(entry.character.references)} references")
        self._entries[entry.character.id] = entry
        self._digest = None
        self._matrices = None

    def remove(self, cid: str) -> None:
        self.entry(cid)
        del self._entries[cid]
        self._digest = None
        self._matrices = None

    # Matrices for the matcher -------------------------------------------------------------
    def image_matrix(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(embeddings [M, D] fp16, owner [M] int64, ref [M] int64)``, rows grouped by character."""
        return self._build_matrices()[0]

    def text_matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._build_matrices()[1]

    def _build_matrices(self):
        import torch

        if getattr(self, "_matrices", None) is None:
            entries = list(self._entries.values())
            img = [e.image_embeddings.to(torch.float16) for e in entries]
            txt = [e.text_embeddings.to(torch.float16) for e in entries if e.text_embeddings.numel()]
            owner = torch.cat([torch.full((e.image_embeddings.shape[0],), i, dtype=torch.int64)
                               for i, e in enumerate(entries)] or [torch.empty(0, dtype=torch.int64)])
            ref = torch.cat([torch.arange(e.image_embeddings.shape[0]) for e in entries]
                            or [torch.empty(0, dtype=torch.int64)])
            towner = torch.cat([torch.full((e.text_embeddings.shape[0],), i, dtype=torch.int64)
                                for i, e in enumerate(entries) if e.text_embeddings.numel()]
                               or [torch.empty(0, dtype=torch.int64)])
            empty = torch.empty((0, self.dim), dtype=torch.float16)
            self._matrices = ((torch.cat(img) if img else empty, owner, ref),
                              (torch.cat(txt) if txt else empty, towner))
        return self._matrices

    # Identity -----------------------------------------------------------------------------
    @property
    def digest(self) -> str:
        """SHA-256 of the bank file as saved (computed from a canonical save when unsaved)."""
        if self._digest is None:
            tensors, manifest = self._serialise()
            h = hashlib.sha256(manifest.encode())
            for tensor in tensors.values():
                h.update(tensor.numpy().tobytes())
            self._digest = h.hexdigest()
        return self._digest

    def require_encoder(self, encoder: str) -> None:
        """Raise `BankError` unless this bank was built with ``encoder``."""
        if encoder != self.encoder:
            where = f" ({self.path})" if self.path else ""
            raise BankError(
                f"the bank{where} was built with encoder {self.encoder!r}, but the encoder in use is "
                f"{encoder!r}: similarities between different encoders mean nothing. Use "
                f"--encoder {self.encoder} or rebuild the bank with: guard bank build REFS_DIR -o BANK "
                f"--encoder {encoder}")

    # Files ----------------------------------------------------------------------------------
    def _serialise(self) -> tuple[dict[str, "torch.Tensor"], str]:
        import torch

        (img, owner, ref), (txt, towner) = self._build_matrices()
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "encoder": self.encoder,
            "dim": self.dim,
            "characters": [{**e.character.to_dict(), "texts": list(e.texts)} for e in self._entries.values()],
        }
        tensors = {
            "image_embeddings": img.contiguous(),
            "image_owner": owner.to(torch.int32).contiguous(),
            "image_ref": ref.to(torch.int32).contiguous(),
            "text_embeddings": txt.contiguous(),
            "text_owner": towner.to(torch.int32).contiguous(),
        }
        return tensors, json.dumps(manifest, ensure_ascii=False, sort_keys=True)

    def save(self, path: str | Path) -> str:
        """Write the bank; returns the file's SHA-256."""
        from safetensors.torch import save_file

        tensors, manifest = self._serialise()
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={MANIFEST_KEY: manifest})
        tmp.replace(path)  # never leave a half-written bank behind
        self._digest = _file_sha256(path)
        self.path = str(path)
        return self._digest

    @classmethod
    def load(cls, path: str | Path) -> "Bank":
        """Read a bank file.

        Raises:
            BankError: missing file, not safetensors, not a guard bank, inconsistent content.
        """
        path = Path(path)
        if not path.is_file():
            raise BankError(f"bank {path} does not exist; build one with: guard bank build REFS_DIR -o {path}")
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise BankError(f"bank {path} is not a readable safetensors file: {exc}") from None
        if MANIFEST_KEY not in meta:
            raise BankError(f"{path} is a safetensors file but not a guard bank (no {MANIFEST_KEY!r} metadata)")
        try:
            manifest = json.loads(meta[MANIFEST_KEY])
        except json.JSONDecodeError as exc:
            raise BankError(f"bank {path}: manifest is not JSON: {exc}") from None
        if not isinstance(manifest, dict):
            raise BankError(f"bank {path}: manifest must be a JSON object")
        return cls._from_parts(manifest, tensors, str(path), _file_sha256(path))

    @classmethod
    def _from_parts(cls, manifest: Any, tensors: Mapping[str, np.ndarray], where: str, digest: str) -> "Bank":
        """Validate the manifest and arrays of a bank file (`BankError` names what is wrong)."""
        if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
            raise BankError(f"bank {where}: format {manifest.get('format')!r} version "
                            f"{manifest.get('version')!r}; this guard reads {FORMAT} version {FORMAT_VERSION}")
        check_manifest(manifest, where)
        needed = {"image_embeddings", "image_owner", "image_ref", "text_embeddings", "text_owner"}
        if not needed <= set(tensors):
            raise BankError(f"bank {where}: missing tensors {', '.join(sorted(needed - set(tensors)))}")
        dim = int(manifest["dim"])
        img, owner = tensors["image_embeddings"], tensors["image_owner"].astype(np.int64)
        txt, towner = tensors["text_embeddings"], tensors["text_owner"].astype(np.int64)
        chars = [Character.from_dict({k: v for k, v in c.items() if k != "texts"}, f"bank {where}")
                 for c in manifest["characters"]]
        arrays = {}
        for i, char in enumerate(chars):
            texts = tuple(manifest["characters"][i].get("texts", ()))
            tsel = txt[towner == i] if txt.size else np.empty((0, dim), dtype=np.float16)
            if tsel.shape[0] != len(texts):
                raise BankError(f"bank {where}: character {char.id!r} has {tsel.shape[0]} text rows "
                                f"for {len(texts)} texts")
            isel = img[owner == i] if img.size else np.empty((0, dim), dtype=np.float16)
            if isel.shape[0] != len(char.references) or (isel.size and isel.shape[1] != dim):
                raise BankError(f"bank {where}: character {char.id!r}: {isel.shape[0]} image rows of width "
                                f"{isel.shape[1] if isel.ndim == 2 else '?'} for {len(char.references)} "
                                f"references of dimension {dim}")
            arrays[char.id] = (char, np.ascontiguousarray(isel), texts, np.ascontiguousarray(tsel))
        if len(arrays) != len(chars):
            raise BankError(f"bank {where}: duplicate character ids")
        bank = cls(str(manifest["encoder"]), dim, digest=digest, path=where)
        bank._arrays = arrays
        return bank

    def info(self) -> dict:
        (img, _, _), (txt, _) = self._build_matrices()
        return {
            "path": self.path,
            "sha256": self.digest,
            "encoder": self.encoder,
            "dim": self.dim,
            "characters": len(self),
            "image_exemplars": int(img.shape[0]),
            "text_exemplars": int(txt.shape[0]),
            "per_character": [
                {"id": e.character.id, "names": dict(e.character.names), "holder": e.character.holder,
                 "references": len(e.character.references), "aliases": len(e.character.all_names),
                 "authorized_accounts": list(e.character.authorized_accounts)}
                for e in self._entries.values()
            ],
        }


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def stack_rows(rows: Sequence["torch.Tensor"], dim: int) -> "torch.Tensor":
    import torch

    return torch.stack(list(rows)).to(torch.float16) if rows else _empty(dim)


def _empty(dim: int) -> "torch.Tensor":
    import torch

    return torch.empty((0, dim), dtype=torch.float16)


#: A bank manifest's fields and their types.
_MANIFEST_FIELDS = {"dim": int, "encoder": str, "characters": list}
_KIND_NAMES = {int: "an integer", str: "a string", list: "a list"}
_REBUILD = "fix: rebuild the bank with: guard bank build REFS_DIR -o BANK"


def check_manifest(manifest: Mapping[str, Any], where: str) -> None:
    """A bank manifest's fields: one message naming the file, the key, the bad value and the fix."""
    for key, kind in _MANIFEST_FIELDS.items():
        if key not in manifest:
            raise BankError(f"bank {where}: manifest key {key!r} is missing; {_REBUILD}")
        value = manifest[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BankError(f"bank {where}: manifest key {key!r} = {value!r:.80}: must be {_KIND_NAMES[kind]}; "
                            f"{_REBUILD}")
    for i, entry in enumerate(manifest["characters"]):
        if not isinstance(entry, dict):
            raise BankError(f"bank {where}: manifest key 'characters'[{i}] = {entry!r:.80}: must be an object "
                            f"(a character); {_REBUILD}")
