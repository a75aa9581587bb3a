"""State the guard keeps between runs (a folder: takedown list, audit log), in SQLite."""

from guard.state.audit import Anchor, AuditLog, VerifyResult
from guard.state.takedowns import Takedown, TakedownList

__all__ = ["Anchor", "AuditLog", "VerifyResult", "Takedown", "TakedownList"]
