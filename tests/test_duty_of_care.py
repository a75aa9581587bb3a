"""Publications, training sets, keep-down (PDQ, fingerprints), notices, strikes, the audit log."""

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from guard import Action, Bank, Guard, Policy, Signal, Surface, Verdict
from guard.adapters.cli import main
from guard.state import AuditLog
from guard.testing.synthetic import character, render

from . import model_files as mf
from .conftest import DEMO_REFS, ROOT


@pytest.fixture()
def g(bank_file, encoder, tmp_path):
    """A guard with its own bank copy and a state folder (takedowns + audit log)."""
    bank = tmp_path / "bank.safetensors"
    bank.write_bytes(bank_file.read_bytes())
    return Guard(Bank.load(bank), Policy.load(), encoder, state=tmp_path / "state")


def photo(seed: int, size: int = 256) -> Image.Image:
    """A textured picture (PDQ needs texture; flat drawings hash with low quality)."""
    rng = np.random.default_rng(seed)
    base = np.asarray(render(character(seed), 0, size)).astype(float)
    noise = rng.normal(0, 1, (16, 16, 3))
    noise = (noise - noise.min()) / (noise.max() - noise.min()) * 255
    texture = np.asarray(Image.fromarray(noise.astype(np.uint8)).resize((size, size), Image.BICUBIC)).astype(float)
    return Image.fromarray(np.clip(base * 0.7 + texture * 0.3, 0, 255).astype(np.uint8))


def publication(folder, cover, tags=(), title="My new LoRA", model=None):
    folder.mkdir(parents=True)
    cover.save(folder / "cover.png")
    render(character(777), 0, 128).save(folder / "sample1.png")
    manifest = {"title": title, "description": "trained for a week", "tags": list(tags),
                "trigger_words": ["myst1le"], "category": "style", "account": "uploader-1",
                "cover": "cover.png", "samples": ["sample1.png"]}
    if model is not None:
        manifest["model"] = model.name
        (folder / model.name).write_bytes(model.read_bytes())
    (folder / "publication.json").write_text(json.dumps(manifest))
    return folder


def test_publication_with_an_exemplar_cover_is_blocked_naming_the_cover(g, tmp_path):
    bundle = publication(tmp_path / "pub", Image.open(DEMO_REFS / "ultraman" / "pose1.png"))
    v = g.check_publication(bundle)
    assert v.action is Action.BLOCK and v.surface is Surface.PUBLICATION
    assert v.facts["decided_by"] == ["cover"]
    assert any(f.subject == "ultraman" and f.evidence["part"] == "cover" for f in v.findings)


def test_publication_with_clean_cover_but_character_tags(g, bank_file, encoder, tmp_path):
    bundle = publication(tmp_path / "pub", render(character(4242), 0, 128), tags=["anime", "pikachu", "cute"])
    v = g.check_publication(bundle)
    assert v.action is Action.BLOCK and v.facts["decided_by"] == ["tags"]
    lenient = Guard(Bank.load(bank_file), Policy.from_dict(
        {"signals": {"alias": {"surfaces": {"publication": {"action": "flag"}}}}}), encoder)
    assert lenient.check_publication(bundle).action is Action.FLAG
    clean = publication(tmp_path / "clean", render(character(4243), 0, 128), tags=["landscape"])
    assert g.check_publication(clean).action is Action.ALLOW


def test_publication_model_part(g, tmp_path):
    lora = mf.write(tmp_path / "style.safetensors", mf.kohya_tensors(mf.lora_weights(1)), mf.kohya_metadata())
    v = g.check_publication(publication(tmp_path / "pub", render(character(4244), 0, 128), model=lora))
    assert v.action is Action.BLOCK and v.facts["decided_by"] == ["model"]
    assert v.facts["model"]["format"] == "kohya-lora"


