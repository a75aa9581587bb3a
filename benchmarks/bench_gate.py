"""The model-file gate against picklescan and modelscan, on the canary corpus, in one run.

    python benchmarks/bench_gate.py            # the guard, picklescan, modelscan
    python benchmarks/bench_gate.py --live     # also prove which payloads really run (see below)
    python benchmarks/bench_gate.py --no-bombs # without the resource bombs (faster)

The corpus is tests/canaries.py: payloads (files that would run code), hostile files (ambiguous
containers, malformed headers, resource bombs) and benign files of every format. picklescan and
modelscan are installed from the package index into their own environment
(``.cache/bench-gate``, made on first use), so their dependencies never touch the guard's.
A tool "blocks" a file when it reports an issue or fails to scan it (the fail-closed reading,
which is generous to them); its clean-pass count is how many benign files it let through
without either. Printed: payloads and hostile files blocked, benign files passed, files/s, the
slowest file and the guard's peak RSS.

``--live`` loads every payload the way its suffix invites (``torch.load(weights_only=False)``,
``pickle.load``) in a throw-away subprocess and counts those that create the marker file: the
corpus's payloads are only meaningful if they really run. (Each only touches a marker file.)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.canaries import build  # noqa: E402

TOOLS_ENV = ROOT / ".cache" / "bench-gate"
TOOLS = ("picklescan==1.0.5", "modelscan==0.8.8")

_DRIVER = r"""
import json, sys, time, logging
logging.disable(logging.CRITICAL)
tool, paths = sys.argv[1], sys.argv[2:]
if tool == "picklescan":
    from picklescan.scanner import scan_file_path
    def scan(p):
        r = scan_file_path(p)
        return r.infected_files > 0, bool(r.scan_err)
else:
    from modelscan.modelscan import ModelScan
    from modelscan.settings import DEFAULT_SETTINGS
    def scan(p):
        r = ModelScan(settings=DEFAULT_SETTINGS).scan(p)
        return r["summary"]["total_issues"] > 0, bool(r.get("errors"))
for p in paths:
    start = time.perf_counter()
    try:
        issue, error = scan(p)
    except BaseException as exc:
        issue, error = False, True
    print(json.dumps({"path": p, "issue": issue, "error": error, "seconds": time.perf_counter() - start}), flush=True)
"""

_LIVE = r"""
import json, os, pickle, sys, warnings
warnings.filterwarnings("ignore")
import torch
marker, paths = sys.argv[1], sys.argv[2:]
for p in paths:
    if os.path.exists(marker):
        os.remove(marker)
    try:
        if p.endswith((".pkl",)):
            with open(p, "rb") as fh:
                pickle.load(fh)
        else:
            torch.load(p, weights_only=False)
    except BaseException:
        pass
    print(json.dumps({"path": p, "ran": os.path.exists(marker)}), flush=True)
"""


def tools_python() -> Path:
    python = TOOLS_ENV / "bin" / "python"
    if not python.exists():
        print(f"installing {', '.join(TOOLS)} into {TOOLS_ENV} ...", file=sys.stderr)
        venv.create(TOOLS_ENV, with_pip=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *TOOLS], check=True)
    return python


def run_tool(python: Path, tool: str, paths: list[str]) -> tuple[dict[str, bool], float, tuple[float, str]]:
    start = time.perf_counter()
    proc = subprocess.run([str(python), "-c", _DRIVER, tool, *paths], capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    blocked, slowest = {}, (0.0, "")
    for line in proc.stdout.splitlines():
        row = json.loads(line)
        blocked[row["path"]] = row["issue"] or row["error"]
        slowest = max(slowest, (row["seconds"], Path(row["path"]).name))
    for p in paths:  # a file the tool never answered for (it crashed): counted as blocked
        blocked.setdefault(p, True)
    return blocked, wall, slowest


def run_guard(paths: list[str]) -> tuple[dict[str, bool], float, tuple[float, str]]:
    from guard import Action, Guard

    guard = Guard.open(ROOT / "embeddings" / "demo-bank.safetensors", encoder="tiny-test")
    guard.check_model_file(paths[-1])  # warm-up: lazy imports
    blocked, slowest = {}, (0.0, "")
    start = time.perf_counter()
    for p in paths:
        t = time.perf_counter()
        blocked[p] = guard.check_model_file(p).action is Action.BLOCK
        slowest = max(slowest, (time.perf_counter() - t, Path(p).name))
    return blocked, time.perf_counter() - start, slowest


def live(paths: list[str], marker: Path) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", _LIVE, str(marker), *paths], capture_output=True, text=True,
                          timeout=1800, cwd=marker.parent)
    return {row["path"] for row in map(json.loads, proc.stdout.splitlines()) if row["ran"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", action="store_true", help="also count the payloads that really run")
    parser.add_argument("--no-bombs", action="store_true", help="leave out the resource bombs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        marker = Path(tmp) / "MARKER"
        corpus = build(Path(tmp) / "files", marker, bombs=not args.no_bombs)
        kinds = {str(path): kind for path, kind in corpus.values()}
        paths = sorted(kinds)
        count = {k: sum(1 for v in kinds.values() if v == k) for k in ("payload", "hostile", "benign")}
        print(f"corpus: {len(paths)} files: {count['payload']} payloads, {count['hostile']} hostile "
              f"(ambiguous, malformed, bombs), {count['benign']} benign")
        if args.live:
            ran = live([p for p in paths if kinds[p] == "payload"], marker)
            print(f"live: {len(ran)} of {count['payload']} payloads really run under "
                  f"torch.load(weights_only=False) / pickle.load (the rest are refused by CPython or torch "
                  f"before their call, or are reader-divergence classes)")
        else:
            ran = None
        python = tools_python()
        results = {"guard": run_guard(paths)}
        for tool in ("picklescan", "modelscan"):
            results[tool] = run_tool(python, tool, paths)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for name, (blocked, wall, slowest) in results.items():
            by_kind = {k: sum(1 for p in paths if kinds[p] == k and blocked[p]) for k in count}
            live_part = f", live payloads blocked {sum(1 for p in ran if blocked[p])}/{len(ran)}" if ran else ""
            missed = sorted(Path(p).name for p in paths if kinds[p] != "benign" and not blocked[p])
            print(f"{name:10s}: payloads blocked {by_kind['payload']}/{count['payload']}{live_part}, hostile blocked "
                  f"{by_kind['hostile']}/{count['hostile']}, benign passed "
                  f"{count['benign'] - by_kind['benign']}/{count['benign']}; {len(paths) / wall:.1f} files/s; "
                  f"slowest {slowest[1]} {slowest[0]:.2f} s")
            if missed:
                print(f"            missed: {', '.join(missed[:12])}{' ...' if len(missed) > 12 else ''}")
        print(f"guard peak RSS (this process, corpus build included): {peak:.0f} MB; marker created by a scan: "
              f"{marker.exists() and not args.live}")


if __name__ == "__main__":
    main()
