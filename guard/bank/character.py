"""A protected character as a rights holder describes it (``character.toml``)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from guard.errors import BankError
from guard.policy import check_signal_layers
from guard.extract.images import image_files

_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_KEYS = {"id", "names", "aliases", "keywords", "keyword_k", "holder", "authorized_accounts",
         "thresholds", "strict_aliases", "benign"}


@dataclass(frozen=True)
class Reference:
    """One reference image of a character, known by its file name and content digest."""

    file: str
    sha256: str


@dataclass(frozen=True)
class Character:
    """One protected character.

    Attributes:
        id: stable identifier (lowercase letters, digits, ``_ . -``).
        names: display name per language tag (``en``, ``ja``, ``zh-Hans``, ...).
        aliases: other names and spellings that identify the character on their own.
        keywords: indirect anchors; a text holding ``keyword_k`` words of one set is a finding.
        holder: the rights holder.
        authorized_accounts: accounts (holder, licensees) allowed to use the character.
        thresholds: per-signal policy layer (``{"clip_image": {"block": 0.9}}``).
        strict_aliases: aliases that are common words and only count next to context.
        benign: phrases containing an alias that are known not to mean the character.
        references: the reference images whose embeddings the bank holds.
    """

    id: str
    names: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    keywords: tuple[tuple[str, ...], ...] = ()
    keyword_k: int = 2
    holder: str = ""
    authorized_accounts: tuple[str, ...] = ()
    thresholds: Mapping[str, Any] = field(default_factory=dict)
    strict_aliases: tuple[str, ...] = ()
    benign: tuple[str, ...] = ()
    references: tuple[Reference, ...] = ()

    @property
    def all_names(self) -> tuple[str, ...]:
        """Display names then aliases, without repeats, in a stable order."""
        seen: dict[str, None] = {}
        for name in [*self.names.values(), *self.aliases, *self.strict_aliases]:
            seen.setdefault(name, None)
        return tuple(seen)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "names": dict(self.names),
            "aliases": list(self.aliases),
            "keywords": [list(k) for k in self.keywords],
            "keyword_k": self.keyword_k,
            "holder": self.holder,
            "authorized_accounts": list(self.authorized_accounts),
            "thresholds": dict(self.thresholds),
            "strict_aliases": list(self.strict_aliases),
            "benign": list(self.benign),
            "references": [{"file": r.file, "sha256": r.sha256} for r in self.references],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "character") -> "Character":
        """Validate and build; `BankError` names the field, the bad value and the fix."""
        unknown = set(data) - _KEYS - {"references"}
        if unknown:
            raise BankError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                            f"allowed: {', '.join(sorted(_KEYS))}")
        cid = data.get("id")
        if not isinstance(cid, str) or not _ID.match(cid):
            raise BankError(f"{where}: id={cid!r} must be 1-64 lowercase letters, digits, '_', '.', '-'")

        def strings(key: str) -> tuple[str, ...]:
            value = data.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                raise BankError(f"{where}: {key} must be a list of non-empty strings, got {value!r}")
            return tuple(value)

        names = data.get("names", {})
        if not isinstance(names, dict) or not all(isinstance(v, str) and v.strip() for v in names.values()):
            raise BankError(f"{where}: names must be a table of language = \"name\", got {names!r}")
        keywords = data.get("keywords", [])
        if not isinstance(keywords, list) or not all(
                isinstance(s, list) and s and all(isinstance(w, str) and w.strip() for w in s) for s in keywords):
            raise BankError(f"{where}: keywords must be a list of word lists, e.g. [[\"plumber\", \"videogame\"]]")
        k = data.get("keyword_k", 2)
        if not isinstance(k, int) or k < 1:
            raise BankError(f"{where}: keyword_k={k!r} must be a positive integer")
        thresholds = data.get("thresholds", {})
        # The policy's own validator: a bad threshold fails here, when the bank is built or
        # loaded, naming the file, never later inside a check.
        check_signal_layers(thresholds, "thresholds", lambda key, message: BankError(f"{where}: {key}: {message}"))
        references = data.get("references", [])
        if not isinstance(references, list) or not all(
                isinstance(r, dict) and isinstance(r.get("file"), str) and isinstance(r.get("sha256"), str)
                for r in references):
            raise BankError(f"{where}: references must be a list of {{file, sha256}} objects")
        refs = tuple(Reference(r["file"], r["sha256"]) for r in references)
        return cls(
            id=cid, names=dict(names), aliases=strings("aliases"),
            keywords=tuple(tuple(s) for s in keywords), keyword_k=k,
            holder=str(data.get("holder", "")), authorized_accounts=strings("authorized_accounts"),
            thresholds=dict(thresholds), strict_aliases=strings("strict_aliases"),
            benign=strings("benign"), references=refs,
        )


def read_character_dir(folder: Path) -> tuple[Character, list[Path]]:
    """Read ``folder/character.toml`` and list the folder's reference images (sorted)."""
    toml_path = folder / "character.toml"
    try:
        data = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BankError(f"{toml_path}: cannot read it ({exc.strerror or exc}); every character "
                        "folder needs a character.toml") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BankError(f"{toml_path}: not valid TOML: {exc}") from None
    data.setdefault("id", folder.name)
    char = Character.from_dict(data, str(toml_path))
    images = image_files(folder)
    return char, images
