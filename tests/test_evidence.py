"""Evidence: every measure in one chain, a chain a rewriter without the key cannot make
verify, periods that are instants, and `audit verify`'s exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from guard import Bank, Guard, Policy, Surface, Verdict
from guard.adapters.cli import main
from guard.state import AuditLog
from guard.state.audit import GENESIS, content_digest, row_hash
from guard.state.report import build_report, render_html
from guard.state.takedowns import TakedownList
from guard.verdict import Action, Finding, Signal

from . import model_files as mf

KEY = "k" * 32


def blocked(i: int) -> Verdict:
    return Verdict(f"item-{i}", Surface.PROMPT, (Finding("ultraman", Signal.ALIAS, 1.0, None, Action.BLOCK, {}),),
                   versions={"guard": "test"})


@pytest.fixture()
def key_file(tmp_path, monkeypatch):
    path = tmp_path / "secrets" / "audit.key"
    path.parent.mkdir()
    path.write_text(KEY)
    monkeypatch.setenv("GUARD_AUDIT_KEY_FILE", str(path))
    return path


def rewrite(state, seq: int, **changes) -> None:
    """What an insider with write access but no key does: edit a row, recompute every hash."""
    with sqlite3.connect(state / "audit.sqlite") as db:
        cols = ("seq", "time", "surface", "subject", "account", "action", "verdict", "format")
        rows = db.execute(f"SELECT {', '.join(cols)} FROM audit ORDER BY seq").fetchall()
        prev = GENESIS
        for values in rows:
            row = dict(zip(cols, values))
            if row["seq"] == seq:
                row.update(changes)
                stored = json.loads(row["verdict"])
                stored["action"] = row["action"]
                row["verdict"] = json.dumps(stored)
            row["content_digest"] = content_digest(row)
            digest = row_hash(prev, row)
            db.execute("UPDATE audit SET action = ?, verdict = ?, content_digest = ?, prev_hash = ?, row_hash = ?"
                       " WHERE seq = ?", (row["action"], row["verdict"], row["content_digest"], prev, digest,
                                          row["seq"]))
            prev = digest


def test_a_rewrite_with_recomputed_hashes_verifies_without_a_key_but_not_with_it(tmp_path, key_file, capsys):
    log = AuditLog(tmp_path)
    for i in range(10):
        log.record(blocked(i))
    log.close()
    assert main(["audit", "verify", "--state", str(tmp_path)]) == 0
    assert "10 MACs verified" in capsys.readouterr().out
    rewrite(tmp_path, 5, action="allow")
    assert main(["audit", "verify", "--state", str(tmp_path)]) == 5
    said = capsys.readouterr().err
    assert "row 5" in said and "MAC does not match" in said
    # without the key, hashes alone cannot tell: that is why the key is kept elsewhere
    assert AuditLog(tmp_path, read_only=True).verify(key=None).ok
    with sqlite3.connect(tmp_path / "audit.sqlite") as db:
        db.execute("UPDATE audit SET mac = NULL")  # strip every MAC as well
    result = AuditLog(tmp_path, read_only=True).verify(key=KEY.encode())
    assert not result.ok and "no row carries a MAC" in result.reason
    assert main(["audit", "verify", "--state", str(tmp_path), "--key-file", str(key_file)]) == 5


def test_rows_from_before_the_key_may_only_come_first(tmp_path, monkeypatch, key_file):
    monkeypatch.delenv("GUARD_AUDIT_KEY_FILE")
    old = AuditLog(tmp_path)
    old.record(blocked(0))
    old.close()
    monkeypatch.setenv("GUARD_AUDIT_KEY_FILE", str(key_file))
    keyed = AuditLog(tmp_path)
    keyed.record(blocked(1))
    keyed.record(blocked(2))
    result = keyed.verify()
    assert result.ok and result.keyed_rows == 2 and "rows 1-1" in result.note
    with sqlite3.connect(tmp_path / "audit.sqlite") as db:
        db.execute("UPDATE audit SET mac = NULL WHERE seq = 3")
    assert not keyed.verify().ok and keyed.verify().bad_seq == 3


def test_a_removed_takedown_stays_in_the_record_for_the_period_it_was_in_force(bank_file, encoder, tmp_path):
    state = tmp_path / "state"
    guard = Guard(Bank.load(bank_file), Policy.load(), encoder, state=state)
    lora = mf.write(tmp_path / "hero.safetensors", mf.kohya_tensors(mf.lora_weights(3)), {"ss_output_name": "h"})
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    [entry] = guard.take_down(lora, "DMCA-200", character="ultraman", reason="notice of 1 Dec", operator="ts-lead")
    assert guard.check_model_file(lora).action is Action.BLOCK
    assert main(["takedown", "remove", "--notice", "DMCA-200", "--state", str(state), "--operator", "insider",
                 "--reason", "covering tracks"]) == 0
    events = [e for e in AuditLog(state).events() if e["surface"] == "takedown"]
    assert [(e["action"], e["account"]) for e in events] == [("takedown_add", "ts-lead"), ("takedown_remove", "insider")]
    assert events[1]["details"]["removal_reason"] == "covering tracks" and events[1]["details"]["takedown_id"] == entry.id
    report = build_report(AuditLog(state), TakedownList(state), before.isoformat())
    [in_force] = report["takedowns_in_force"]
    assert (in_force["notice"], in_force["added_by"], in_force["removed_by"]) == ("DMCA-200", "ts-lead", "insider")
    assert [c["event"] for c in report["takedown_changes"]] == ["takedown_add", "takedown_remove"]
    assert report["verdicts"] == 1  # events are not verdicts
    assert "DMCA-200" in render_html(report) and "covering tracks" in render_html(report)
    assert main(["audit", "verify", "--state", str(state)]) == 0


def test_a_takedown_deleted_behind_the_guards_back_fails_verification(bank_file, encoder, tmp_path, capsys):
    state = tmp_path / "state"
    guard = Guard(Bank.load(bank_file), Policy.load(), encoder, state=state)
    lora = mf.write(tmp_path / "hero.safetensors", mf.kohya_tensors(mf.lora_weights(4)))
    guard.take_down(lora, "DMCA-201", character="ultraman")
    with sqlite3.connect(state / "takedowns.sqlite") as db:
        db.execute("DELETE FROM takedowns")
    assert main(["audit", "verify", "--state", str(state)]) == 5
    assert "notice DMCA-201" in capsys.readouterr().err


T0 = datetime(2026, 12, 2, 3, 0, tzinfo=timezone.utc)


@pytest.fixture()
def timed_log(tmp_path, monkeypatch):
    """Rows at 03:00, 03:20, 03:40, 04:00 and 04:20 UTC on 2 Dec 2026, and a day before."""
    return clocked_log(tmp_path, monkeypatch, [T0 - timedelta(days=1)] + [T0 + timedelta(minutes=20 * i)
                                                                          for i in range(5)])


@contextlib.contextmanager
def clock(monkeypatch, times):
    """The audit log's clock gives ``times``, one per row written (then the real time)."""
    import guard.state.audit as audit_module

    given = iter(times)

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return next(given, datetime.now(timezone.utc))

    with monkeypatch.context() as patched:
        patched.setattr(audit_module, "datetime", Clock)
        yield


