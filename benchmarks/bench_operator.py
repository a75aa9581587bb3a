"""The operator's first hour, timed: how long each command takes to start and answer, and how
a prompt's screening cost grows with its length up to the policy's limit.

Startup (wall time of a fresh ``guard`` process, best of 3; goals: ``--version`` < 0.5 s,
``takedown list`` and ``audit verify`` < 1 s, ``scan --metadata-only`` of one file < 1 s),
each against a bare ``python -c pass`` in the same run (the interpreter's own start).

Prompt length (``Guard.check_prompt``, tiny encoder, default policy, in process): µs per
character at 250 ... 4,000 characters and the ratio of the longest's cost per character to
the shortest's (linear: about 1 or below), and the time to refuse a 1 MB prompt.

    python benchmarks/bench_operator.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
ROOT = Path(__file__).resolve().parent.parent


def wall(args: list[str], cwd: Path, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(args, cwd=cwd, capture_output=True, check=False)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    from guard import Guard, Policy
    from guard.bank import Bank, build_bank
    from guard.encoders import load_encoder

    encoder = load_encoder("tiny-test", device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_bank(ROOT / "examples" / "demo_refs", encoder).save(work / "bank.safetensors")
        lora = shutil.copy(ROOT / "examples" / "demo_models" / "hero_style_v2.safetensors", work / "hero.safetensors")
        guard_cmd = [sys.executable, "-m", "guard.adapters.cli"]
        subprocess.run(guard_cmd + ["takedown", "add", lora, "--notice", "N-1", "--state", "state"], cwd=work,
                       capture_output=True, check=True)
        bare = wall([sys.executable, "-c", "pass"], work)
        print(f"python -c pass (the interpreter alone): {bare:.2f} s")
        for label, args, goal in (
                ("guard --version", ["--version"], 0.5),
                ("guard takedown list", ["takedown", "list", "--state", "state"], 1.0),
                ("guard audit verify", ["audit", "verify", "--state", "state"], 1.0),
                ("guard scan --metadata-only (1 file)", ["scan", str(lora), "--metadata-only",
                                                         "--bank", "bank.safetensors"], 1.0)):
            took = wall(guard_cmd + args, work)
            print(f"{label}: {took:.2f} s (goal < {goal} s; {took / bare:.1f}x the bare interpreter)")

        guard = Guard(Bank.load(work / "bank.safetensors"), Policy.load(), encoder)
        words = "a knight in silver armour rides across a misty valley at dawn, oil painting, ".split()
        per_char = {}
        for chars in (250, 500, 1000, 2000, 4000):
            text = ""
            while len(text) < chars:
                text += words[len(text) % len(words)] + " "
            text = text[:chars]
            guard.check_prompt(text)  # warm
            runs = max(3, 2000 // chars * 3)
            start = time.perf_counter()
            for _ in range(runs):
                guard.check_prompt(text)
            took = (time.perf_counter() - start) / runs
            per_char[chars] = took / chars
            print(f"check_prompt, {chars:>5} characters: {took * 1e3:7.2f} ms ({per_char[chars] * 1e6:.2f} µs/char)")
        print(f"cost per character, 4,000 vs 250 characters: {per_char[4000] / per_char[250]:.2f}x (linear: <= ~1)")
        huge = "a castle on a hill " * 55_000
        start = time.perf_counter()
        verdict = guard.check_prompt(huge)
        print(f"a {len(huge) / 1e6:.1f} MB prompt: {verdict.action.value} ({verdict.findings[0].signal.value}) in "
              f"{(time.perf_counter() - start) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
