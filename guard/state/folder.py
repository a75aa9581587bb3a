"""Why a state folder could not be opened for writing, said with the fix."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from guard.errors import ConfigError


def open_problem(folder: Path, exc: BaseException, what: str) -> ConfigError:
    """The `ConfigError` for ``exc`` raised while opening ``what`` (the audit log, the
    takedown list) in ``folder`` for writing."""
    if folder.exists() and not folder.is_dir():
        return ConfigError(f"--state {folder} is a file: the state folder is a folder (it holds audit.sqlite and "
                           "takedowns.sqlite; a missing one is created)")
    unwritable = isinstance(exc, PermissionError) or getattr(exc, "errno", None) in (errno.EACCES, errno.EROFS) \
        or (isinstance(exc, sqlite3.Error) and any(s in str(exc) for s in ("unable to open", "readonly", "read-only")))
    if unwritable:
        owner = f" (owned by uid {folder.stat().st_uid}, this process is uid {os.getuid()})" if folder.exists() else ""
        return ConfigError(f"state folder {folder}: cannot write {what} there{owner}: the guard records every "
                           f"verdict in it, so it must be writable by this user (chown/chmod it, or point --state "
                           f"at a writable folder); to read an archived copy use `guard audit verify` or "
                           f"`guard audit report`, which never write ({exc})")
    return ConfigError(f"state folder {folder}: cannot open {what} ({exc})")
