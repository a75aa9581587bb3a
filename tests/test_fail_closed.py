"""One fail-closed boundary: a failure inside any part of the guard, during any public check,
is an error verdict under the policy's fail mode, recorded, never a traceback or a 500."""

from __future__ import annotations

import json
import sqlite3

import pytest

from guard.state import AuditLog

from guard import Action, Bank, Guard, Policy
from guard.adapters.cli import main

from . import model_files as mf
from .conftest import DEMO_UPLOADS


def _boom(*args, **kwargs):
    raise RuntimeError("injected failure")


def _sqlite_boom(*args, **kwargs):
    raise sqlite3.OperationalError("injected: database disk image is malformed")


#: (where the failure is injected, what it replaces)
INJECTIONS = {
    "encoder": ("guard.encoders.openclip.OpenClipEncoder.encode_texts", _boom),
    "image encoder": ("guard.encoders.openclip.OpenClipEncoder.iter_image_batches", _boom),
    "hasher": ("guard.extract.model_file.HashJob.finish", lambda *a, **k: (_ for _ in ()).throw(OSError(5, "EIO"))),
    "text matcher": ("guard.match.text.TextMatcher.find", _boom),
    "sqlite": ("guard.state.takedowns.TakedownList.entries", _sqlite_boom),
}


@pytest.fixture()
def stateful(bank_file, encoder, tmp_path):
    guard = Guard(Bank.load(bank_file), Policy.load(), encoder, state=tmp_path / "state")
    lora = mf.write(tmp_path / "style.safetensors", mf.kohya_tensors(mf.lora_weights(3)),
                    {"ss_output_name": "quiet style"})
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "a.png").write_bytes((DEMO_UPLOADS / "unrelated_1.png").read_bytes())
    (dataset / "a.txt").write_text("a photo of a harbour")
    pub = tmp_path / "pub"
    pub.mkdir()
    (pub / "cover.png").write_bytes((DEMO_UPLOADS / "unrelated_2.png").read_bytes())
    (pub / "publication.json").write_text(json.dumps({"title": "harbour", "cover": "cover.png"}))
    guard.take_down(DEMO_UPLOADS / "unrelated_3.png", "N-0")  # so images consult the takedown list
    checks = {
        "prompt": lambda: [guard.check_prompt("a castle at dusk")],
        "images": lambda: guard.check_images([DEMO_UPLOADS / "unrelated_1.png"], surface="cover_image"),
        "model file": lambda: [guard.check_model_file(lora)],
        "dataset": lambda: [guard.check_dataset(dataset)[0]],
        "publication": lambda: [guard.check_publication(pub)],
    }
    return guard, checks


# Which checks each injected part takes part in.
REACHES = {
    "encoder": {"prompt"},
    "image encoder": {"images", "dataset", "publication"},
    "hasher": {"model file"},
    "text matcher": {"prompt", "model file", "dataset", "publication"},
    "sqlite": {"images", "model file", "dataset", "publication"},
}


@pytest.mark.parametrize("part", sorted(INJECTIONS))
def test_a_failure_in_any_part_is_a_recorded_error_verdict(stateful, monkeypatch, part):
    guard, checks = stateful
    target, replacement = INJECTIONS[part]
    monkeypatch.setattr(target, replacement)
    for name in sorted(REACHES[part]):
        before = len(list(guard.audit.rows()))
        verdicts = checks[name]()
        assert verdicts and all(v.error and v.action is Action.BLOCK for v in verdicts), (part, name, verdicts)
        assert all("injected" in v.error or "EIO" in v.error for v in verdicts), (part, name)
        rows = list(guard.audit.rows())[before:]
        assert rows and all(r["action"] == "block" and json.loads(r["verdict"])["error"] for r in rows), (part, name)
    assert guard.audit.verify().ok


def test_the_fail_mode_decides_what_an_error_becomes(bank_file, encoder, monkeypatch):
    monkeypatch.setattr(*INJECTIONS["text matcher"])
    for mode, action in (("closed", Action.BLOCK), ("review", Action.FLAG), ("open", Action.ALLOW)):
        guard = Guard(Bank.load(bank_file), Policy.from_dict({"policy": {"fail_mode": mode}}), encoder)
        verdict = guard.check_prompt("anything")
        assert verdict.error and verdict.action is action, mode


def test_an_audit_log_that_cannot_be_written_fails_the_verdict(stateful, monkeypatch):
    guard, checks = stateful
    monkeypatch.setattr("guard.state.audit.AuditLog.record", _sqlite_boom)
    verdict = guard.check_prompt("a castle at dusk")
    assert verdict.action is Action.BLOCK and "audit log could not record" in verdict.error


