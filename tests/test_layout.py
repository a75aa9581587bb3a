"""The pipeline's shape holds: only the policy decides, findings say what was compared, and
the parts that need no model (``import guard``, ``guard --version``, header-only scans) do
not import torch."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from guard import Action, Guard, Policy, Signal
from guard.adapters.cli.output import compared, summarise

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "guard"


def sources(*skip: str):
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if not any(rel.startswith(s) for s in skip):
            yield rel, path.read_text(encoding="utf-8")


def test_no_policy_setting_is_read_with_a_default_outside_the_policy():
    """Settings are typed attributes of `Policy` (defaults in the TOML only): nothing reads a
    raw policy table, and no code outside guard/policy reads a setting with its own default."""
    assert not hasattr(Policy, "section")
    raw = re.compile(r"\.section\(|policy\.\w+\.get\(|policy\.get\(|_data\.get\(")
    found = [(rel, line) for rel, text in sources("policy/") for line in text.splitlines() if raw.search(line)]
    assert found == []


def test_the_act_layer_has_its_own_folder_and_bundles_call_public_checks():
    adapters = {p.name for p in (PACKAGE / "adapters").iterdir()}
    assert {"cli", "service.py", "diffusers", "scan.py", "convert.py"} <= adapters
    bundles = (PACKAGE / "checks" / "bundles.py").read_text()
    assert not re.search(r"guard\._\w", bundles)


def _fresh_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=ROOT, timeout=120).stdout.strip()


def test_import_guard_and_version_do_not_import_torch():
    assert _fresh_python("import sys, guard; from guard import Action, Verdict, Policy; "
                         "print('torch' in sys.modules)") == "False"
    assert _fresh_python("import sys; from guard.adapters.cli import main; main(['--version']); "
                         "print('torch' in sys.modules)").endswith("False")


def test_a_header_only_scan_does_not_import_torch(bank_file):
    models = ROOT / "examples" / "demo_models"
    out = _fresh_python(
        "import sys; from guard.adapters.cli import main; "
        f"code = main(['scan', '--json', '--metadata-only', '--bank', {str(bank_file)!r}, {str(models)!r}]); "
        "print('torch' in sys.modules, 'open_clip' in sys.modules, code)")
    assert out.splitlines()[-1] == "False False 4"  # 4: something was blocked (the pickle, the tagged LoRA)


def test_a_fixed_action_rule_has_no_threshold_and_prints_none(guard):
    v = guard.check_prompt("ultramna fighting a kaiju")
    [f] = [f for f in v.findings if f.signal is Signal.ALIAS]
    assert f.score == pytest.approx(0.9) and f.threshold is None and f.action is Action.BLOCK
    assert "alias 0.900 block" in summarise(f) and "≥" not in summarise(f)
    assert f.to_dict()["threshold"] is None


def test_a_misspelling_held_to_thresholds_records_the_one_applied(bank_file, encoder):
    from guard import Bank

    policy = Policy.from_dict({"signals": {"alias": {"flag": 0.85, "block": 0.95}}})
    g = Guard(Bank.load(bank_file), policy, encoder)
    [typo] = [f for f in g.check_prompt("ultramna fighting a kaiju").findings if f.signal is Signal.ALIAS]
    [exact] = [f for f in g.check_prompt("ultraman fighting a kaiju").findings if f.signal is Signal.ALIAS]
    assert (typo.action, typo.threshold) == (Action.FLAG, 0.85)
    assert (exact.action, exact.threshold) == (Action.BLOCK, 0.95)
    assert compared(typo) == "0.900≥0.85"


def test_each_measure_prints_as_what_it_is():
    from guard import Finding

    assert compared(Finding("x", Signal.PDQ, 8.0, 31.0, Action.BLOCK)) == "8≤31 bits"
    assert compared(Finding("x", Signal.DATASET_SHARE, 0.25, 0.2, Action.BLOCK)) == "share 0.250≥0.20"
    assert compared(Finding("x", Signal.CLIP_IMAGE, 0.912, 0.88, Action.BLOCK)) == "0.912≥0.88"
    assert compared(Finding("x", Signal.FILE_HASH, 1.0, None, Action.BLOCK)) == "exact"


def test_verdicts_recorded_before_thresholds_could_be_none_still_read():
    from guard import Verdict

    old = {"subject": "s", "surface": "prompt", "action": "block", "findings": [
        {"subject": "ultraman", "signal": "alias", "score": 1.0, "threshold": 1.0, "action": "block"}]}
    assert Verdict.from_dict(old).findings[0].threshold == 1.0


def test_the_readme_layout_is_the_tree():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    listed = {m.rstrip("/") for m in re.findall(r"^(guard/\S+)", block, re.M)}
    tree = {f"guard/{p.name}" for p in PACKAGE.iterdir()
            if p.name not in ("__init__.py", "py.typed", "__pycache__") and not p.name.endswith(".egg-info")}
    assert listed == tree
