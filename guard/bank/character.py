"""A protected character as a rights holder describes it (``character.toml``)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from guard.errors import BankError
from guard.policy.schema import Rule, check_signal_layers, integer, missing, unknown
from guard.extract.images import image_files

_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


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
        strict_aliases: aliases that are common words and only count next to context: another
            of the character's names, one of its keywords, or one of its ``context`` words.
        context: the franchise's own vocabulary (other characters, places, titles) that makes
            a strict alias mean the character ("Mario" next to "Luigi"); never a finding alone.
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
    context: tuple[str, ...] = ()
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
            "context": list(self.context),
            "benign": list(self.benign),
            "references": [{"file": r.file, "sha256": r.sha256} for r in self.references],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "character") -> "Character":
        """Validate and build; `BankError` names the file, the key, the bad value and the fix
        (the policy's schema: a character.toml's ``[thresholds]`` are policy layers)."""

        def fail(key: str, message: str) -> BankError:
            return BankError(f"{where}: {message}")

        for key in data:
            if key not in _FIELDS and key != "references":
                raise fail(key, unknown(key, _FIELDS))
        for key, rule in _FIELDS.items():
            if key in data:
                rule.check(key, data[key], fail)
        if "id" not in data:
            raise fail("id", missing("id", '"ultraman"'))
        thresholds = data.get("thresholds", {})
        # A bad threshold fails here, when the bank is built or loaded, never inside a check.
        check_signal_layers(thresholds, "thresholds", fail)
        references = data.get("references", [])
        _REFERENCES.check("references", references, fail)

        def strings(key: str) -> tuple[str, ...]:
            return tuple(data.get(key, ()))

        return cls(
            id=data["id"], names=dict(data.get("names", {})), aliases=strings("aliases"),
            keywords=tuple(tuple(s) for s in data.get("keywords", ())), keyword_k=data.get("keyword_k", 2),
            holder=data.get("holder", ""), authorized_accounts=strings("authorized_accounts"),
            thresholds=dict(thresholds), strict_aliases=strings("strict_aliases"), context=strings("context"),
            benign=strings("benign"), references=tuple(Reference(r["file"], r["sha256"]) for r in references),
        )


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)


#: character.toml's keys and what each must be (the policy schema's rules).
_FIELDS = {
    "id": Rule("1-64 lowercase letters, digits, '_', '.', '-'", lambda v: isinstance(v, str) and bool(_ID.match(v)),
               '"ultraman"'),
    "names": Rule('a table of language = "name"', lambda v: isinstance(v, dict) and all(
        isinstance(n, str) and n.strip() for n in v.values()), '{en = "Ultraman", ja = "ウルトラマン"}'),
    "aliases": Rule("a list of non-empty strings", _names, '["Ultraman", "Urutoraman"]'),
    "keywords": Rule("a list of word lists", lambda v: isinstance(v, list) and all(
        isinstance(s, list) and s and _names(s) for s in v), '[["giant", "silver", "red", "hero"]]'),
    "keyword_k": integer(1),
    "holder": Rule("a string", lambda v: isinstance(v, str), '"Tsuburaya Productions"'),
    "authorized_accounts": Rule("a list of non-empty strings", _names, '["tsuburaya-official"]'),
    "thresholds": Rule("a table of signals", lambda v: isinstance(v, dict), "{clip_image = {block = 0.9}}"),
    "strict_aliases": Rule("a list of non-empty strings", _names, '["Hero"]'),
    "context": Rule("a list of non-empty strings", _names, '["Luigi", "Bowser"]'),
    "benign": Rule("a list of non-empty strings", _names, '["ultraman marathon"]'),
}
_REFERENCES = Rule("a list of {file, sha256} objects", lambda v: isinstance(v, list) and all(
    isinstance(r, dict) and isinstance(r.get("file"), str) and isinstance(r.get("sha256"), str) for r in v),
    '[{file = "a.png", sha256 = "..."}]')


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
