"""The one validator for every settings file the guard reads: the policy TOML, a
character.toml's ``[thresholds]`` and a bank's manifest.

Each rule says what a value must be and shows a valid one, so that every refusal is one
message naming the file, the key, the bad value and the fix::

    policy p.toml: text.window_words = 0: must be an integer from 1; fix: e.g. window_words = 12

A file's reader passes a ``fail(key, message)`` that turns the message into its own error
(`ConfigError` for a policy, `BankError` for a bank); nothing here knows which file it reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from guard.verdict import Action, Signal, Surface

Fail = Callable[[str, str], Exception]

ACTIONS = tuple(a.value for a in Action)
#: What a layer of thresholds may set: similarity thresholds, or a fixed action.
LAYER_KEYS = ("flag", "block", "action")


@dataclass(frozen=True)
class Rule:
    """What one value must be: ``wanted`` completes "must be ...", ``example`` is a valid value."""

    wanted: str
    accepts: Callable[[Any], bool]
    example: str

    def check(self, key: str, value: Any, fail: Fail, example: str | None = None) -> None:
        if not self.accepts(value):
            raise fail(key, bad(key, value, self.wanted, example or self.example))


def bad(key: str, value: Any, wanted: str, example: str) -> str:
    """The message for one bad value (``fail`` prefixes the file)."""
    leaf = key.rsplit(".", 1)[-1]
    return f"{key} = {_show(value)}: must be {wanted}; fix: e.g. {leaf} = {example}"


def unknown(key: str, allowed: Any, what: str = "key") -> str:
    return f"{key}: unknown {what}; fix: remove it, or use one of {', '.join(sorted(allowed))}"


def missing(key: str, example: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    return f"{key}: missing; fix: e.g. {leaf} = {example}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(lo: int, hi: int | None = None) -> Rule:
    span = f"an integer from {lo}" + (f" to {hi}" if hi is not None else "")
    return Rule(span, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo
                and (hi is None or v <= hi), str(lo if hi is None else max(lo, min(hi, 31))))


def number(lo: float, hi: float | None = None) -> Rule:
    span = f"a number from {lo}" + (f" to {hi}" if hi is not None else "")
    return Rule(span, lambda v: _number(v) and v >= lo and (hi is None or v <= hi),
                str(hi if hi is not None and hi <= 1 else lo))


def boolean() -> Rule:
    return Rule("true or false", lambda v: isinstance(v, bool), "true")


def choice(*values: str) -> Rule:
    listed = ", ".join(values[:-1]) + " or " + values[-1] if len(values) > 1 else values[0]
    return Rule(f"one of {listed}", lambda v: isinstance(v, str) and v in values, f'"{values[0]}"')


def text() -> Rule:
    return Rule("a string", lambda v: isinstance(v, str), '"default"')


def strings() -> Rule:
    return Rule("a list of strings", lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v),
                '["..."]')


def table(where: str, value: Any, fail: Fail, example: str) -> Mapping[str, Any]:
    """``value`` if it is a table, else the refusal naming ``where``."""
    if not isinstance(value, dict):
        raise fail(where, f"{where} = {_show(value)}: must be a table; fix: e.g. {example}")
    return value


def toml_value(value: Any) -> str:
    """``value`` as TOML writes it (for the examples in messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def setting(rule: Rule) -> Any:
    """A typed settings field; its value comes from the TOML, never from Python."""
    return dataclasses.field(metadata={"rule": rule})


def build_section(cls: type, given: Any, defaults: Mapping[str, Any], where: str, fail: Fail) -> Any:
    """One typed, frozen settings section from its TOML table, layered over ``defaults``."""
    given = table(where, given, fail, f"[{where}]")
    fields = {f.name: f.metadata["rule"] for f in dataclasses.fields(cls)}
    for key, value in given.items():
        if key not in fields:
            raise fail(f"{where}.{key}", unknown(f"{where}.{key}", fields))
        shipped = f"{toml_value(defaults[key])} (the shipped default)" if key in defaults else None
        fields[key].check(f"{where}.{key}", value, fail, shipped)
    values = {**defaults, **given}
    for key, rule in fields.items():
        if key not in values:
            raise fail(f"{where}.{key}", missing(f"{where}.{key}", rule.example))
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in fields})


def check_signal_layers(layers: Any, where: str, fail: Fail) -> None:
    """A table of per-signal threshold layers: the policy's ``[signals]``, its encoder and
    character overrides, and a character.toml's ``[thresholds]``."""
    layers = table(where, layers, fail, f"[{where}.clip_image] block = 0.9")
    for name, layer in layers.items():
        try:
            signal = Signal(name)
        except ValueError:
            raise fail(f"{where}.{name}", unknown(f"{where}.{name}", [s.value for s in Signal], "signal")) from None
        _check_layer(signal, layer, f"{where}.{name}", fail)
        surfaces = table(f"{where}.{name}.surfaces", layer.get("surfaces", {}), fail,
                         f"[{where}.{name}.surfaces.prompt]")
        for surface, sub in surfaces.items():
            try:
                Surface(surface)
            except ValueError:
                raise fail(f"{where}.{name}.surfaces.{surface}",
                           unknown(f"{where}.{name}.surfaces.{surface}", [s.value for s in Surface], "surface")) from None
            _check_layer(signal, sub, f"{where}.{name}.surfaces.{surface}", fail)
            if "surfaces" in sub:
                raise fail(f"{where}.{name}.surfaces.{surface}.surfaces",
                           f"{where}.{name}.surfaces.{surface}.surfaces: surfaces do not nest; fix: remove it")


_THRESHOLD = Rule("a similarity threshold, a number in [-1, 1]",
                  lambda v: _number(v) and -1.0 <= v <= 1.0, "0.9")
_ACTION = choice(*ACTIONS)


def _check_layer(signal: Signal, layer: Any, where: str, fail: Fail) -> None:
    layer = table(where, layer, fail, f"[{where}] flag = 0.8")
    for key in layer:
        if key not in (*LAYER_KEYS, "surfaces"):
            raise fail(f"{where}.{key}", unknown(f"{where}.{key}", [*LAYER_KEYS, "surfaces"]))
    for key in ("flag", "block"):
        if key in layer:
            if not signal.scored:
                raise fail(f"{where}.{key}", f"{where}.{key} = {_show(layer[key])}: {signal.value} is not a "
                                             f"similarity, it has no thresholds; fix: use action = \"block\"")
            _THRESHOLD.check(f"{where}.{key}", layer[key], fail)
    if "flag" in layer and "block" in layer and layer["flag"] > layer["block"]:
        raise fail(where, f"{where}: flag = {layer['flag']} is above block = {layer['block']}; "
                          "fix: flag must be the lower threshold")
    if "action" in layer:
        _ACTION.check(f"{where}.action", layer["action"], fail)
