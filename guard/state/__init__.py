"""State the guard keeps between runs (a folder: takedown list, audit log), in SQLite."""

from .takedowns import Takedown, TakedownList

__all__ = ["Takedown", "TakedownList"]
