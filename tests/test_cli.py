"""The CLI contract: JSONL, exit codes, clear errors (in-process, plus one real subprocess)."""

import json
import os
import subprocess
import sys

import pytest

from guard.adapters.cli import main

from .conftest import DEMO_REFS, DEMO_UPLOADS, ROOT


@pytest.fixture(scope="module")
def cli_bank(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "b.safetensors"
    assert main(["bank", "build", str(DEMO_REFS), "-o", str(path), "--encoder", "tiny-test"]) == 0
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def jsonl(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_reference_image_blocks_and_unrelated_passes(cli_bank, capsys):
    code, out, _ = run(capsys, "check", "image", "--surface", "generated_image", DEMO_REFS / "ultraman" / "pose0.png",
                       "--bank", cli_bank, "--encoder", "tiny-test", "--json")
    [v] = jsonl(out)
    assert code == 4 and v["action"] == "block"
    assert v["findings"][0]["signal"] == "clip_image" and v["findings"][0]["subject"] == "ultraman"
    assert abs(v["findings"][0]["score"] - 1.0) < 2e-3
    code, out, _ = run(capsys, "check", "image", "--surface", "generated_image", DEMO_UPLOADS / "unrelated_1.png",
                       "--bank", cli_bank, "--encoder", "tiny-test", "--json")
    assert code == 0 and jsonl(out)[0]["action"] == "allow"


def test_folder_scan_prints_a_table_and_exits_4(cli_bank, capsys):
    code, out, err = run(capsys, "check", "image", "--surface", "generated_image", DEMO_UPLOADS, "--bank", cli_bank)
    assert code == 4
    assert "block" in out and "allow" in out
    # Files are named within their folder (in the title), so a narrow table never folds a name.
    assert "images in " in out and "demo_uploads" in out.splitlines()[0]
    assert all(p.name in out for p in DEMO_UPLOADS.iterdir())
    assert "no semantic meaning" in err  # the tiny encoder is always labelled


def test_flag_exit_code_is_3(cli_bank, capsys, tmp_path):
    policy = tmp_path / "review.toml"
    policy.write_text('[encoders."tiny-test".signals.clip_image]\nflag = 0.6\nblock = 1.0\n')
    code, out, _ = run(capsys, "check", "image", "--surface", "generated_image", DEMO_UPLOADS / "new_pose_of_mario.png", "--bank", cli_bank,
                       "--policy", policy, "--json")
    assert code == 3 and jsonl(out)[0]["action"] == "flag"


def test_prompt_command(cli_bank, capsys):
    code, out, _ = run(capsys, "check", "prompt", "奥特曼 vs godzilla", "--bank", cli_bank, "--json")
    [v] = jsonl(out)
    assert code == 4 and v["findings"][0]["evidence"]["alias"] == "奥特曼"
    code, out, _ = run(capsys, "check", "prompt", "a quiet lake", "--negative", "ultraman",
                       "--bank", cli_bank, "--json")
    assert code == 0


def test_wrong_encoder_is_a_clear_error(cli_bank, capsys):
    code, out, err = run(capsys, "check", "image", "--surface", "generated_image", DEMO_REFS / "mario" / "pose0.png", "--bank", cli_bank,
                         "--encoder", "ViT-B-32/laion2b_s34b_b79k")
    assert code == 2 and out == ""
    assert "built with encoder 'tiny-test'" in err and "Traceback" not in err


def test_production_spec_offline_explains(capsys, tmp_path):
    code, _, err = run(capsys, "bank", "build", DEMO_REFS, "-o", tmp_path / "b.safetensors",
                       "--encoder", "ViT-B-32/laion2b_s34b_b79k")
    assert code == 2 and "GUARD_ALLOW_DOWNLOAD" in err and not (tmp_path / "b.safetensors").exists()


def test_usage_errors_exit_2(capsys):
    assert run(capsys, "check", "image")[0] == 2
    assert run(capsys, "frobnicate")[0] == 2
    code, _, err = run(capsys, "check", "prompt", "hi")
    assert code == 2 and "--bank" in err


def test_bank_info_json(cli_bank, capsys):
    code, out, _ = run(capsys, "bank", "info", cli_bank, "--json")
    info = json.loads(out)
    assert code == 0 and info["characters"] == 4 and info["encoder"] == "tiny-test"


def test_bank_add_and_remove(cli_bank, capsys, tmp_path):
    bank = tmp_path / "edit.safetensors"
    bank.write_bytes(cli_bank.read_bytes())
    assert run(capsys, "bank", "remove", bank, "mario")[0] == 0
    code, out, _ = run(capsys, "bank", "add", bank, DEMO_REFS / "mario", "--json")
    assert code == 0 and json.loads(out)["characters"] == 4
    assert run(capsys, "bank", "remove", bank, "nobody")[0] == 2


@pytest.mark.slow  # a process of its own
def test_console_script_end_to_end(cli_bank):
    """The installed ``guard`` entry point, as a user runs it: JSONL, exit 4, no traceback."""
    env = {**os.environ, "GUARD_BANK": str(cli_bank)}
    proc = subprocess.run(
        [sys.executable, "-m", "guard.adapters.cli", "check", "image", "--surface", "generated_image", str(DEMO_UPLOADS), "--json"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 4, proc.stderr
    verdicts = jsonl(proc.stdout)
    assert len(verdicts) == len(list(DEMO_UPLOADS.iterdir()))
    assert "Traceback" not in proc.stderr
    by_name = {os.path.basename(v["subject"]): v for v in verdicts}
    assert by_name["truncated_upload.jpg"]["findings"][0]["signal"] == "format"
    assert by_name["exact_ultraman_reference.png"]["action"] == "block"


def test_many_prompts_from_a_file(cli_bank, capsys, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("a quiet lake\n奥特曼\n\nsuper mario\n".encode() + b"\xff\xfe broken bytes\n")
    code, out, _ = run(capsys, "check", "prompt", "--file", prompts, "--bank", cli_bank, "--json")
    verdicts = jsonl(out)
    assert code == 4 and [v["action"] for v in verdicts] == ["allow", "block", "block", "allow"]


def test_prompt_needs_text_or_file(cli_bank, capsys):
    code, _, err = run(capsys, "check", "prompt", "--bank", cli_bank)
    assert code == 2 and "--file" in err
