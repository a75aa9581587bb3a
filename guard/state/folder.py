"""Why a state folder could not be opened for writing, said with the fix."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from guard.errors import ConfigError


_IS_A_FILE = ("--state {} is a file: the state folder is a folder (it holds audit.sqlite and takedowns.sqlite; "
              "a missing one is created)")


def existing_folder(folder: str | os.PathLike) -> Path:
    """``folder`` if it is a state folder already: commands that only read or remove never
    create one (a mistyped --state is an error, not a new empty folder)."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ConfigError(_IS_A_FILE.format(path))
    if not path.is_dir():
        raise ConfigError(f"state folder {path} does not exist (check --state / GUARD_STATE)")
    return path


def open_problem(folder: Path, exc: BaseException, what: str) -> ConfigError:
    """The `ConfigError` for ``exc`` raised while opening ``what`` (the audit log, the
    takedown list) in ``folder`` for writing."""
    if folder.exists() and not folder.is_dir():
        return ConfigError(_IS_A_FILE.format(folder))
    unwritable = isinstance(exc, PermissionError) or getattr(exc, "errno", None) in (errno.EACCES, errno.EROFS) \
        or (isinstance(exc, sqlite3.Error) and any(s in str(exc) for s in ("unable to open", "readonly", "read-only")))
    if unwritable:
        owner = f" (owned by uid {folder.stat().st_uid}, this process is uid {os.getuid()})" if folder.exists() else ""
        return ConfigError(f"state folder {folder}: cannot write {what} there{owner}: the guard records every "
                           f"verdict in it, so it must be writable by this user (chown/chmod it, or point --state "
                           f"at a writable folder); to read an archived copy use `guard audit verify` or "
                           f"`guard audit report`, which never write ({exc})")
    return ConfigError(f"state folder {folder}: cannot open {what} ({exc})")
