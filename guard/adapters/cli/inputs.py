"""What the command line was given, checked before anything is opened or recorded.

One rule for every command: a path that does not exist is a usage error (exit 2, nothing
recorded: a typo is not blocked content), and an input set with nothing to check says so
and exits 2 unless ``--allow-empty``. A path that exists but cannot be read or understood
is different: that is an item, and it gets a recorded verdict under the policy's fail mode.
"""

from __future__ import annotations

import os
from typing import Sequence

from guard.errors import ConfigError


class NothingToCheck(Exception):
    """An empty input set that ``--allow-empty`` accepted: the command exits 0."""


def require_existing(paths: Sequence[str], what: str = "file or folder") -> None:
    missing = [p for p in paths if not os.path.lexists(p)]
    if missing:
        raise ConfigError(f"{', '.join(missing)}: no such {what} (nothing was checked or recorded)")


def require_items(items: Sequence, allow_empty: bool, what: str, where: Sequence[str]) -> None:
    """Raise unless ``items`` holds something, or the caller accepts an empty set."""
    if items:
        return
    place = ", ".join(where)
    if allow_empty:
        raise NothingToCheck(f"nothing to check: no {what} in {place}")
    raise ConfigError(f"no {what} in {place} (nothing was checked; pass --allow-empty to accept an empty set)")


def folder_has_files(folder: str) -> bool:
    return any(files for _, _, files in os.walk(folder))
