"""State the guard keeps between runs (a folder: takedown list, audit log), in SQLite."""

from .audit import AuditLog, VerifyResult
from .takedowns import Takedown, TakedownList

__all__ = ["AuditLog", "VerifyResult", "Takedown", "TakedownList"]
