"""The README's command list, run top to bottom as written (issue 18): each command must exit
with the status the README documents, so the README cannot drift from the CLI again."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import DEMO_REFS, DEMO_UPLOADS, ROOT

pytestmark = pytest.mark.slow

#: The one substitution: no CLIP weights exist offline, so the tiny encoder stands in.
OFFLINE = {"ViT-L-14/openai": "tiny-test"}


def readme_commands() -> list[tuple[str, int]]:
    """(command, documented exit status) for each line of the README's "## Use" block."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^## Use\n+```bash\n(.*?)^```", text, re.S | re.M).group(1)
    commands = []
    for line in block.splitlines():
        command, _, comment = line.partition("  #")
        status = re.search(r"\(exit (\d)", comment)
        assert status, f"README command without its exit status: {line}"
        commands.append((command.strip(), int(status.group(1))))
    return commands


def workspace(root: Path) -> None:
    """The files the README's commands name, from the demo data."""
    shutil.copytree(DEMO_REFS, root / "refs")
    shutil.copytree(DEMO_UPLOADS, root / "uploads")
    shutil.copytree(ROOT / "examples" / "demo_models", root / "catalog" / "loras")
    shutil.copy(ROOT / "examples" / "demo_models" / "hero_style_v2.safetensors", root / "upload.safetensors")
    (root / "prompts.txt").write_text("ultraman fighting a kaiju\na quiet lake at dawn\n", encoding="utf-8")
    torch.save({"state_dict": {"w": torch.ones(4, 4)}}, root / "old_model.ckpt")


def test_the_readme_command_list_runs_as_documented(tmp_path):
    commands = readme_commands()
    assert len(commands) >= 12
    workspace(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARD_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for command, documented in commands:
        for production, offline in OFFLINE.items():
            command = command.replace(production, offline)
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == documented, (command, done.returncode, done.stdout[-1500:], done.stderr[-1500:])
    assert (tmp_path / "report.html").is_file() and (tmp_path / "old_model.safetensors").is_file()


def test_the_demo_runs_every_step_with_its_documented_exit_status():
    """`make demo`'s script, as a fresh machine runs it: no step may fail on an import or a
    path (a demo step that breaks exits 2 or shows a traceback, and nobody reads the log)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARD_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(["bash", str(ROOT / "examples" / "demo.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in log, log[-3000:]
    statuses = [int(s) for s in re.findall(r"\(exit status (\d)\)", log)]
    # build, uploads (block), the holder's own image, 奥特曼, negative-only, JSONL, anchors (flag), scan,
    # takedown, the re-upload (block), verify, report
    assert statuses == [0, 4, 0, 4, 0, 4, 3, 4, 0, 4, 0, 0], statuses
