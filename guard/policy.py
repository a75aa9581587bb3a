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
from typing import Any, Callable, Iterable, Mapping

from .errors import ConfigError
from .verdict import Action, Signal, Surface

DEFAULT_POLICY = Path(__file__).resolve().parent / "data" / "default-policy.toml"

_FAIL_MODES = {"closed": Action.BLOCK, "review": Action.FLAG, "open": Action.ALLOW}
_LAYER_KEYS = {"flag", "block", "action"}


@dataclass(frozen=True)
class Decision:
    action: Action
    threshold: float


@dataclass(frozen=True)
class GenerationSettings:
    """``[generation]``: what the generation hooks do where no score decides."""

    latent_output: str       # "refuse" | "pass"
    unscreened_prompt: str   # "allow" | "block"
    early_abort_every: int   # 0: no early abort
    preview_edge: int        # pixels


class Policy:
    """A validated policy. Build with `Policy.load` or `Policy.from_dict`."""

    def __init__(self, data: Mapping[str, Any], source: str = "<dict>"):
        self.source = source
        if data.get("policy", {}).get("inherit", True):
            # A platform's policy states what differs from the shipped default.
            data = _merged(_default_data(), data)
        self._data = _validate(data, source)
        settings = self._data.get("policy", {})
        self.name: str = settings.get("name", "unnamed")
        self.fail_mode: str = settings.get("fail_mode", "closed")
        self.top_k: int = int(settings.get("top_k", 3))
        # A policy that does not inherit still gets the shipped file's values for what it omits.
        self.generation = GenerationSettings(**{**_default_data()["generation"], **self._data.get("generation", {})})
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

    def section(self, name: str) -> Mapping[str, Any]:
        """A top-level table for a component that owns it (e.g. ``text``)."""
        return self._data.get(name, {})

    @property
    def error_action(self) -> Action:
        """What "could not evaluate" becomes under this policy's fail mode."""
        return _FAIL_MODES[self.fail_mode]

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
            merged.update({k: v for k, v in layer.items() if k in _LAYER_KEYS})
        return merged

    def decide(self, signal: Signal, score: float, surface: Surface, *, encoder: str | None = None,
               character: str | None = None, bank_thresholds: Mapping[str, Any] | None = None
               ) -> Decision | None:
        """The action for one score, or ``None`` when the score stays below every threshold."""
        settings = self.layers(signal, surface, encoder, character, bank_thresholds)
        if "action" in settings:
            return Decision(Action(settings["action"]), 1.0)
        block, flag = settings.get("block"), settings.get("flag")
        if block is not None and score >= block:
            return Decision(Action.BLOCK, float(block))
        if flag is not None and score >= flag:
            return Decision(Action.FLAG, float(flag))
        return None

    def lowest_threshold(self, signal: Signal, surface: Surface, encoder: str | None,
                         characters: Iterable[tuple[str, Mapping[str, Any] | None]] = ()) -> float:
        """The smallest score that could produce a finding, over every character override."""
        values = []
        for character, bank in [(None, None), *characters]:
            layer = self.layers(signal, surface, encoder, character, bank)
            values += [layer[k] for k in ("flag", "block") if layer.get(k) is not None]
        return min(values) if values else float("inf")

    def authorized_accounts(self, character: str) -> frozenset[str]:
        return frozenset(self._data.get("characters", {}).get(character, {}).get("authorized_accounts", []))


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


#: ``[generation]``: the generation hooks' settings (their defaults live in the TOML).
_GENERATION_CHOICES = {"latent_output": ("refuse", "pass"), "unscreened_prompt": ("allow", "block")}
_GENERATION_NUMBERS = {"early_abort_every": 0, "preview_edge": 16}  # the smallest value each may take