def clocked_log(folder, monkeypatch, times) -> AuditLog:
    """A log whose rows were written at ``times``."""
    with clock(monkeypatch, times):
        log = AuditLog(folder)
        for i in range(len(times)):
            log.record(blocked(i))
    return log


@pytest.mark.parametrize("since,until,count", [
    ("2026-12-02T03:40Z", None, 3),
    ("2026-12-02T04:40+01:00", None, 3),  # the same instant as 03:40Z
    ("2026-12-02 03:40", None, 3),  # no zone: UTC
    ("2026-12-02T03:39:59.999999+00:00", "2026-12-02T04:00Z", 1),
    ("2026-12-02", None, 5),
    ("2026-12-01", "2026-12-02", 1),
    (None, "2026-12-02T03:20Z", 2),
    ("2026-12-02T04:20+01:00", "2026-12-02T06:00+02:00", 2),
])
def test_periods_are_instants(timed_log, since, until, count):
    assert build_report(timed_log, None, since, until)["verdicts"] == count


def test_relative_and_named_periods(tmp_path, monkeypatch):
    now = datetime.now(timezone.utc)
    log = clocked_log(tmp_path, monkeypatch, [now - timedelta(days=10), now - timedelta(hours=1)])
    counts = {p: build_report(log, None, p)["verdicts"] for p in ("30d", "7d", "2h", "30m", "today", "now")}
    assert counts["30d"] == 2 and counts["7d"] == 1 and counts["2h"] == 1 and counts["30m"] == 0
    assert counts["now"] == 0 and build_report(log, None, None, "now")["verdicts"] == 2


