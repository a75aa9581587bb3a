"""Generation overhead of the diffusers hooks, and how early the early abort stops.

On the tiny Stable Diffusion pipeline (CPU, random weights): wall time of protected vs
unprotected generation measured in the same run, alternating the two (every loader gate,
the admitted-weights check, prompt screening of every prompt argument, the denoiser guard,
the output check with the tiny encoder). Goal: ratio <= 1.05 on CPU; with a GPU, <= 1.02 at
SD-1.5 size. The same ratio for the tiny SDXL, SD3 and Flux pipelines follows (their
generations take a few ms, so the fixed cost of the screen weighs more there). Then the share
of denoising steps executed when the early abort fires, at the default preview size, on a
generation that reproduces a protected image (its step-4 preview is in the bank; checks
every 2 steps). Goal: <= 40% of steps. 64 px by default: the tiny VAE downsamples only 2x,
so at 128 px the UNet attends over 4,096 latent tokens and one image takes ~10 s on CPU.

    python benchmarks/bench_generation.py [--steps 20] [--runs 9] [--size 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from guard import Guard, Policy  # noqa: E402
from guard.bank import build_bank  # noqa: E402
from guard.encoders import load_encoder  # noqa: E402
from guard.adapters.diffusers import GuardBlocked, protect  # noqa: E402
from tests.tiny_pipeline import FAMILIES, preview_at, tiny_pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    call = dict(num_inference_steps=args.steps, height=args.size, width=args.size)
    encoder = load_encoder("tiny-test")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plain = tiny_pipeline(folder)
        _, preview = preview_at(plain, "a lighthouse", 7, step=4, size=64, **call)
        refs = folder / "refs" / "beacon"
        refs.mkdir(parents=True)
        (refs / "character.toml").write_text('aliases = ["Beacon Boy"]\n[thresholds.clip_image]\nflag = 0.995\n'
                                             'block = 0.998\n')
        Image.fromarray((preview * 255).round().astype(np.uint8)).save(refs / "preview.png")
        bank = build_bank(folder / "refs", encoder)
        guard = Guard(bank, Policy.load(), encoder)
        protected = protect(tiny_pipeline(folder), guard)

        run = {"sd15": (plain, protected, call)}
        for name, (make, family_call) in FAMILIES.items():
            if name != "sd15":
                run[name] = (make(folder / name), protect(make(folder / name), guard),
                             {**family_call, "num_inference_steps": args.steps})
        ratios = {name: _paired(*pipes, args.runs) for name, pipes in run.items()}

        aborting = protect(tiny_pipeline(folder), guard, early_abort_every=2)  # default preview size
        calls = []
        aborting.unet.register_forward_hook(lambda *a: calls.append(1))
        step = None
        try:
            aborting("a lighthouse", generator=torch.Generator().manual_seed(7), **call)
        except GuardBlocked as blocked:
            step = blocked.step

    print(f"tiny SD pipeline on CPU, {args.size}px, {args.steps} steps, tiny test encoder")
    for name, (bare_t, guarded_t, ratio) in ratios.items():
        print(f"{name:<5}: {bare_t * 1000:8.1f} ms unprotected, {guarded_t * 1000:8.1f} ms protected per image, "
              f"ratio {ratio:.3f} (median of {args.runs} alternating pairs; goal <= 1.05)")
    if step is None:
        print("early abort : did not fire")
    else:
        print(f"early abort : fired at step {step} of {args.steps}: {len(calls) / args.steps:.0%} of denoising "
              f"steps executed (goal <= 40%)")


def _paired(bare, guarded, call: dict, runs: int) -> tuple[float, float, float]:
    """Median times and the median of per-pair ratios: each pair runs back to back, in
    alternating order, so that this machine's drift touches both sides alike."""
    def timed(pipe, seed):
        start = time.perf_counter()
        pipe("a dog in a field", generator=torch.Generator().manual_seed(seed), **call)
        return time.perf_counter() - start

    timed(bare, 0), timed(guarded, 0)  # warm-up
    pairs = []
    for seed in range(runs):
        if seed % 2:
            g = timed(guarded, seed)
            pairs.append((timed(bare, seed), g))
        else:
            pairs.append((timed(bare, seed), timed(guarded, seed)))
    return (statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs),
            statistics.median(p[1] / p[0] for p in pairs))


if __name__ == "__main__":
    main()
