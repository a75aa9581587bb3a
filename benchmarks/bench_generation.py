"""Generation overhead of the diffusers hooks, and how early the early abort stops.

On the tiny Stable Diffusion pipeline (CPU, random weights): wall time of protected vs
unprotected generation measured in the same run (prompt screening + output check with the
tiny encoder), and the share of denoising steps executed when the early abort fires on a
generation that reproduces a protected image (its step-4 preview is in the bank; checks every
2 steps). Goal: <= 40% of steps. With a GPU, the same overhead for an SD-1.5-sized
random-weight pipeline at 512 px / 25 steps is the figure to compare against 2%; this script
runs the tiny pipeline wherever it is. 64 px by default: the tiny VAE downsamples only 2x,
so at 128 px the UNet attends over 4,096 latent tokens and one image takes ~10 s on CPU.

    python benchmarks/bench_generation.py [--steps 20] [--runs 5] [--size 64]
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
from guard.integrations.diffusers import GuardBlocked, protect  # noqa: E402
from tests.tiny_pipeline import preview_at, tiny_pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
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

        def timed(pipe, prompt, seed):
            start = time.perf_counter()
            pipe(prompt, generator=torch.Generator().manual_seed(seed), **call)
            return time.perf_counter() - start

        timed(plain, "a dog", 0), timed(protected, "a dog", 0)
        # Alternate the two, so that drift in this machine's speed touches both alike.
        pairs = [(timed(plain, "a dog in a field", s), timed(protected, "a dog in a field", s))
                 for s in range(args.runs)]
        plain_t, prot_t = (statistics.median(p[i] for p in pairs) for i in (0, 1))

        aborting = protect(tiny_pipeline(folder), guard, early_abort_every=2, preview_size=64)
        calls = []
        aborting.unet.register_forward_hook(lambda *a: calls.append(1))
        step = None
        try:
            aborting("a lighthouse", generator=torch.Generator().manual_seed(7), **call)
        except GuardBlocked as blocked:
            step = blocked.step

    print(f"tiny SD pipeline on CPU, {args.size}px, {args.steps} steps, tiny test encoder")
    print(f"unprotected : {plain_t * 1000:8.1f} ms per image")
    print(f"protected   : {prot_t * 1000:8.1f} ms per image   ratio {prot_t / plain_t:.2f} "
          f"(prompt screening + output check)")
    if step is None:
        print("early abort : did not fire")
    else:
        print(f"early abort : fired at step {step} of {args.steps}: {len(calls) / args.steps:.0%} of denoising "
              f"steps executed (goal <= 40%)")


if __name__ == "__main__":
    main()
