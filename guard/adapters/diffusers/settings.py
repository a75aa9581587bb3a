"""What one protected pipeline runs with, and the exception its hooks raise."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from PIL import Image

from guard.errors import GuardError
from guard.facade import Guard
from guard.verdict import Action, Verdict


class GuardBlocked(GuardError):
    """The guard blocked what was asked; ``verdicts`` say why, ``step`` where denoising stopped."""

    def __init__(self, verdicts: Sequence[Verdict], what: str, step: int | None = None):
        self.verdicts = list(verdicts)
        self.step = step
        reasons = "; ".join(f"{v.subject}: " + ", ".join(_reason(f) for f in v.findings if f.action is Action.BLOCK)
                            for v in self.verdicts if v.blocked)
        where = f" at denoising step {step}" if step is not None else ""
        super().__init__(f"{what} blocked by the guard{where}: {reasons}")

    @property
    def verdict(self) -> Verdict:
        return next((v for v in self.verdicts if v.blocked), self.verdicts[0])


def _reason(finding) -> str:
    said = finding.evidence.get("reason") if isinstance(finding.evidence, dict) else None
    return f"{finding.subject} ({finding.signal.value}{': ' + said if said else ''})"


@dataclasses.dataclass(frozen=True)
class Settings:
    guard: Guard
    account: str | None
    early_abort_every: int
    preview_edge: int
    placeholder: Image.Image | None

    def __deepcopy__(self, memo):
        # A copied pipeline is guarded by the same guard (one audit log, one SQLite state):
        # the guard itself is never copied.
        return self

    def for_account(self, account: str | None) -> "Settings":
        return self if account is None else dataclasses.replace(self, account=account)


def blocked_if(verdicts: Sequence[Verdict], what: str) -> None:
    """Raise `GuardBlocked` when any of ``verdicts`` blocks."""
    if any(v.blocked for v in verdicts):
        raise GuardBlocked(verdicts, what)
