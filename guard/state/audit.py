"""The audit log: every verdict, once, in a hash chain a platform can show a court.

One SQLite database (``audit.sqlite`` in the state folder, WAL mode, so a killed writer
never corrupts it). Each row holds the verdict and the hash of the previous row; its own
hash covers both. Editing, deleting or reordering any row breaks the chain from that row
on, and `AuditLog.verify` names the first row that no longer fits; cutting off the newest
rows leaves a valid shorter chain, which only an anchor kept elsewhere (`AuditLog.head`, in
every duty-of-care report) reveals. Rows are appended
inside ``BEGIN IMMEDIATE`` transactions, so threads and processes sharing the folder
extend one chain.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

from guard.errors import ConfigError
from guard.verdict import Action, Verdict

GENESIS = "0" * 64
_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    surface TEXT NOT NULL,
    subject TEXT NOT NULL,
    account TEXT,
    action TEXT NOT NULL,
    verdict TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    row_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
CREATE INDEX IF NOT EXISTS audit_account ON audit (account, action, time);
"""
_COLUMNS = ("seq", "time", "surface", "subject", "account", "action", "verdict")


def row_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """SHA-256 over the previous row's hash and this row's fields, canonically encoded."""
    body = json.dumps([row[c] for c in _COLUMNS], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


class Anchor(NamedTuple):
    """One row of the chain as it was seen: its sequence number and hash."""

    seq: int
    row_hash: str


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    rows: int
    bad_seq: int | None = None
    reason: str | None = None


class AuditLog:
    """Append-only verdict log of one state folder."""

    def __init__(self, state_dir: str | Path):
        folder = Path(state_dir)
        self.path = folder / "audit.sqlite"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"state folder {folder}: cannot open the audit log ({exc})") from None
        self._lock = threading.Lock()

    def record(self, verdict: Verdict, account: str | None = None) -> int:
        """Append one verdict; returns its sequence number."""
        now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        body = verdict.to_json()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                last = self._db.execute("SELECT seq, row_hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
                row = {"seq": seq, "time": now, "surface": verdict.surface.value, "subject": verdict.subject,
                       "account": account, "action": verdict.action.value, "verdict": body}
                self._db.execute(
                    "INSERT INTO audit (seq, time, surface, subject, account, action, verdict, prev_hash, row_hash)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*[row[c] for c in _COLUMNS], prev, row_hash(prev, row)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return seq

    def rows(self, since: str | None = None, until: str | None = None) -> Iterator[dict[str, Any]]:
        query = "SELECT seq, time, surface, subject, account, action, verdict, prev_hash, row_hash FROM audit"
        clauses, params = [], []
        if since:
            clauses.append("time >= ?")
            params.append(since)
        if until:
            clauses.append("time < ?")
            params.append(until)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        for r in self._db.execute(query + " ORDER BY seq", params):
            yield dict(zip((*_COLUMNS, "prev_hash", "row_hash"), r))

    def head(self) -> Anchor:
        """The newest row's sequence number and hash: kept outside the log (the daily report
        does), it lets `verify` notice the newest rows being cut off, which no chain can."""
        last = self._db.execute("SELECT seq, row_hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return Anchor(*last) if last else Anchor(0, GENESIS)

    def verify(self, anchors: Sequence[Anchor] = ()) -> VerifyResult:
        """Walk the chain from the first row; report the first row that does not fit.

        ``anchors``: heads taken earlier (`head`); each must still be in the chain, unchanged.
        """
        wanted = {a.seq: a.row_hash for a in anchors if a.seq > 0}
        prev, expected_seq, count = GENESIS, 1, 0
        for row in self.rows():
            count += 1
            if row["seq"] != expected_seq:
                return VerifyResult(False, count, row["seq"], f"row {expected_seq} is missing (next row is {row['seq']})")
            if row["prev_hash"] != prev:
                return VerifyResult(False, count, row["seq"], "its link to the previous row is broken "
                                    "(a row before it was deleted, inserted or reordered)")
            if row_hash(prev, row) != row["row_hash"]:
                return VerifyResult(False, count, row["seq"], "its content was changed after it was written")
            try:
                stored = json.loads(row["verdict"])
            except json.JSONDecodeError:
                return VerifyResult(False, count, row["seq"], "its verdict is not JSON")
            if stored.get("action") != row["action"]:
                return VerifyResult(False, count, row["seq"], "its action column disagrees with its verdict")
            if wanted.pop(row["seq"], row["row_hash"]) != row["row_hash"]:
                return VerifyResult(False, count, row["seq"], "it is not the row an anchor recorded "
                                    "(rows up to it were replaced)")
            prev, expected_seq = row["row_hash"], expected_seq + 1
        if wanted:
            seq = min(wanted)
            return VerifyResult(False, count, seq, f"an anchor recorded row {seq}, but the log ends at row "
                                                   f"{expected_seq - 1} (its newest rows were removed)")
        return VerifyResult(True, count)

    def blocked_since(self, account: str, days: float) -> int:
        since = (datetime.now(timezone.utc) - timedelta(days=days)).isoformat(timespec="microseconds")
        return self._db.execute("SELECT COUNT(*) FROM audit WHERE account = ? AND action = ? AND time >= ?",
                                (account, Action.BLOCK.value, since)).fetchone()[0]

    def close(self) -> None:
        self._db.close()
