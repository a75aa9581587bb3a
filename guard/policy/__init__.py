"""The policy: the only place that turns scores into allow / flag / block.

A policy is a TOML file (see ``guard/data/default-policy.toml`` for the documented
default). Thresholds are layered; a later layer overrides an earlier one key by key::

    [signals.<signal>]                                   every surface, every encoder
    [signals.<signal>.surfaces.<surface>]                one surface
    [encoders."<encoder>".signals.<signal>]              one encoder (thresholds are encoder-specific)
    [encoders."<encoder>".signals.<signal>.surfaces.<surface>]
    character.toml [thresholds.<signal>] in the bank      one character, as its bank says
    [characters.<id>.signals.<signal>]                   one character, as the platform says

A layer may set ``flag`` and ``block`` (score thresholds, for similarity signals) or
``action`` (for exact signals such as an alias or a file hash).
"""

from __future__ import annotations

import functools
import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from guard.errors import ConfigError
from guard.policy.schema import LAYER_KEYS, build_section, check_signal_layers, table, unknown
from guard.policy.settings import (DatasetSettings, GenerationSettings, ModelSettings, PdqSettings, RetentionSettings,
                                   PolicySettings, SECTIONS, StrikesSettings, TextSettings)
from guard.verdict import Action, Signal, Surface

DEFAULT_POLICY = Path(__file__).resolve().parent.parent / "data" / "default-policy.toml"

_FAIL_MODES = {"closed": Action.BLOCK, "review": Action.FLAG, "open": Action.ALLOW}
_TABLES = ("signals", "encoders", "characters")
#: Strike levels, the most severe first.
STRIKE_LEVELS = ("suspend", "notify", "warn")


@dataclass(frozen=True)
class Decision:
    """What the policy decided for one score: the action, the threshold it compared the score
    with (``None`` for a rule's fixed action), and for an authorized account the action the
    score would have had (``would_be``)."""

    action: Action
    threshold: float | None
    would_be: Action | None = None