def test_the_service_answers_200_with_the_error_verdict(stateful, monkeypatch):
    from .test_service import Service
    from guard.adapters.service import create_app

    guard, _ = stateful
    service = Service(create_app(guard))
    try:
        monkeypatch.setattr(*INJECTIONS["text matcher"])
        status, verdict, headers = service.call("/v1/prompt", {"text": "a castle"})
        assert status == 200 and verdict["action"] == "block" and "injected" in verdict["error"]
        assert headers["x-guard-action"] == "block"
        status, answer, _ = service.call("/v1/prompt", {"text": 5})
        assert status == 400 and "text" in answer["detail"]  # the caller's mistake is named, not a verdict
    finally:
        service.stop()


def test_the_cli_exits_1_with_one_line(bank_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(*INJECTIONS["hasher"])
    lora = mf.write(tmp_path / "style.safetensors", mf.kohya_tensors(mf.lora_weights(3)))
    assert main(["scan", str(lora), "--bank", str(bank_file), "--json"]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["action"] == "block" and "EIO" in verdict["error"]
    monkeypatch.setattr("guard.adapters.cli.cmd_takedown_list", _boom)  # a bug outside any check
    assert main(["takedown", "list", "--state", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: injected failure" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("data, says", [
    ({"encoders": {"x": 1}}, "encoders.x"),
    ({"encoders": 3}, "encoders"),
    ({"characters": {"ultraman": "yes"}}, "characters.ultraman"),
    ({"signals": {"clip_image": {"surfaces": 3}}}, "signals.clip_image.surfaces"),
    ({"signals": {"clip_image": {"block": "high"}}}, "signals.clip_image.block"),
    ({"signals": {"clip_image": {"block": True}}}, "signals.clip_image.block"),
    ({"text": 5}, "text"),
])
def test_malformed_policy_tables_are_named(data, says):
    from guard import ConfigError

    with pytest.raises(ConfigError) as info:
        Policy.from_dict(data)
    assert says in str(info.value)


def test_bad_character_thresholds_fail_when_the_bank_is_built(encoder, tmp_path):
    from guard import BankError
    from guard.bank import build_bank

    folder = tmp_path / "refs" / "hero"
    folder.mkdir(parents=True)
    (folder / "character.toml").write_text('aliases = ["Hero"]\n[thresholds.clip_image]\nblock = "high"\n')
    (folder / "a.png").write_bytes((DEMO_UPLOADS / "unrelated_1.png").read_bytes())
    with pytest.raises(BankError) as info:
        build_bank(tmp_path / "refs", encoder)
    assert "character.toml" in str(info.value) and "thresholds.clip_image.block" in str(info.value)
    assert "'high'" in str(info.value)


def test_a_bank_manifest_without_characters_is_a_one_line_error(bank_file, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from guard.bank.store import MANIFEST_KEY

    with safe_open(str(bank_file), framework="pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    manifest = json.loads(meta[MANIFEST_KEY])
    del manifest["characters"]
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, broken, metadata={**meta, MANIFEST_KEY: json.dumps(manifest)})
    assert main(["bank", "info", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "'characters'" in err and "Traceback" not in err


def test_rescan_answers_for_items_of_unknown_type(guard, tmp_path):
    index = tmp_path / "catalog.jsonl"
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 16)
    index.write_text(json.dumps({"path": "clip.mp4", "id": "item-1", "type": "video"}) + "\n"
                     + json.dumps({"path": "nowhere/pub", "id": "item-2", "type": "publication"}) + "\n")
    from guard.adapters.scan import rescan

    verdicts = {v.subject: v for v in rescan(guard, index)}
    assert set(verdicts) == {"item-1", "item-2"}
    assert all(v.action is Action.BLOCK for v in verdicts.values())
    assert "'video'" in verdicts["item-1"].findings[0].evidence["reason"]


def test_cli_mistakes_are_one_line(bank_file, tmp_path, capsys):
    assert main(["check", "prompt", "a cat", "--device", "tpu9", "--bank", str(bank_file)]) == 2
    err = capsys.readouterr().err
    assert "device 'tpu9'" in err and "Traceback" not in err
    AuditLog(tmp_path / "s").close()
    assert main(["audit", "report", "--state", str(tmp_path / "s"), "--html", "/nonexistent/dir/r.html"]) == 2
    err = capsys.readouterr().err
    assert "cannot write it" in err and "Traceback" not in err


def test_a_prompt_that_trips_the_guard_fails_closed_alone_not_its_batch(guard, monkeypatch):
    """check_prompts batches prompts of several accounts (the service does): a failure on one
    prompt's screening is that prompt's error verdict, not its batch-mates'."""
    real = type(guard).text_findings

    def tripping(self, text, *args, **kwargs):
        if "trip" in text:
            raise RuntimeError("injected failure")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(type(guard), "text_findings", tripping)
    verdicts = guard.check_prompts(["a quiet lake", "trip the guard", "ultraman over tokyo"], accounts=["a", "b", "c"])
    assert [v.action.value for v in verdicts] == ["allow", "block", "block"]
    assert [bool(v.error) for v in verdicts] == [False, True, False]
    assert "injected failure" in verdicts[1].error
