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
import hmac
import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

from guard.errors import ConfigError
from guard.state.folder import open_problem
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
KEY_VARIABLES = ("GUARD_AUDIT_KEY_FILE", "GUARD_AUDIT_KEY")
#: Rows that record a measure rather than a verdict (`AuditLog.record_event`).
EVENT_SURFACES = ("takedown", "notice", "review", "retention")
_EXTRA = ("mac", "format", "content_digest", "purged")  # columns added after the first version
#: Evidence that may quote what a user typed; removed from findings when prompts are purged.
_KEPT_EVIDENCE = ("part", "notice", "takedown_id", "character", "signal", "layers_compared", "coverage",
                  "agreement", "chance", "distance", "share", "images", "threshold")


def audit_key(key_file: str | os.PathLike | None = None) -> bytes | None:
    """The chain's MAC key: ``key_file``, else ``$GUARD_AUDIT_KEY_FILE``, else ``$GUARD_AUDIT_KEY``.

    Kept outside the state folder (a secret file, a secrets manager's variable): whoever can
    rewrite the log but does not hold it cannot make rewritten rows verify.
    """
    named = key_file or os.environ.get("GUARD_AUDIT_KEY_FILE")
    if named:
        try:
            key = Path(named).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"audit key file {named}: cannot read it ({exc.strerror or exc})") from None
    else:
        key = os.environ.get("GUARD_AUDIT_KEY", "").encode()
    if named and len(key) < 16:
        raise ConfigError(f"audit key file {named}: holds {len(key)} bytes; use at least 16 (e.g. "
                          "python -c 'import secrets; print(secrets.token_hex(32))')")
    return key or None


def row_mac(key: bytes, row_hash_hex: str) -> str:
    return hmac.new(key, row_hash_hex.encode(), hashlib.sha256).hexdigest()


