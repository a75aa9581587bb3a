"""LoRA fingerprint robustness matrix.

For several SD1.5-shaped kohya LoRAs, each transformation a re-uploader might apply is
written to a real file and fingerprinted through `inspect_model`; the similarity to the
original must reach the policy's block threshold. Every original is also compared with
>= 200 unrelated LoRAs of the same architecture: none may reach the flag threshold.

    python benchmarks/bench_fingerprint.py [--bases 5] [--unrelated 200] [--rank 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from bench_scan import sd15_layers  # noqa: E402
from guard.extract.lora_keys import canonical_layer  # noqa: E402
from guard.extract.model_file import inspect_model  # noqa: E402
from guard.policy import Policy  # noqa: E402
from guard.verdict import Signal, Surface  # noqa: E402


def weights(seed: int, rank: int):
    g = torch.Generator().manual_seed(seed)
    return {name: ((torch.randn(out, rank, generator=g) * 0.02), torch.randn(rank, inp, generator=g) * 0.1)
            for name, out, inp in sd15_layers()}


def kohya(w, alpha, dtype=torch.float16):
    t = {}
    for name, (up, down) in w.items():
        t[f"{name}.lora_up.weight"] = up.to(dtype).contiguous()
        t[f"{name}.lora_down.weight"] = down.to(dtype).contiguous()
        t[f"{name}.alpha"] = torch.tensor(float(alpha)).to(dtype)
    return t


def peft(w, dtype=torch.float32):
    t = {}
    for name, (up, down) in w.items():
        # kohya "lora_unet_down_blocks_0_..." -> diffusers "unet.down_blocks.0. ..." (same canonical layer)
        key = canonical_layer(name).replace("unet_", "unet.", 1).replace("text_encoder_", "text_encoder.", 1)
        t[f"{key}.lora_B.weight"] = up.to(dtype).contiguous()
        t[f"{key}.lora_A.weight"] = down.to(dtype).contiguous()
    return t


def transformations(w, rank):
    pad = {k: (torch.cat([u, torch.zeros(u.shape[0], rank)], 1), torch.cat([d, torch.zeros(rank, d.shape[1])], 0))
           for k, (u, d) in w.items()}
    noisy = {k: (u + 0.01 * u.std() * torch.randn_like(u), d + 0.01 * d.std() * torch.randn_like(d))
             for k, (u, d) in w.items()}
    kept = dict(list(w.items())[: int(len(w) * 0.9)])
    meta = {"ss_output_name": "totally_original", "ss_tag_frequency": "{}"}
    return {
        "metadata stripped": (kohya(w, rank / 2), None),
        "metadata rewritten": (kohya(w, rank / 2), meta),
        "fp16 -> fp32": (kohya(w, rank / 2, torch.float32), None),
        "fp16 -> bf16": (kohya(w, rank / 2, torch.bfloat16), None),
        "kohya -> PEFT names": (peft(w), None),
        "rank 2x (zero-padded), alpha 2x": (kohya(pad, rank), None),
        "up x4, down x1/4": (kohya({k: (u * 4, d / 4) for k, (u, d) in w.items()}, rank / 2), None),
        "alpha x8": (kohya(w, rank * 4), None),
        "Gaussian noise 1% of std": (kohya(noisy, rank / 2), None),
        "10% of layers dropped": (kohya(kept, rank / 2), None),
        "all of the above at once": (peft({k: noisy[k] for k in kept}, torch.bfloat16), meta),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", type=int, default=5)
    parser.add_argument("--unrelated", type=int, default=200)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    policy = Policy.load()
    block = policy.layers(Signal.FINGERPRINT, Surface.MODEL_FILE)["block"]
    flag = policy.layers(Signal.FINGERPRINT, Surface.MODEL_FILE)["flag"]

    with tempfile.TemporaryDirectory() as tmp:
        def fp(tensors, meta, name):
            path = Path(tmp) / f"{name}.safetensors"
            save_file(tensors, str(path), metadata=meta)
            report = inspect_model(path)
            path.unlink()
            return report.fingerprint

        rows: dict[str, list[float]] = {}
        originals = []
        for b in range(args.bases):
            w = weights(b, args.rank)
            original = fp(kohya(w, args.rank / 2), {"ss_output_name": f"base{b}"}, f"base{b}")
            originals.append(original)
            for label, (tensors, meta) in transformations(w, args.rank).items():
                rows.setdefault(label, []).append(original.similarity(fp(tensors, meta, "t")))
        unrelated = [fp(kohya(weights(10_000 + i, args.rank), args.rank / 2), None, f"u{i}")
                     for i in range(args.unrelated)]
        cross = [o.similarity(u) for o in originals for u in unrelated]

    print(f"{args.bases} SD1.5-shaped kohya LoRAs (264 layers, rank {args.rank}); match = similarity >= "
          f"{block} (policy block); false match = >= {flag} (policy flag)")
    total = matched = 0
    for label, sims in rows.items():
        total += len(sims)
        matched += sum(s >= block for s in sims)
        print(f"  {label:34s} matched {sum(s >= block for s in sims)}/{len(sims)}   min similarity {min(sims):.4f}")
    false = sum(s >= flag for s in cross)
    print(f"matched: {matched}/{total} ({matched / total:.0%})")
    print(f"false matches: {false} of {len(cross)} comparisons with {args.unrelated} unrelated LoRAs "
          f"(max similarity {max(cross):.4f})")


if __name__ == "__main__":
    main()