@pytest.mark.parametrize("args,message", [
    (["--since", "yesterdayish"], "not a time"),
    (["--since", "2026-12-03", "--until", "2026-12-02"], "is after --until"),
    (["--until", "32/13/2026"], "not a time"),
])
def test_a_bad_period_is_a_usage_error(timed_log, tmp_path, capsys, args, message):
    assert main(["audit", "report", "--state", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_verify_never_creates_a_state_folder_and_reads_an_archived_copy(tmp_path, capsys):
    missing = tmp_path / "MISTYPED"
    assert main(["audit", "verify", "--state", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err and not missing.exists()
    log = AuditLog(tmp_path / "live")
    for i in range(3):
        log.record(blocked(i))
    log.close()
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copy(tmp_path / "live" / "audit.sqlite", archive / "audit.sqlite")
    (archive / "audit.sqlite").chmod(0o444)
    archive.chmod(0o555)
    try:
        assert main(["audit", "verify", "--state", str(archive)]) == 0
        assert "3 rows" in capsys.readouterr().out
    finally:
        archive.chmod(0o755)


def test_the_html_report_carries_the_chain_head_and_full_digests(bank_file, encoder, tmp_path):
    guard = Guard(Bank.load(bank_file), Policy.load(), encoder, state=tmp_path)
    guard.check_prompt("ultraman")
    report = build_report(AuditLog(tmp_path), TakedownList(tmp_path))
    page = render_html(report)
    assert report["audit_log"]["head"]["row_hash"] in page
    assert guard.versions["bank"] in page and guard.versions["policy"] in page


def test_signed_heads_verify_with_the_public_key_alone(tmp_path, capsys):
    log = AuditLog(tmp_path / "state")
    for i in range(4):
        log.record(blocked(i))
    keys = tmp_path / "keys"
    assert main(["audit", "keygen", str(keys)]) == 0
    assert (keys / "audit-signing.key").stat().st_mode & 0o077 == 0
    head = tmp_path / "head.json"
    assert main(["audit", "sign", "--state", str(tmp_path / "state"), "--signing-key", str(keys / "audit-signing.key"),
                 "-o", str(head)]) == 0
    from guard.state.signing import check_signed_head

    saved = json.loads(head.read_text())
    check_signed_head(saved, keys / "audit-signing.pub")  # no log needed
    verify = ["audit", "verify", "--state", str(tmp_path / "state"), "--anchor", str(head)]
    assert main(verify) == 2 and "--public-key" in capsys.readouterr().err
    assert main([*verify, "--public-key", str(keys / "audit-signing.pub")]) == 0
    # a head re-signed by someone else's key, or edited, is not genuine
    assert main(["audit", "keygen", str(tmp_path / "other")]) == 0
    forged = tmp_path / "forged.json"
    assert main(["audit", "sign", "--state", str(tmp_path / "state"), "--signing-key",
                 str(tmp_path / "other" / "audit-signing.key"), "-o", str(forged)]) == 0
    assert main(["audit", "verify", "--state", str(tmp_path / "state"), "--anchor", str(forged),
                 "--public-key", str(keys / "audit-signing.pub")]) == 5
    edited = dict(saved, seq=2)
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError):
        check_signed_head(edited, keys / "audit-signing.pub")
    # rows rewritten after signing: the signed head no longer matches the chain
    rewrite(tmp_path / "state", 2, action="allow")
    assert main([*verify, "--public-key", str(keys / "audit-signing.pub")]) == 5


def test_rfc3161_time_stamps_from_a_tsa_verify_with_its_certificate(tmp_path, capsys):
    """Against a local TSA on loopback (tests/tsa_stub.py; no public TSA is reachable here)."""
    from tests.tsa_stub import TimeStampAuthority

    log = AuditLog(tmp_path / "state")
    for i in range(3):
        log.record(blocked(i))
    (tmp_path / "other").mkdir()
    tsa, other = TimeStampAuthority(tmp_path), TimeStampAuthority(tmp_path / "other")
    try:
        stamped = tmp_path / "head-tsa.json"
        state = str(tmp_path / "state")
        assert main(["audit", "timestamp", "--state", state, "--tsa", tsa.url, "-o", str(stamped)]) == 0
        saved = json.loads(stamped.read_text())
        assert saved["seq"] == 3 and saved["timestamp"]["tsa"] == tsa.url and tsa.requests == 1
        verify = ["audit", "verify", "--state", state, "--anchor", str(stamped)]
        assert main(verify) == 2 and "--tsa-cert" in capsys.readouterr().err
        capsys.readouterr()
        assert main([*verify, "--tsa-cert", str(tsa.cert_path)]) == 0
        assert f"row 3 time-stamped by the TSA at {saved['timestamp']['gen_time']}" in capsys.readouterr().out
        # another TSA's certificate: not genuine (exit 5)
        assert main([*verify, "--tsa-cert", str(other.cert_path)]) == 5
        assert "does not verify with the TSA's certificate" in capsys.readouterr().err
        # a token altered after the TSA signed it
        import base64

        token = bytearray(base64.b64decode(saved["timestamp"]["token"]))
        token[-1] ^= 1
        forged = tmp_path / "forged-tsa.json"
        forged.write_text(json.dumps({**saved, "timestamp": {**saved["timestamp"],
                                                             "token": base64.b64encode(bytes(token)).decode()}}))
        assert main(["audit", "verify", "--state", state, "--anchor", str(forged), "--tsa-cert",
                     str(tsa.cert_path)]) == 5
        capsys.readouterr()
        # the head edited to point at another row: the token is for another head
        edited = tmp_path / "edited.json"
        edited.write_text(json.dumps({**saved, "seq": 2, "row_hash": log.head().row_hash}))
        assert main(["audit", "verify", "--state", state, "--anchor", str(edited), "--tsa-cert",
                     str(tsa.cert_path)]) == 5
        assert "for another head" in capsys.readouterr().err
        # rows rewritten after the time-stamp: the chain no longer reaches the stamped head
        rewrite(tmp_path / "state", 2, action="allow")
        assert main([*verify, "--tsa-cert", str(tsa.cert_path)]) == 5
        # a TSA that refuses, and one that cannot be reached
        other.refuse = True
        assert main(["audit", "timestamp", "--state", state, "--tsa", other.url]) == 1
        assert "refused the request: rejection policy says no" in capsys.readouterr().err
        assert main(["audit", "timestamp", "--state", state, "--tsa", "http://127.0.0.1:9/tsa"]) == 2
        assert "cannot reach the time-stamping authority" in capsys.readouterr().err
    finally:
        tsa.stop()
        other.stop()


def test_retention_pseudonymises_prompts_and_accounts_and_the_chain_still_verifies(tmp_path, key_file, monkeypatch,
                                                                                  capsys):
    now = datetime.now(timezone.utc)
    with clock(monkeypatch, [now - timedelta(days=40), now - timedelta(days=20), now - timedelta(hours=1)]):
        log = AuditLog(tmp_path)
        for i, text in enumerate(["ultraman by the sea", "ultraman in snow", "a fresh ultraman prompt"]):
            log.record(Verdict(text, Surface.PROMPT, (Finding("ultraman", Signal.ALIAS, 1.0, None, Action.BLOCK,
                                                              {"matched": text}),)), account=f"user-{i}")
    before = build_report(log, None)
    policy = tmp_path / "policy.toml"
    policy.write_text("[retention]\nprompt_days = 30\naccount_days = 10\n")
    assert main(["audit", "purge", "--state", str(tmp_path), "--policy", str(policy)]) == 0
    assert "pseudonymised 2 rows" in capsys.readouterr().out
    rows = [r for r in AuditLog(tmp_path).rows() if r["surface"] == "prompt"]
    assert rows[0]["subject"].startswith("pseudonym:") and "ultraman by the sea" not in rows[0]["verdict"]
    assert rows[0]["account"].startswith("pseudonym:") and rows[1]["account"].startswith("pseudonym:")
    assert rows[1]["subject"] == "ultraman in snow"  # 20 days old: prompts are kept 30
    assert (rows[2]["subject"], rows[2]["account"]) == ("a fresh ultraman prompt", "user-2")
    after = build_report(AuditLog(tmp_path), None)
    assert (after["verdicts"], after["by_action"], after["by_surface"]) == \
        (before["verdicts"], before["by_action"], before["by_surface"])
    assert main(["audit", "verify", "--state", str(tmp_path)]) == 0
    # a row marked as purged by a purge that did not name it is an edit in disguise
    with sqlite3.connect(tmp_path / "audit.sqlite") as db:
        db.execute("UPDATE audit SET subject = 'edited', purged = 4 WHERE seq = 3")
    assert main(["audit", "verify", "--state", str(tmp_path)]) == 5
    assert "row 3" in capsys.readouterr().err


def test_a_log_from_before_content_commitments_still_verifies_and_grows(tmp_path):
    """Rows written by an earlier version (hash over the whole row, no extra columns)."""
    from guard.state.audit import _COLUMNS

    with sqlite3.connect(tmp_path / "audit.sqlite") as db:
        db.execute("CREATE TABLE audit (seq INTEGER PRIMARY KEY, time TEXT NOT NULL, surface TEXT NOT NULL, "
                   "subject TEXT NOT NULL, account TEXT, action TEXT NOT NULL, verdict TEXT NOT NULL, "
                   "prev_hash TEXT NOT NULL, row_hash TEXT NOT NULL)")
        prev = GENESIS
        for seq in (1, 2):
            row = {"seq": seq, "time": f"2026-11-0{seq}T00:00:00.000000+00:00", "surface": "prompt",
                   "subject": f"old {seq}", "account": None, "action": "allow",
                   "verdict": json.dumps({"action": "allow", "findings": []})}
            digest = row_hash(prev, row)
            db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (*[row[c] for c in _COLUMNS], prev, digest))
            prev = digest
    log = AuditLog(tmp_path)
    log.record(blocked(3))
    assert log.verify().ok and log.verify().rows == 3


def test_the_report_as_a_pdf_has_numbered_pages_with_every_section(bank_file, encoder, tmp_path):
    try:
        import weasyprint  # noqa: F401
    except (ImportError, OSError) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"WeasyPrint or Pango missing outside CI ({exc})")
    from guard.state.report import render_pdf

    guard = Guard(Bank.load(bank_file), Policy.load(), encoder, state=tmp_path / "state")
    guard.check_prompt("ultraman")
    report = build_report(guard.audit, guard.takedowns, operator="t&s lead", bank=guard.bank)
    assert {c["character"] for c in report["characters_covered"]} == {c.id for c in guard.bank.characters}
    assert any("no semantic meaning" in m for m in report["method"])  # the tiny encoder's scores meant nothing
    pages = render_pdf(report, tmp_path / "report.pdf")
    data = (tmp_path / "report.pdf").read_bytes()
    assert data.startswith(b"%PDF") and pages >= 2
    page = render_html(report)
    for section in ("Method and limits", "Characters covered", "Takedowns in force", "Chain head", "t&amp;s lead",
                    "counter(pages)"):
        assert section in page
