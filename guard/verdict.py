"""The one result type that leaves every check: `Verdict`, made of `Finding`s.

A verdict's action is always derived from its findings and its error, never stored
independently, so a verdict cannot say ``allow`` while carrying a blocking finding.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping


class Action(str, enum.Enum):
    """What the platform should do with an item. Ordered: allow < flag < block."""

    ALLOW = "allow"
    FLAG = "flag"
    BLOCK = "block"

    @property
    def rank(self) -> int:
        return _ACTION_RANK[self]

    @classmethod
    def strongest(cls, actions: Iterable["Action"]) -> "Action":
        return max(actions, key=lambda a: a.rank, default=cls.ALLOW)


_ACTION_RANK = {Action.ALLOW: 0, Action.FLAG: 1, Action.BLOCK: 2}


class Surface(str, enum.Enum):
    """Where an item sits in the platform."""

    PROMPT = "prompt"
    TRAINING_IMAGE = "training_image"
    GENERATED_IMAGE = "generated_image"
    COVER_IMAGE = "cover_image"
    MODEL_FILE = "model_file"
    PUBLICATION = "publication"
    WORKFLOW = "workflow"  # a generation request as a node graph (ComfyUI), recorded whole


class Signal(str, enum.Enum):
    """One kind of evidence."""

    ALIAS = "alias"
    KEYWORDS = "keywords"
    CLIP_TEXT = "clip_text"
    CLIP_IMAGE = "clip_image"
    METADATA = "metadata"
    FILE_HASH = "file_hash"
    TENSOR_HASH = "tensor_hash"
    FINGERPRINT = "fingerprint"
    PDQ = "pdq"
    PICKLE = "pickle"
    FORMAT = "format"
    #: A training set's share of images that show a character (``[dataset]`` decides).
    DATASET_SHARE = "dataset_share"

    @property
    def measure(self) -> "Measure":
        """What this signal's score is, and so how it is compared with its threshold."""
        return _MEASURES.get(self, Measure.EXACT)

    @property
    def scored(self) -> bool:
        """Whether the policy's ``flag``/``block`` similarity thresholds apply to this signal."""
        return self in _SCORED


class Measure(str, enum.Enum):
    """What a finding's score is. Similarities and shares reach a threshold from below, a
    distance from above; an exact rule has a score of 1.0 and no threshold."""

    SIMILARITY = "similarity"
    SHARE = "share"
    DISTANCE = "distance"
    EXACT = "exact"


_MEASURES = {Signal.CLIP_IMAGE: Measure.SIMILARITY, Signal.CLIP_TEXT: Measure.SIMILARITY,
             Signal.FINGERPRINT: Measure.SIMILARITY, Signal.ALIAS: Measure.SIMILARITY,
             Signal.METADATA: Measure.SIMILARITY, Signal.KEYWORDS: Measure.SHARE,
             Signal.DATASET_SHARE: Measure.SHARE, Signal.PDQ: Measure.DISTANCE}
_SCORED = {Signal.CLIP_IMAGE, Signal.CLIP_TEXT, Signal.FINGERPRINT, Signal.ALIAS, Signal.METADATA,
           Signal.KEYWORDS}


def _enum_value(enum_cls: type[enum.Enum], value: Any, argument: str) -> Any:
    try:
        return enum_cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum_cls)  # type: ignore[attr-defined]
        raise ValueError(f"{argument}={value!r} is not one of: {allowed}") from None


@dataclass(frozen=True)
class Finding:
    """One signal that matched one subject.

    Args:
        subject: character id, takedown id or rule name the signal matched.
        signal: which kind of evidence.
        score: the signal's score, as its ``signal.measure`` says: a similarity (cosine, or
            1.0 less 0.1 per edit for a misspelt name), a share, a distance in bits (PDQ),
            or 1.0 for an exact match.
        threshold: the threshold the policy compared the score with, or ``None`` where a
            rule's fixed action decided (an alias, a file hash).
        action: what the policy decided for this finding alone.
        evidence: JSON-serialisable details (which key, which alias and where, ...).
    """

    subject: str
    signal: Signal
    score: float
    threshold: float | None
    action: Action
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "signal": self.signal.value,
            "score": round(float(self.score), 6),
            "threshold": None if self.threshold is None else round(float(self.threshold), 6),
            "action": self.action.value,
            "evidence": dict(self.evidence),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Finding":
        return cls(
            subject=str(data["subject"]),
            signal=_enum_value(Signal, data["signal"], "signal"),
            score=float(data["score"]),
            threshold=None if data.get("threshold") is None else float(data["threshold"]),
            action=_enum_value(Action, data.get("action", "flag"), "action"),
            evidence=dict(data.get("evidence") or {}),
        )


