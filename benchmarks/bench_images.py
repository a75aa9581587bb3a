"""End-to-end `Guard.check_images` throughput over bare encoder-forward throughput.

Both are measured in one run at the same batch size on the same model: a ViT-B-32 with
RANDOM weights (FLOP-equivalent timing only; its similarities mean nothing). End-to-end
means from image files on disk (512x512 PNG, as uploads arrive) to verdicts: decode,
EXIF, preprocessing, forward, matching against a 10,000-exemplar bank, policy. The bare
figure is the forward pass alone on already-preprocessed tensors. Both are timed in
interleaved passes (three by default) and the best of each is kept. Goal: ratio >= 0.8.

    python benchmarks/bench_images.py [--images 96] [--batch 32] [--passes 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import open_clip
import torch

from guard import Bank, Guard, Policy
from guard.bank import Character, Entry
from guard.bank.character import Reference
from guard.encoders.openclip import OpenClipEncoder
from guard.extract.images import open_rgb
from guard.testing.synthetic import character, render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Random init on purpose, for timing only: never a path a real spec can take.
    model, _, preprocess = open_clip.create_model_and_transforms(
        args.arch, pretrained=None, device=device, precision="fp16" if device == "cuda" else "fp32")
    encoder = OpenClipEncoder(model, preprocess, open_clip.get_tokenizer(args.arch),
                              f"{args.arch} (random init, timing only)", False, torch.device(device), args.batch)

    g = torch.Generator().manual_seed(0)
    entries = []
    for i in range(1000):
        emb = torch.nn.functional.normalize(torch.randn(10, encoder.dim, generator=g), dim=1).half()
        refs = tuple(Reference(f"r{j}.png", f"{i:060d}{j:04d}") for j in range(10))
        entries.append(Entry(Character(id=f"c{i}", references=refs), emb))
    bank = Bank(encoder.name, encoder.dim, entries)
    guard = Guard(bank, Policy.load(), encoder)

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.images):
            path = Path(tmp) / f"upload{i}.png"
            render(character(10_000 + i), 0, 512).save(path)
            paths.append(str(path))

        tensors = torch.stack([preprocess(open_rgb(p)[0]) for p in paths])
        encoder.forward_images(tensors[: args.batch])  # warm-up
        guard.check_images(paths[: args.batch])

        def bare_pass() -> float:
            start = time.perf_counter()
            for s in range(0, len(tensors), args.batch):
                encoder.forward_images(tensors[s:s + args.batch])
            return len(tensors) / (time.perf_counter() - start)

        def e2e_pass() -> float:
            start = time.perf_counter()
            verdicts.extend(guard.check_images(paths))
            return len(paths) / (time.perf_counter() - start)

        # Interleaved passes, best of three each: this machine's timings drift from pass to pass.
        verdicts: list = []
        passes = [(bare_pass(), e2e_pass()) for _ in range(args.passes)]
        bare, e2e = (max(column) for column in zip(*passes))

    assert len(verdicts) == len(paths) * args.passes and not any(v.error for v in verdicts)
    print(f"device: {device}, {torch.get_num_threads()} threads; {args.arch} random init (timing only); "
          f"{args.images} PNG files 512x512; batch {args.batch}; bank 10,000 exemplars")
    print(f"bare encoder forward : {bare:8.1f} images/s")
    print(f"check_images e2e     : {e2e:8.1f} images/s")
    print(f"ratio e2e / bare     : {e2e / bare:8.2f}  (goal >= 0.8)")


if __name__ == "__main__":
    main()
