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


class TakedownList:
    """The takedown list of one state folder."""

    def __init__(self, state_dir: str | Path):
        folder = Path(state_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(folder / "takedowns.sqlite", check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"state folder {folder}: cannot open the takedown list ({exc})") from None
        self._lock = threading.Lock()
        self._cache: list[Takedown] | None = None
        self._version: int | None = None
        #: Moves on whenever the rows were re-read (this process or another one wrote).
        self.generation = 0

    def add(self, notice: str, *, character: str | None = None, reason: str | None = None,
            subject: str | None = None, sha256: str | None = None, tensor_sha256: str | None = None,
            fingerprint: Fingerprint | None = None, pdq: bytes | None = None,
            pdq_quality: int | None = None) -> Takedown:
        if not notice:
            raise ValueError("notice must name the takedown notice (e.g. its ticket id)")
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._lock, self._db:
            cur = self._db.execute(
                "INSERT INTO takedowns (notice, character, reason, subject, sha256, tensor_sha256, fingerprint,"
                " pdq, pdq_quality, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (notice, character, reason, subject, sha256, tensor_sha256,
                 fingerprint.to_bytes() if fingerprint else None, pdq, pdq_quality, created))
            self._cache = None
            row_id = cur.lastrowid
        return next(t for t in self.entries() if t.id == row_id)

    def remove(self, notice: str) -> int:
        with self._lock, self._db:
            count = self._db.execute("DELETE FROM takedowns WHERE notice = ?", (notice,)).rowcount
            self._cache = None
        return count

    def entries(self) -> list[Takedown]:
        with self._lock:
            # SQLite bumps data_version when another connection (another worker, a `guard
            # takedown add` beside a running server) commits: then the cached rows are stale.
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if version != self._version:
                self._cache, self._version = None, version
            if self._cache is None:
                rows = self._db.execute("SELECT id, notice, character, reason, subject, sha256, tensor_sha256,"
                                        " fingerprint, created, pdq, pdq_quality FROM takedowns ORDER BY id").fetchall()
                self._cache = [Takedown(*r[:7], Fingerprint.from_bytes(r[7]) if r[7] else None, r[8], r[9], r[10])
                               for r in rows]
                self.generation += 1
            return list(self._cache)

    def close(self) -> None:
        self._db.close()