@dataclass(frozen=True)
class Verdict:
    """The decision for one checked item.

    ``action`` is the strongest finding's action; a guard failure (``error``) is
    "could not evaluate", never allow: ``error_action`` (from the policy's fail
    mode) then takes part in the maximum as well.
    """

    subject: str
    surface: Surface
    findings: tuple[Finding, ...] = ()
    versions: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None
    error_action: Action = Action.BLOCK
    #: For prompts under a steering policy: text to append to the negative prompt.
    steer: str | None = None
    #: What was established about the item whatever the action (format, hashes, ...).
    facts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def action(self) -> Action:
        actions = [f.action for f in self.findings]
        if self.error is not None:
            actions.append(self.error_action)
        return Action.strongest(actions)

    @property
    def blocked(self) -> bool:
        return self.action is Action.BLOCK

    def merge(self, other: "Verdict", subject: str | None = None) -> "Verdict":
        """Fold two verdicts on parts of one item: findings concatenate, errors join."""
        errors = [e for e in (self.error, other.error) if e]
        steer = ", ".join(s for s in (self.steer, other.steer) if s) or None
        error_action = Action.strongest(
            [v.error_action for v in (self, other) if v.error is not None]
        )
        return Verdict(
            subject=subject or self.subject,
            surface=self.surface,
            findings=self.findings + other.findings,
            versions={**other.versions, **self.versions},
            error="; ".join(errors) if errors else None,
            error_action=error_action if errors else Action.BLOCK,
            steer=steer,
            facts={**other.facts, **self.facts},
        )

    def with_versions(self, versions: Mapping[str, str]) -> "Verdict":
        return dataclasses.replace(self, versions=dict(versions))

    def to_dict(self) -> dict[str, Any]:
        data = {
            "subject": self.subject,
            "surface": self.surface.value,
            "action": self.action.value,
            "findings": [f.to_dict() for f in self.findings],
            "versions": dict(self.versions),
            "error": self.error,
        }
        if self.steer:
            data["steer"] = {"negative_prompt": self.steer}
        if self.facts:
            data["facts"] = dict(self.facts)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Verdict":
        findings = tuple(Finding.from_dict(f) for f in data.get("findings") or ())
        verdict = cls(
            subject=str(data["subject"]),
            surface=_enum_value(Surface, data["surface"], "surface"),
            findings=findings,
            versions=dict(data.get("versions") or {}),
            error=data.get("error"),
            steer=(data.get("steer") or {}).get("negative_prompt"),
            facts=dict(data.get("facts") or {}),
        )
        # The stored action is the only trace of the fail mode that produced it.
        stored = _enum_value(Action, data.get("action", verdict.action.value), "action")
        if verdict.error is not None and stored.rank >= Action.strongest(f.action for f in findings).rank:
            verdict = dataclasses.replace(verdict, error_action=stored)
        if verdict.action is not stored:
            raise ValueError(
                f"action={stored.value!r} contradicts the findings (strongest is {verdict.action.value!r})"
            )
        return verdict

    @classmethod
    def from_json(cls, text: str) -> "Verdict":
        return cls.from_dict(json.loads(text))


def format_finding(subject: str, surface: Surface, reason: str, **evidence: Any) -> Verdict:
    """The verdict for an input that could not be read: a ``format`` finding that blocks."""
    finding = Finding(
        subject="unreadable",
        signal=Signal.FORMAT,
        score=1.0,
        threshold=None,
        action=Action.BLOCK,
        evidence={"reason": reason, **evidence},
    )
    return Verdict(subject=subject, surface=surface, findings=(finding,))