def test_dataset_with_3_of_10_bank_images_is_blocked(g, tmp_path):
    data = tmp_path / "dataset"
    data.mkdir()
    for i in range(7):
        render(character(5000 + i), 0, 128).save(data / f"img{i}.png")
        (data / f"img{i}.txt").write_text("1girl, solo, outdoors")
    for i, pose in enumerate((30, 31, 32)):
        render(character(13), pose, 128).save(data / f"pika{i}.png")  # pikachu's drawing, new poses
    dataset, images = g.check_dataset(data)
    assert len(images) == 10 and dataset.facts == {"images": 10, "captions": 7}
    f = dataset.findings[0]
    assert dataset.action is Action.BLOCK and f.subject == "pikachu"
    assert f.evidence["images"] == 3 and f.evidence["share"] == pytest.approx(0.3)
    # A share, compared with the share the policy applied, and what made each image count.
    assert f.signal is Signal.DATASET_SHARE and f.signal.measure.value == "share"
    assert f.score == pytest.approx(0.3) and f.threshold == g.policy.dataset.block_share
    assert "clip_image" in f.evidence["matched_by"]
    assert sum(v.action is not Action.ALLOW for v in images) == 3


def test_one_image_or_a_caption_flags_a_dataset(g, tmp_path):
    data = tmp_path / "dataset"
    data.mkdir()
    for i in range(9):
        render(character(6000 + i), 0, 128).save(data / f"img{i}.png")
    (data / "img0.txt").write_text("1boy, ultraman, city")
    dataset, images = g.check_dataset(data)
    assert dataset.action is Action.FLAG and dataset.findings[0].subject == "ultraman"
    assert images[0].findings[0].evidence["caption"] == "img0.txt"


def test_reencoded_copy_of_a_taken_down_image_is_blocked_by_pdq(g, tmp_path):
    original = photo(601)
    original.save(tmp_path / "taken_down.png")
    [entry] = g.take_down(tmp_path / "taken_down.png", "DMCA-IMG-1", character="ultraman")
    assert entry.pdq and entry.pdq_quality >= 50
    w, h = original.size
    f = 0.0127  # 5% of the area cropped away, evenly
    copy = original.crop((int(w * f), int(h * f), int(w * (1 - f)), int(h * (1 - f)))).resize((int(w * .8), int(h * .8)))
    buf = io.BytesIO()
    copy.save(buf, "JPEG", quality=70)
    [v] = g.check_images([buf.getvalue()], surface="cover_image")
    finding = next(f for f in v.findings if f.signal is Signal.PDQ)
    assert v.action is Action.BLOCK and finding.subject == "takedown:DMCA-IMG-1"
    assert finding.evidence["distance"] <= 31
    # A distance in bits, compared with the policy's max_distance (not a similarity of 1.0).
    assert finding.signal.measure.value == "distance"
    assert finding.score == finding.evidence["distance"] and finding.threshold == g.policy.pdq.max_distance
    [other] = g.check_images([photo(999)], surface="cover_image")
    assert not any(f.signal is Signal.PDQ for f in other.findings)


def test_lora_reupload_stripped_and_cast_is_blocked(g, tmp_path):
    lora = mf.write(tmp_path / "orig.safetensors", mf.kohya_tensors(mf.lora_weights(3), dtype=torch.float32),
                    mf.kohya_metadata())
    g.take_down(lora, "N-1", character="ultraman")
    reup = mf.write(tmp_path / "reup.safetensors", mf.kohya_tensors(mf.lora_weights(3), dtype=torch.float16))
    v = g.check_model_file(reup)
    assert v.action is Action.BLOCK and v.findings[0].signal is Signal.FINGERPRINT


def test_takedown_of_a_whole_publication(g, tmp_path):
    lora = mf.write(tmp_path / "style.safetensors", mf.kohya_tensors(mf.lora_weights(9)))
    bundle = publication(tmp_path / "pub", photo(602), model=lora)
    entries = g.take_down(bundle, "N-PUB", character="ultraman")
    assert len(entries) == 3 and sum(1 for e in entries if e.pdq) == 2
    assert g.check_model_file(bundle / "style.safetensors").action is Action.BLOCK