def _fits(value: Any, kind: type, lo: float | None, hi: float | None) -> bool:
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if not isinstance(value, int if kind is int else (int, float)):
        return False
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def _validate(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    def fail(where: str, message: str) -> ConfigError:
        return ConfigError(f"policy {source}: {where}: {message}")

    for section in ("policy", "signals", "text", "model", "dataset", "pdq", "strikes", "generation"):
        if not isinstance(data.get(section, {}), dict):
            raise fail(section, f"{data[section]!r} must be a table ([{section}])")
    allowed_top = {"policy", "signals", "encoders", "characters", "text", "model", "dataset", "pdq", "strikes",
                   "generation"}
    unknown = set(data) - allowed_top
    if unknown:
        raise fail(", ".join(sorted(unknown)), f"unknown section; allowed: {', '.join(sorted(allowed_top))}")
    settings = data.get("policy", {})
    unknown_settings = set(settings) - {"name", "fail_mode", "top_k", "inherit"}
    if unknown_settings:
        raise fail("policy", f"unknown key(s) {', '.join(sorted(unknown_settings))}; "
                             "allowed: name, fail_mode, top_k, inherit")
    if settings.get("fail_mode", "closed") not in _FAIL_MODES:
        raise fail("policy.fail_mode", f"{settings.get('fail_mode')!r} is not one of {', '.join(_FAIL_MODES)}")
    top_k = settings.get("top_k", 3)
    if not isinstance(top_k, int) or top_k < 1:
        raise fail("policy.top_k", f"{top_k!r} must be a positive integer")

    text = data.get("text", {})
    text_types = {"benign": list, "fuzzy": bool, "steer": bool, "window_words": int, "window_stride": int}
    for key, value in text.items():
        if key not in text_types:
            raise fail(f"text.{key}", f"unknown key; allowed: {', '.join(text_types)}")
        expected = text_types[key]
        if not isinstance(value, expected) or (expected is int and (isinstance(value, bool) or value < 1)):
            raise fail(f"text.{key}", f"{value!r} must be a {'positive ' if expected is int else ''}"
                                      f"{expected.__name__}")
    settings_tables = {  # key: (type, lowest, highest)
        "pdq": {"max_distance": (int, 0, 256), "min_quality": (int, 0, 100), "dihedral": (bool, None, None)},
        "dataset": {"flag_images": (int, 1, None), "block_share": (float, 0.0, 1.0)},
        "strikes": {"enabled": (bool, None, None), "window_days": (float, 0.0, None), "warn": (int, 1, None),
                    "notify": (int, 1, None), "suspend": (int, 1, None)},
    }
    for section, spec in settings_tables.items():
        for key, value in data.get(section, {}).items():
            if key not in spec:
                raise fail(f"{section}.{key}", f"unknown key; allowed: {', '.join(spec)}")
            kind, lo, hi = spec[key]
            if not _fits(value, kind, lo, hi):
                wanted = "true or false" if kind is bool else \
                    f"{'an integer' if kind is int else 'a number'} from {lo}" + (f" to {hi}" if hi is not None else "")
                raise fail(f"{section}.{key}", f"{value!r} must be {wanted}")
    for key, value in data.get("generation", {}).items():
        if key in _GENERATION_CHOICES:
            if value not in _GENERATION_CHOICES[key]:
                raise fail(f"generation.{key}", f"{value!r} is not " + " or ".join(map(repr, _GENERATION_CHOICES[key])))
        elif key in _GENERATION_NUMBERS:
            if not _fits(value, int, _GENERATION_NUMBERS[key], None):
                raise fail(f"generation.{key}", f"{value!r} must be an integer from {_GENERATION_NUMBERS[key]}")
        else:
            raise fail(f"generation.{key}", "unknown key; allowed: " + ", ".join([*_GENERATION_CHOICES,
                                                                                  *_GENERATION_NUMBERS]))
    for key, value in data.get("model", {}).items():
        if key == "blake3":
            if not isinstance(value, bool):
                raise fail("model.blake3", f"{value!r} must be true or false")
        elif key != "hash_mismatch":
            raise fail(f"model.{key}", "unknown key; allowed: hash_mismatch, blake3")
        elif value not in {a.value for a in Action}:
            raise fail(f"model.{key}", f"{value!r} is not allow, flag or block")
    check_signal_layers(data.get("signals", {}), "signals", fail)
    for section, allowed in (("encoders", {"signals"}), ("characters", {"signals", "authorized_accounts"})):
        tables = data.get(section, {})
        if not isinstance(tables, dict):
            raise fail(section, f"{tables!r} must be a table of tables, e.g. [{section}.\"<id>\".signals.clip_image]")
        for key, table in tables.items():
            if not isinstance(table, dict):
                raise fail(f"{section}.{key}", f"{table!r} must be a table with keys {', '.join(sorted(allowed))}")
            extra = set(table) - allowed
            if extra:
                raise fail(f"{section}.{key}", f"unknown key(s) {', '.join(sorted(extra))}; "
                                               f"allowed: {', '.join(sorted(allowed))}")
            check_signal_layers(table.get("signals", {}), f"{section}.{key}.signals", fail)
    for cid, table in data.get("characters", {}).items():
        accounts = table.get("authorized_accounts", [])
        if not isinstance(accounts, list) or not all(isinstance(a, str) for a in accounts):
            raise fail(f"characters.{cid}.authorized_accounts", "must be a list of account names")
    return json.loads(json.dumps(data))  # a plain, detached copy


def check_signal_layers(table: Any, where: str, fail: Callable[[str, str], Exception]) -> None:
    """Validate a table of per-signal threshold layers (the policy's ``[signals]``, its
    encoder and character overrides, and a character.toml's ``[thresholds]``): ``fail(where,
    message)`` makes the error to raise, naming the key, the bad value and what is allowed."""
    if not isinstance(table, dict):
        raise fail(where, f"{table!r} must be a table of signals, e.g. [{where}.clip_image]")
    for name, layer in table.items():
        try:
            Signal(name)
        except ValueError:
            raise fail(f"{where}.{name}", f"unknown signal; known: {', '.join(s.value for s in Signal)}") from None
        _check_layer(layer, f"{where}.{name}", fail)
        surfaces = layer.get("surfaces", {})
        if not isinstance(surfaces, dict):
            raise fail(f"{where}.{name}.surfaces", f"{surfaces!r} must be a table of surfaces, e.g. "
                                                   f"[{where}.{name}.surfaces.prompt]")
        for surface, sub in surfaces.items():
            try:
                Surface(surface)
            except ValueError:
                raise fail(f"{where}.{name}.surfaces.{surface}",
                           f"unknown surface; known: {', '.join(s.value for s in Surface)}") from None
            _check_layer(sub, f"{where}.{name}.surfaces.{surface}", fail)
            if "surfaces" in sub:
                raise fail(f"{where}.{name}.surfaces.{surface}.surfaces", "surfaces do not nest")


def _check_layer(layer: Any, where: str, fail: Callable[[str, str], Exception]) -> None:
    if not isinstance(layer, dict):
        raise fail(where, f"{layer!r} must be a table with flag/block thresholds or an action")
    extra = set(layer) - _LAYER_KEYS - {"surfaces"}
    if extra:
        raise fail(where, f"unknown key(s) {', '.join(sorted(extra))}; allowed: flag, block, action, surfaces")
    for key in ("flag", "block"):
        value = layer.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not -1.0 <= value <= 1.0):
            raise fail(f"{where}.{key}", f"{value!r} must be a number in [-1, 1], e.g. {key} = 0.9")
    if layer.get("flag") is not None and layer.get("block") is not None and layer["flag"] > layer["block"]:
        raise fail(where, f"flag={layer['flag']} is above block={layer['block']}; flag must be the lower")
    if "action" in layer and layer["action"] not in {a.value for a in Action}:
        raise fail(f"{where}.action", f"{layer['action']!r} is not allow, flag or block")