class Policy:
    """A validated policy. Build with `Policy.load` or `Policy.from_dict`.

    Every decision the guard makes is a method here; the typed sections (``text``,
    ``model``, ``pdq``, ``dataset``, ``strikes``, ``generation``) hold the settings the
    checks need to do their work.
    """

    def __init__(self, data: Mapping[str, Any], source: str = "<dict>"):
        self.source = source
        fail = functools.partial(_fail, source)
        data = table("policy file", data, fail, "[policy] name = \"mine\"")
        inherit = table("policy", data.get("policy", {}), fail, "[policy]").get("inherit", True)
        defaults = _default_data()
        if inherit is True:
            # A platform's policy states what differs from the shipped default.
            data = _merged(defaults, data)
        for key in data:
            if key not in (*SECTIONS, *_TABLES):
                raise fail(key, unknown(key, [*SECTIONS, *_TABLES], "section"))
        # A policy that does not inherit still gets the shipped file's values for the settings
        # it omits, but no thresholds: it starts from nothing there.
        sections = {name: build_section(cls, data.get(name, {}), defaults[name], name, fail)
                    for name, cls in SECTIONS.items()}
        self.settings: PolicySettings = sections["policy"]
        self.text: TextSettings = sections["text"]
        self.model: ModelSettings = sections["model"]
        self.pdq: PdqSettings = sections["pdq"]
        self.dataset: DatasetSettings = sections["dataset"]
        self.strikes: StrikesSettings = sections["strikes"]
        self.generation: GenerationSettings = sections["generation"]
        self.retention: RetentionSettings = sections["retention"]
        _validate_tables(data, fail)
        self._data = json.loads(json.dumps(data))  # a plain, detached copy
        self.name, self.fail_mode, self.top_k = self.settings.name, self.settings.fail_mode, self.settings.top_k
        self.digest = hashlib.sha256(
            json.dumps(self._data, sort_keys=True, ensure_ascii=False).encode()
        ).hexdigest()

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Policy":
        """Read a policy file, layered over the shipped default unless it sets
        ``[policy] inherit = false``; ``None`` loads the shipped default policy.

        Raises:
            ConfigError: unreadable file, invalid TOML, unknown keys or bad values.
        """
        path = Path(path) if path is not None else DEFAULT_POLICY
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"policy {path}: cannot read it ({exc.strerror or exc})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"policy {path}: not valid TOML: {exc}") from None
        return cls(data, str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Policy":
        """A policy from a dict shaped like the TOML file (layered over the default, too)."""
        return cls(data)

    @property
    def character_ids(self) -> list[str]:
        """The characters the policy has a ``[characters.<id>]`` section for."""
        return list(self._data.get("characters", {}))

    def check_characters(self, bank) -> None:
        """Refuse sections for characters the bank does not hold: a mistyped id would
        otherwise leave its thresholds or authorized accounts silently unused.

        Raises:
            ConfigError: naming the unknown ids and the bank's.
        """
        unknown_ids = [cid for cid in self.character_ids if cid not in bank]
        if unknown_ids:
            import difflib

            known = [c.id for c in bank.characters]
            hints = [f"{cid!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(cid, known, 1))
                     else repr(cid) for cid in unknown_ids]
            raise ConfigError(f"policy {self.source}: [characters.<id>] sections for characters not in the bank: "
                              f"{', '.join(hints)}; the bank holds {', '.join(known) or 'no characters'}")

    @property
    def error_action(self) -> Action:
        """What "could not evaluate" becomes under this policy's fail mode."""
        return _FAIL_MODES[self.fail_mode]

    # Thresholds -------------------------------------------------------------------------------
    def layers(self, signal: Signal, surface: Surface, encoder: str | None = None,
               character: str | None = None, bank_thresholds: Mapping[str, Any] | None = None
               ) -> dict[str, Any]:
        """The merged settings for one signal, from the most general layer to the most specific."""
        merged: dict[str, Any] = {}
        sig = self._data.get("signals", {}).get(signal.value, {})
        enc = self._data.get("encoders", {}).get(encoder or "", {}).get("signals", {}).get(signal.value, {})
        chars = self._data.get("characters", {}).get(character or "", {}).get("signals", {})
        for layer in (
            sig,
            sig.get("surfaces", {}).get(surface.value, {}),
            enc,
            enc.get("surfaces", {}).get(surface.value, {}),
            (bank_thresholds or {}).get(signal.value, {}),
            chars.get(signal.value, {}),
        ):
            merged.update({k: v for k, v in layer.items() if k in LAYER_KEYS})
        return merged

    def decide(self, signal: Signal, score: float, surface: Surface, *, encoder: str | None = None,
               character: str | None = None, bank_thresholds: Mapping[str, Any] | None = None
               ) -> Decision | None:
        """The action for one score, or ``None`` when the score stays below every threshold.

        A layer's thresholds decide where it has them (a misspelt alias scores below 1.0 and
        may be held to them); otherwise its fixed ``action`` does, with no threshold.
        """
        settings = self.layers(signal, surface, encoder, character, bank_thresholds)
        block, flag = settings.get("block"), settings.get("flag")
        if block is None and flag is None:
            return Decision(Action(settings["action"]), None) if "action" in settings else None
        if block is not None and score >= block:
            return Decision(Action.BLOCK, float(block))
        if flag is not None and score >= flag:
            return Decision(Action.FLAG, float(flag))
        return None

    def rule(self, signal: Signal, surface: Surface, character: str | None = None) -> Action:
        """The fixed action of an exact rule (a refused pickle, an unreadable input); an exact
        signal without one in the policy blocks."""
        decision = self.decide(signal, 1.0, surface, character=character)
        return decision.action if decision is not None else Action.BLOCK

    def lowest_threshold(self, signal: Signal, surface: Surface, encoder: str | None,
                         characters: Iterable[tuple[str, Mapping[str, Any] | None]] = ()) -> float:
        """The smallest score that could produce a finding, over every character override."""
        values = []
        for character, bank in [(None, None), *characters]:
            layer = self.layers(signal, surface, encoder, character, bank)
            values += [layer[k] for k in ("flag", "block") if layer.get(k) is not None]
        return min(values) if values else float("inf")

    # Scores -----------------------------------------------------------------------------------
    def alias_score(self, edit_distance: int) -> float:
        """A name's score: 1.0 verbatim, ``[text] fuzzy_penalty`` less per edit when misspelt."""
        return max(0.0, 1.0 - self.text.fuzzy_penalty * edit_distance)

    @staticmethod
    def keyword_score(found: int, of: int) -> float:
        """An indirect anchor's score: the share of its keyword set the text holds."""
        return found / of if of else 0.0

    # Rules ------------------------------------------------------------------------------------
    def authorized_accounts(self, character: str) -> frozenset[str]:
        return frozenset(self._data.get("characters", {}).get(character, {}).get("authorized_accounts", ()))

    def for_account(self, decision: Decision, account: str | None, authorized: frozenset[str]) -> Decision:
        """An authorized account (the rights holder's own) is allowed for its character; the
        decision keeps what the action would have been."""
        if account is not None and account in authorized and decision.action is not Action.ALLOW:
            return Decision(Action.ALLOW, decision.threshold, would_be=decision.action)
        return decision

    def pdq_match(self, distance: int, quality: int, surface: Surface, character: str | None) -> Decision | None:
        """A re-upload of a taken-down image: within ``[pdq] max_distance`` bits, for a hash of
        at least ``min_quality``; the action is ``[signals.pdq]``'s."""
        if quality < self.pdq.min_quality or distance > self.pdq.max_distance:
            return None
        return Decision(self.rule(Signal.PDQ, surface, character), float(self.pdq.max_distance))

    def dataset_decision(self, images: int, total: int) -> Decision | None:
        """A training set with ``images`` of ``total`` showing one character: blocked from
        ``[dataset] block_share`` of the set, flagged from ``flag_images`` images. The
        threshold is a share of the set either way (``flag_images / total`` for a flag)."""
        share = images / max(1, total)
        if share >= self.dataset.block_share:
            return Decision(Action.BLOCK, self.dataset.block_share)
        if images >= self.dataset.flag_images:
            return Decision(Action.FLAG, self.dataset.flag_images / max(1, total))
        return None

    @property
    def unreadable_images(self) -> Action:
        """What a training set with unreadable images gets (``[dataset] unreadable_images``)."""
        return Action(self.dataset.unreadable_images)

    @property
    def hash_mismatch(self) -> Action:
        """What a model file whose embedded hash disagrees with its tensors gets."""
        return Action(self.model.hash_mismatch)

    def strike_level(self, blocked_attempts: int) -> str | None:
        """The most severe ``[strikes]`` level ``blocked_attempts`` reaches, if any."""
        return next((level for level in STRIKE_LEVELS if blocked_attempts >= getattr(self.strikes, level)), None)

    def wants_clip_text(self, so_far: Action) -> bool:
        """Whether a prompt whose names gave ``so_far`` is also embedded (``[text] clip_text``)."""
        mode = self.text.clip_text
        return mode == "always" or (mode == "unmatched" and so_far is not Action.BLOCK)

    @staticmethod
    def batch_action(actions: Iterable[Action]) -> Action:
        """A batch (one request's images) is as strong as its strongest verdict."""
        return Action.strongest(actions)


def _fail(source: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"policy {source}: {message}")


@functools.lru_cache(maxsize=1)
def _default_text() -> str:
    return DEFAULT_POLICY.read_text(encoding="utf-8")


def _default_data() -> dict[str, Any]:
    return tomllib.loads(_default_text())


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _validate_tables(data: Mapping[str, Any], fail) -> None:
    """``[signals]``, ``[encoders."<name>"]``, ``[characters.<id>]``."""
    check_signal_layers(data.get("signals", {}), "signals", fail)
    for section, allowed in (("encoders", ("signals",)), ("characters", ("signals", "authorized_accounts"))):
        tables = table(section, data.get(section, {}), fail, f'[{section}."<id>".signals.clip_image]')
        for key, value in tables.items():
            value = table(f"{section}.{key}", value, fail, f'[{section}."{key}".signals.clip_image]')
            for extra in value:
                if extra not in allowed:
                    raise fail(f"{section}.{key}.{extra}", unknown(f"{section}.{key}.{extra}", allowed))
            check_signal_layers(value.get("signals", {}), f"{section}.{key}.signals", fail)
    for cid, value in data.get("characters", {}).items():
        accounts = value.get("authorized_accounts", [])
        if not isinstance(accounts, list) or not all(isinstance(a, str) for a in accounts):
            raise fail(f"characters.{cid}.authorized_accounts",
                       f"characters.{cid}.authorized_accounts = {accounts!r}: must be a list of account names; "
                       f'fix: e.g. authorized_accounts = ["{cid}-official"]')