def test_authorized_account_is_allowed_and_recorded(g):
    [v] = g.check_images([DEMO_REFS / "ultraman" / "pose0.png"], account="tsuburaya-official")
    assert v.action is Action.ALLOW
    row = list(g.audit.rows())[-1]
    assert row["account"] == "tsuburaya-official" and row["action"] == "allow"
    assert json.loads(row["verdict"])["findings"][0]["evidence"]["authorized_account"] == "tsuburaya-official"


def test_every_check_is_recorded_once(g, tmp_path):
    g.check_prompt("a lake")
    g.check_images([DEMO_REFS / "mario" / "pose0.png", DEMO_REFS / "pikachu" / "pose0.png"])
    g.check_publication(publication(tmp_path / "pub", render(character(1), 0, 64)))
    surfaces = [r["surface"] for r in g.audit.rows()]
    assert surfaces == ["prompt", "generated_image", "generated_image", "publication"]
    assert g.audit.verify().ok


def test_strikes(bank_file, encoder, tmp_path):
    g = Guard(Bank.load(bank_file), Policy.from_dict({"strikes": {"enabled": True}}), encoder, state=tmp_path)
    levels = [g.check_prompt("ultraman", account="bad-actor").facts["strikes"]["level"] for _ in range(8)]
    assert levels == [None, None, "warn", "warn", "notify", "notify", "notify", "suspend"]
    assert g.check_prompt("ultraman", account="someone-else").facts["strikes"]["blocked_attempts"] == 1
    assert "strikes" not in g.check_prompt("a lake", account="bad-actor").facts


def test_notice_enrolls_a_character_and_rescan_finds_old_uploads(g, tmp_path):
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    render(character(31337), 5, 128).save(catalog / "old_upload.png")
    render(character(4000), 0, 128).save(catalog / "unrelated.png")
    before = {v.subject: v.action for v in g.check_images(sorted(map(str, catalog.iterdir())))}
    assert set(before.values()) == {Action.ALLOW}
    refs = tmp_path / "notice"
    refs.mkdir()
    for pose in (0, 1, 2):
        render(character(31337), pose, 128).save(refs / f"ref{pose}.png")
    char = g.enroll("astro-hero", refs, holder="Example Studio", accounts=["example-official"],
                    names={"en": "Astro Hero"})
    assert char.holder == "Example Studio" and len(char.references) == 3
    assert g.check_prompt("astro hero fan art").action is Action.BLOCK
    from guard.adapters.scan import rescan
    now = {os.path.basename(v.subject): v for v in rescan(g, catalog)}
    assert now["old_upload.png"].action is not Action.ALLOW and now["unrelated.png"].action is Action.ALLOW
    again = g.enroll("astro-hero", refs)  # the same images: nothing new to encode, nothing duplicated
    assert len(again.references) == 3


# Audit log ------------------------------------------------------------------------------------
def verdict(i: int) -> Verdict:
    return Verdict(f"item-{i}", Surface.PROMPT, versions={"guard": "test"})


def written_log(folder, rows: int) -> AuditLog:
    """An audit log in ``folder`` holding ``rows`` verdicts."""
    log = AuditLog(folder)
    for i in range(rows):
        log.record(verdict(i))
    return log