def row_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """SHA-256 over the previous row's hash and this row's fields, canonically encoded.

    Rows of format 2 (from this version on) commit to their personal content through
    ``content_digest`` (see `content_digest`) instead of holding it in the hash directly,
    so that retention can pseudonymise it later while the chain still verifies; their
    decision, surface and time stay in the hash itself.
    """
    if (row.get("format") or 1) >= 2:
        body = json.dumps(["v2", row["seq"], row["time"], row["surface"], row["action"], row["content_digest"]],
                          ensure_ascii=False, separators=(",", ":"))
    else:
        body = json.dumps([row[c] for c in _COLUMNS], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def content_digest(row: dict[str, Any]) -> str:
    """SHA-256 of a row's subject, account and verdict (what retention may pseudonymise)."""
    body = json.dumps([row["subject"], row["account"], row["verdict"]], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


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
    keyed_rows: int = 0  # rows whose MAC was checked against the key
    note: str | None = None


class AuditLog:
    """Append-only verdict log of one state folder."""

    def __init__(self, state_dir: str | Path, read_only: bool = False, key: bytes | None = None):
        folder = Path(state_dir)
        self.path = folder / "audit.sqlite"
        self._lock = threading.Lock()
        self.key = key if key is not None else (None if read_only else audit_key())
        if read_only:
            self._db = _open_read_only(folder, self.path)
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            have = {r[1] for r in self._db.execute("PRAGMA table_info(audit)")}
            for column, kind in zip(_EXTRA, ("TEXT", "INTEGER", "TEXT", "INTEGER")):
                if column not in have:  # a log from an earlier version
                    self._db.execute(f"ALTER TABLE audit ADD COLUMN {column} {kind}")
        except (OSError, sqlite3.Error) as exc:
            raise open_problem(folder, exc, "the audit log") from None

    def record(self, verdict: Verdict, account: str | None = None) -> int:
        """Append one verdict; returns its sequence number."""
        return self._append(verdict.surface.value, verdict.subject, account, verdict.action.value, verdict.to_json())

    def record_event(self, kind: str, subject: str, operator: str | None, details: dict[str, Any]) -> int:
        """Append a measure that is not a verdict (a takedown added or removed, a notice
        enrolled): surface ``kind``'s family (`EVENT_SURFACES`), action ``kind``, the
        operator in the account column. Returns its sequence number."""
        surface = kind.split("_", 1)[0]
        if surface not in EVENT_SURFACES:
            raise ValueError(f"unknown event kind {kind!r}")
        body = json.dumps({"event": kind, "action": kind, "surface": surface, "subject": subject,
                           "operator": operator, "findings": [], **details}, ensure_ascii=False, sort_keys=True)
        return self._append(surface, subject, operator, kind, body)

    def events(self, since: str | None = None, until: str | None = None) -> Iterator[dict[str, Any]]:
        """Event rows (`record_event`), their JSON decoded into ``details``."""
        for row in self.rows(since, until):
            if row["surface"] in EVENT_SURFACES:
                yield {**row, "details": json.loads(row["verdict"])}

    def _append(self, surface: str, subject: str, account: str | None, action: str, body: str) -> int:
        now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                last = self._db.execute("SELECT seq, row_hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
                row = {"seq": seq, "time": now, "surface": surface, "subject": subject,
                       "account": account, "action": action, "verdict": body, "format": 2}
                row["content_digest"] = content_digest(row)
                digest = row_hash(prev, row)
                self._db.execute(
                    "INSERT INTO audit (seq, time, surface, subject, account, action, verdict, prev_hash, row_hash,"
                    " mac, format, content_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*[row[c] for c in _COLUMNS], prev, digest, row_mac(self.key, digest) if self.key else None,
                     2, row["content_digest"]))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return seq

    def rows(self, since: str | None = None, until: str | None = None) -> Iterator[dict[str, Any]]:
        """Rows in order; ``since``/``until`` are instants as `guard.state.periods.stored` writes
        them (other forms are normalised first), inclusive and exclusive."""
        from guard.state.periods import period

        since, until = period(since, until)
        have = {r[1] for r in self._db.execute("PRAGMA table_info(audit)")}
        query = ("SELECT seq, time, surface, subject, account, action, verdict, prev_hash, row_hash, "
                 + ", ".join(c if c in have else "NULL" for c in _EXTRA) + " FROM audit")
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
            yield dict(zip((*_COLUMNS, "prev_hash", "row_hash", *_EXTRA), r))

    def head(self) -> Anchor:
        """The newest row's sequence number and hash: kept outside the log (the daily report
        does), it lets `verify` notice the newest rows being cut off, which no chain can."""
        last = self._db.execute("SELECT seq, row_hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return Anchor(*last) if last else Anchor(0, GENESIS)

    def verify(self, anchors: Sequence[Anchor] = (), key: bytes | None = None) -> VerifyResult:
        """Walk the chain from the first row; report the first row that does not fit.

        ``anchors``: heads taken earlier (`head`); each must still be in the chain, unchanged.
        ``key``: the MAC key (default: this log's). With it, recomputing hashes is not enough:
        every row must carry its MAC, except rows written before the log was first keyed,
        which can only come first; a log in which no row carries one does not verify.
        """
        key = key if key is not None else self.key
        wanted = {a.seq: a.row_hash for a in anchors if a.seq > 0}
        prev, expected_seq, count, keyed, unkeyed = GENESIS, 1, 0, 0, 0
        purges: dict[int, set[int]] = {}  # purge event row -> the rows it pseudonymised
        purged: list[tuple[int, int]] = []  # (row, the purge it names)
        for row in self.rows():
            count += 1
            if key is not None:
                if row["mac"] is None:
                    if keyed:
                        return VerifyResult(False, count, row["seq"], "its MAC is missing (rows after it carry one)",
                                            keyed)
                    unkeyed += 1
                elif not hmac.compare_digest(row["mac"], row_mac(key, row["row_hash"])):
                    return VerifyResult(False, count, row["seq"], "its MAC does not match: it was rewritten by "
                                        "someone without the key, or the key is not this log's", keyed)
                else:
                    keyed += 1
            if row["seq"] != expected_seq:
                return VerifyResult(False, count, row["seq"], f"row {expected_seq} is missing (next row is {row['seq']})")
            if row["prev_hash"] != prev:
                return VerifyResult(False, count, row["seq"], "its link to the previous row is broken "
                                    "(a row before it was deleted, inserted or reordered)")
            if row_hash(prev, row) != row["row_hash"]:
                return VerifyResult(False, count, row["seq"], "its content was changed after it was written")
            if (row["format"] or 1) >= 2:
                if row["purged"] is not None:  # pseudonymised by retention: the purge must say so
                    purged.append((row["seq"], row["purged"]))
                elif content_digest(row) != row["content_digest"]:
                    return VerifyResult(False, count, row["seq"], "its content was changed after it was written")
            if row["action"] == "retention_purge":
                try:
                    purges[row["seq"]] = {s for a, b in json.loads(row["verdict"]).get("rows", []) for s in range(a, b + 1)}
                except (ValueError, TypeError):
                    return VerifyResult(False, count, row["seq"], "its purge record cannot be read")
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
        for seq, event in purged:
            if seq not in purges.get(event, ()):
                return VerifyResult(False, count, seq, f"it is marked as purged by row {event}, which purged no such "
                                    "row (its content cannot be checked: marked to hide an edit?)", keyed)
        if key is not None and count and not keyed:
            return VerifyResult(False, count, 1, "no row carries a MAC for this key: the log was not written "
                                "with it, or its MACs were removed")
        if wanted:
            seq = min(wanted)
            return VerifyResult(False, count, seq, f"an anchor recorded row {seq}, but the log ends at row "
                                                   f"{expected_seq - 1} (its newest rows were removed)")
        note = None
        if key is None and count and any(r["mac"] for r in self.rows()):
            note = "rows carry MACs that were not checked: give the key (--key-file or GUARD_AUDIT_KEY_FILE)"
        elif unkeyed:
            note = f"rows 1-{unkeyed} were written before the log was keyed (chain-checked only)"
        return VerifyResult(True, count, keyed_rows=keyed, note=note)

    def purge(self, key: bytes, prompts_before: str | None, accounts_before: str | None,
              operator: str | None = None) -> dict[str, int]:
        """Pseudonymise prompt texts written before ``prompts_before`` and account ids before
        ``accounts_before`` (instants as `guard.state.periods.stored` writes them) with a keyed
        hash, recorded as a ``retention_purge`` row naming every row it changed. Decisions,
        surfaces and times are untouched, so counts are too, and the chain still verifies.
        Rows written before rows committed to their content (format 1) cannot be changed."""
        if not key:
            raise ConfigError("purging needs the audit key (GUARD_AUDIT_KEY_FILE): pseudonyms are keyed hashes")
        changes: dict[int, dict[str, Any]] = {}
        legacy = 0
        for row in self.rows():
            old_prompt = prompts_before and row["time"] < prompts_before and row["surface"] in ("prompt", "workflow")
            old_account = accounts_before and row["time"] < accounts_before and row["account"] \
                and not str(row["account"]).startswith("pseudonym:")
            if not (old_prompt or old_account) or row["surface"] in EVENT_SURFACES:
                continue
            if (row["format"] or 1) < 2:
                legacy += 1
                continue
            verdict = json.loads(row["verdict"])
            subject, account = row["subject"], row["account"]
            if old_prompt and not subject.startswith("pseudonym:"):
                subject = _pseudonym(key, subject)
                verdict["subject"] = subject
                for finding in verdict.get("findings", []):
                    finding["evidence"] = {k: v for k, v in (finding.get("evidence") or {}).items()
                                           if k in _KEPT_EVIDENCE}
                verdict.pop("steer", None)
            if old_account:
                account = _pseudonym(key, str(account))
                if "account" in verdict:
                    verdict["account"] = account
            new_body = json.dumps(verdict, ensure_ascii=False)
            if (subject, account, new_body) != (row["subject"], row["account"], row["verdict"]):
                changes[row["seq"]] = {"subject": subject, "account": account, "verdict": new_body}
        ranges = _ranges(sorted(changes))
        event = self.record_event("retention_purge", f"{len(changes)} rows", operator,
                                  {"prompts_before": prompts_before, "accounts_before": accounts_before,
                                   "rows": ranges, "count": len(changes)})
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for seq, new in changes.items():
                    self._db.execute("UPDATE audit SET subject = ?, account = ?, verdict = ?, purged = ? WHERE seq = ?",
                                     (new["subject"], new["account"], new["verdict"], event, seq))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return {"pseudonymised": len(changes), "kept_legacy_rows": legacy, "purge_row": event}

    def blocked_since(self, account: str, days: float) -> int:
        since = (datetime.now(timezone.utc) - timedelta(days=days)).isoformat(timespec="microseconds")
        return self._db.execute("SELECT COUNT(*) FROM audit WHERE account = ? AND action = ? AND time >= ?",
                                (account, Action.BLOCK.value, since)).fetchone()[0]

    def close(self) -> None:
        self._db.close()


def _open_read_only(folder: Path, path: Path) -> sqlite3.Connection:
    """An existing log, never created, readable from a read-only (archived) copy too."""
    if not folder.is_dir():
        raise ConfigError(f"state folder {folder} does not exist (nothing was created); check --state")
    if not path.is_file():
        raise ConfigError(f"state folder {folder} holds no audit log ({path.name}); check --state")
    error = None
    # mode=ro still needs the WAL index beside the file; immutable=1 reads a copy that no
    # one writes (an archive on read-only media) without it.
    for flags in ("mode=ro", "immutable=1"):
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?{flags}", uri=True, check_same_thread=False)
            db.execute("SELECT COUNT(*) FROM audit").fetchone()
            return db
        except sqlite3.Error as exc:
            error = exc
    raise ConfigError(f"{path}: cannot read the audit log ({error})")


def _pseudonym(key: bytes, text: str) -> str:
    return "pseudonym:" + hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:24]


def _ranges(seqs: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for seq in seqs:
        if out and out[-1][1] == seq - 1:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return out
