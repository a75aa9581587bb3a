"""The takedown list's rows: what was taken down, and what to recognise it by.

One SQLite database (``takedowns.sqlite`` in the state folder, WAL mode). Each entry keeps
the file's SHA-256, its tensor-data SHA-256 (survives metadata edits) and, for LoRAs, the
weight fingerprint (survives renaming, casts, re-scaling, small noise), with the notice it
answers; for images, the PDQ hash (survives re-encoding, resizing, slight crops).
Fingerprints are stored as bytes of our own format, never pickled. Recognising an item
is `guard.match.takedowns`' job; this module only keeps the rows.

Every read sees what other processes committed: the cached rows are re-read when SQLite's
``data_version`` says another connection wrote, and `generation` then moves on, so that
indexes built from the rows know to rebuild.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from guard.errors import ConfigError
from guard.state.folder import existing_folder, open_problem
from guard.extract.lora import Fingerprint

_SCHEMA = """
CREATE TABLE IF NOT EXISTS takedowns (
    id INTEGER PRIMARY KEY,
    notice TEXT NOT NULL,
    character TEXT,
    reason TEXT,
    subject TEXT,
    sha256 TEXT,
    tensor_sha256 TEXT,
    fingerprint BLOB,
    pdq BLOB,
    pdq_quality INTEGER,
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS takedowns_sha256 ON takedowns (sha256);
CREATE INDEX IF NOT EXISTS takedowns_tensor_sha256 ON takedowns (tensor_sha256);
"""


@dataclass(frozen=True)
class Takedown:
    id: int
    notice: str
    character: str | None
    reason: str | None
    subject: str | None
    sha256: str | None
    tensor_sha256: str | None
    fingerprint: Fingerprint | None
    created: str
    pdq: bytes | None = None
    pdq_quality: int | None = None

    def to_dict(self) -> dict:
        return {"id": self.id, "notice": self.notice, "character": self.character, "reason": self.reason,
                "subject": self.subject, "sha256": self.sha256, "tensor_sha256": self.tensor_sha256,
                "fingerprint_layers": len(self.fingerprint.layers) if self.fingerprint else 0,
                "fingerprint_scheme": self.fingerprint.scheme if self.fingerprint else None,
                "pdq": self.pdq.hex() if self.pdq else None, "created": self.created}


def _event(entry: "Takedown") -> dict:
    return {"takedown_id": entry.id, "notice": entry.notice, "character": entry.character, "reason": entry.reason,
            "sha256": entry.sha256, "tensor_sha256": entry.tensor_sha256, "created": entry.created,
            "kind": "image" if entry.pdq else "model_file"}


_COLUMNS = ("id, notice, character, reason, subject, sha256, tensor_sha256, fingerprint, created, pdq, "
            "pdq_quality")


class TakedownList:
    """The takedown list of one state folder."""

    def __init__(self, state_dir: str | Path, audit=None):
        folder = Path(state_dir)
        self.folder = folder
        self._audit = audit
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(folder / "takedowns.sqlite", check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise open_problem(folder, exc, "the takedown list") from None
        self._lock = threading.Lock()
        self._cache: list[Takedown] | None = None
        self._version: int | None = None
        #: Moves on whenever the rows were re-read (this process or another one wrote).
        self.generation = 0

    def add(self, notice: str, *, character: str | None = None, reason: str | None = None,
            subject: str | None = None, sha256: str | None = None, tensor_sha256: str | None = None,
            fingerprint: Fingerprint | None = None, pdq: bytes | None = None,
            pdq_quality: int | None = None, operator: str | None = None) -> Takedown:
        """Add an entry; the audit chain records it (``operator``: who did it). The same file
        taken down again under the same notice returns the entry it already has (a retried
        command must not double the list); under another notice it is a new entry."""
        if not notice:
            raise ValueError("notice must name the takedown notice (e.g. its ticket id)")
        if sha256:
            same = [t for t in self.entries() if t.notice == notice and t.sha256 == sha256]
            if same:
                return same[0]
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._lock, self._db:
            cur = self._db.execute(
                "INSERT INTO takedowns (notice, character, reason, subject, sha256, tensor_sha256, fingerprint,"
                " pdq, pdq_quality, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (notice, character, reason, subject, sha256, tensor_sha256,
                 fingerprint.to_bytes() if fingerprint else None, pdq, pdq_quality, created))
            self._cache = None
            row_id = cur.lastrowid
        entry = next(t for t in self.entries() if t.id == row_id)
        self.audit.record_event("takedown_add", entry.subject or notice, operator, _event(entry))
        return entry

    def remove(self, notice: str, operator: str | None = None, reason: str | None = None) -> int:
        """Remove every entry of ``notice``; the audit chain records each (who, why)."""
        gone = [t for t in self.entries() if t.notice == notice]
        with self._lock, self._db:
            count = self._db.execute("DELETE FROM takedowns WHERE notice = ?", (notice,)).rowcount
            self._cache = None
        for entry in gone:
            self.audit.record_event("takedown_remove", entry.subject or notice, operator,
                                    {**_event(entry), "removal_reason": reason})
        return count

    @property
    def audit(self):
        """The audit log of the same state folder, where every change of this list is a row."""
        if self._audit is None:
            from guard.state.audit import AuditLog

            self._audit = AuditLog(self.folder)
        return self._audit

    def entries(self) -> list[Takedown]:
        with self._lock:
            # SQLite bumps data_version when another connection (another worker, a `guard
            # takedown add` beside a running server) commits: then the cached rows are stale.
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if version != self._version:
                self._cache, self._version = None, version
            if self._cache is None:
                rows = self._db.execute(f"SELECT {_COLUMNS} FROM takedowns ORDER BY id").fetchall()
                self._cache = _entries(rows)
                self.generation += 1
            return list(self._cache)

    def close(self) -> None:
        self._db.close()


def read_ids(state_dir: str | Path) -> set[int] | None:
    """The ids on a state folder's takedown list, read without writing (an archived copy
    works); ``None`` when the folder has no list."""
    rows = _read_only(state_dir, "SELECT id FROM takedowns")
    return None if rows is None else {r[0] for r in rows}


def read_entries(state_dir: str | Path) -> list[Takedown]:
    """The entries of a state folder's takedown list, read without writing (nothing is
    created: a mistyped folder is an error, a folder without a list has no entries)."""
    existing_folder(state_dir)
    rows = _read_only(state_dir, f"SELECT {_COLUMNS} FROM takedowns ORDER BY id")
    return [] if rows is None else _entries(rows)


def _entries(rows) -> list[Takedown]:
    return [Takedown(*r[:7], Fingerprint.from_bytes(r[7]) if r[7] else None, r[8], r[9], r[10]) for r in rows]


def _read_only(state_dir: str | Path, query: str) -> list | None:
    path = Path(state_dir) / "takedowns.sqlite"
    if not path.is_file():
        return None
    for flags in ("mode=ro", "immutable=1"):  # immutable: a copy on read-only media (no -shm)
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?{flags}", uri=True)
            try:
                return db.execute(query).fetchall()
            finally:
                db.close()
        except sqlite3.Error:
            continue
    raise ConfigError(f"{path}: cannot read the takedown list")