def test_10000_verdicts_from_4_threads_none_lost(tmp_path):
    log = AuditLog(tmp_path)

    def burst(t: int):
        for i in range(2500):
            log.record(verdict(t * 10_000 + i), account=f"acct{t}")

    threads = [threading.Thread(target=burst, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = list(log.rows())
    assert len(rows) == 10_000 and len({r["subject"] for r in rows}) == 10_000
    result = log.verify()
    assert result.ok and result.rows == 10_000


def test_editing_a_row_is_detected_and_named(tmp_path, capsys):
    written_log(tmp_path, 20).close()
    with sqlite3.connect(tmp_path / "audit.sqlite") as db:
        db.execute("UPDATE audit SET subject = 'tampered' WHERE seq = 12")
    assert main(["audit", "verify", "--state", str(tmp_path)]) == 5
    assert "row 12" in capsys.readouterr().err  # the first row whose hash no longer fits
    result = AuditLog(tmp_path).verify()
    assert not result.ok and result.bad_seq == 12 and "changed" in result.reason
    with sqlite3.connect(tmp_path / "audit.sqlite") as db:
        db.execute("UPDATE audit SET action = 'block' WHERE seq = 3")
    result = AuditLog(tmp_path).verify()
    assert result.bad_seq == 3
    assert main(["audit", "verify", "--state", str(tmp_path)]) == 5
    assert "row 3" in capsys.readouterr().err


def test_deleting_or_reordering_rows_is_detected(tmp_path):
    written_log(tmp_path, 10).close()
    with sqlite3.connect(tmp_path / "audit.sqlite") as db:
        db.execute("DELETE FROM audit WHERE seq = 5")
    assert AuditLog(tmp_path).verify().bad_seq == 6
    with sqlite3.connect(tmp_path / "audit.sqlite") as db:
        db.execute("INSERT INTO audit SELECT 5, time, surface, subject, account, action, verdict, prev_hash, row_hash, mac, format, content_digest, purged"
                   " FROM audit WHERE seq = 9")
    assert not AuditLog(tmp_path).verify().ok


def test_cutting_off_the_newest_rows_is_caught_by_an_anchor(tmp_path, capsys):
    log = written_log(tmp_path, 10)
    head = log.head()
    assert head.seq == 10 and log.verify([head]).ok
    assert main(["audit", "report", "--state", str(tmp_path), "-o", str(tmp_path / "report.json")]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["audit_log"]["head"] == head._asdict()
    log.close()
    with sqlite3.connect(tmp_path / "audit.sqlite") as db:
        db.execute("DELETE FROM audit WHERE seq > 7")
    assert AuditLog(tmp_path).verify().ok  # a shorter chain is still a valid chain...
    result = AuditLog(tmp_path).verify([head])  # ...but not the one the anchor saw
    assert not result.ok and result.bad_seq == 10 and "newest rows were removed" in result.reason
    capsys.readouterr()
    assert main(["audit", "verify", "--state", str(tmp_path), "--anchor", str(tmp_path / "report.json")]) == 5
    assert "row 10" in capsys.readouterr().err
    # Re-growing the chain to the anchor's length with other rows does not pass either.
    regrown = AuditLog(tmp_path)
    for i in range(3):
        regrown.record(verdict(100 + i))
    result = regrown.verify([head])
    assert not result.ok and result.bad_seq == 10 and "anchor recorded" in result.reason
    assert main(["audit", "verify", "--state", str(tmp_path), "--anchor", str(tmp_path / "nope.json")]) == 2


WRITER = """
import sys
from guard.state import AuditLog
from guard.verdict import Surface, Verdict
log = AuditLog(sys.argv[1])
i = 0
while True:
    log.record(Verdict(f"burst-{i}", Surface.PROMPT, versions={"guard": "test"}), account="writer")
    i += 1
    if i == 200:
        print("ready", flush=True)
"""


def test_sigkill_mid_burst_leaves_a_valid_log(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    with sqlite3.connect(tmp_path / "audit.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    result = AuditLog(tmp_path).verify()
    assert result.ok and result.rows >= 200
    log = AuditLog(tmp_path)  # the chain goes on after the crash
    log.record(verdict(1))
    assert log.verify().ok


def test_report_json_and_html(g, tmp_path, capsys):
    g.check_prompt("ultraman")
    g.check_prompt("a lake")
    g.check_images([DEMO_REFS / "mario" / "pose0.png"], account="tsuburaya-official")
    html = tmp_path / "report.html"
    assert main(["audit", "report", "--state", str(tmp_path / "state"), "--html", str(html)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdicts"] == 3 and report["by_action"] == {"allow": 1, "flag": 0, "block": 2}
    assert report["by_character"]["ultraman"] == 1 and report["audit_log"]["chain_intact"]
    assert report["versions_in_force"][0]["bank"] == g.bank.digest
    page = html.read_text()
    assert page.count("<svg") >= 2 and "<rect" in page and "Duty-of-care report" in page
    assert "<script" not in page and "http" not in page.split("</style>")[1]
