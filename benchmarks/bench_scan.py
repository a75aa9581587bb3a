"""Model-file scan speed.

1. Header-only scan rate over >= 1,000 LoRA files (warm page cache): `scan_files` with
   ``metadata_only=True`` as `guard scan` runs it by default — header parse, format
   identification, metadata audit, verdict — best of three; also one process alone and
   three fresh pools of one worker per core, start-up included. Goal: >= 5,000 files/s.
2. Full scan (SHA-256 + tensor SHA-256 + AutoV1 + LoRA fingerprint + metadata audit)
   throughput divided by the throughput of one plain SHA-256 pass over the same files
   (``hashlib.file_digest``), measured in the same run, best of three passes each. Goal:
   >= 0.8. Printed again with BLAKE3 added.

The full-scan files are shaped like real kohya SD1.5 LoRAs (264 layers, rank 32: ~72 MB).

    python benchmarks/bench_scan.py [--small 1000] [--large 10] [--rank 32]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from guard import Bank, Guard, Policy  # noqa: E402
from guard.extract.hashes import _blake3  # noqa: E402
from guard.adapters.scan import _POOL_FROM_HEADERS, default_workers, scan_files  # noqa: E402


def write_lora(path: Path, seed: int, layers: int, width: int, rank: int) -> None:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(layers):
        name = f"lora_unet_up_blocks_{i // 30}_attentions_{i % 3}_transformer_blocks_{i % 10}_attn1_to_q_{i}"
        tensors[f"{name}.lora_down.weight"] = (torch.randn(rank, width, generator=g) * 0.1).half()
        tensors[f"{name}.lora_up.weight"] = (torch.randn(width, rank, generator=g) * 0.01).half()
        tensors[f"{name}.alpha"] = torch.tensor(rank / 2).half()
    meta = {"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1",
            "ss_output_name": f"lora_{seed}", "ss_tag_frequency": json.dumps(
                {"10_subject": {"1girl": 30, "solo": 28, "smile": 12, "outdoors": 9, "looking at viewer": 7}}),
            "ss_dataset_dirs": json.dumps({"10_subject": {"n_repeats": 10, "img_count": 30}})}
    save_file(tensors, str(path), metadata=meta)


def sd15_layers():
    """(kohya name, out, in) of every layer a kohya SD1.5 LoRA adapts: 192 UNet + 72 text encoder."""
    blocks = [("down_blocks_0_attentions_0", 320), ("down_blocks_0_attentions_1", 320),
              ("down_blocks_1_attentions_0", 640), ("down_blocks_1_attentions_1", 640),
              ("down_blocks_2_attentions_0", 1280), ("down_blocks_2_attentions_1", 1280),
              ("mid_block_attentions_0", 1280)] + \
             [(f"up_blocks_{b}_attentions_{a}", w) for b, w in ((1, 1280), (2, 640), (3, 320)) for a in range(3)]
    layers = []
    for block, d in blocks:
        t = f"lora_unet_{block}_transformer_blocks_0"
        layers += [(f"lora_unet_{block}_proj_in", d, d), (f"lora_unet_{block}_proj_out", d, d)]
        layers += [(f"{t}_attn1_to_{x}", d, d) for x in ("q", "k", "v", "out_0")]
        layers += [(f"{t}_attn2_to_q", d, d), (f"{t}_attn2_to_k", d, 768), (f"{t}_attn2_to_v", d, 768),
                   (f"{t}_attn2_to_out_0", d, d), (f"{t}_ff_net_0_proj", 8 * d, d), (f"{t}_ff_net_2", d, 4 * d)]
    for i in range(12):
        e = f"lora_te_text_model_encoder_layers_{i}"
        layers += [(f"{e}_self_attn_{x}_proj", 768, 768) for x in ("q", "k", "v", "out")]
        layers += [(f"{e}_mlp_fc1", 3072, 768), (f"{e}_mlp_fc2", 768, 3072)]
    return layers


def write_sd15_lora(path: Path, seed: int, rank: int) -> None:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, out, inp in sd15_layers():
        tensors[f"{name}.lora_down.weight"] = (torch.randn(rank, inp, generator=g) * 0.1).half()
        tensors[f"{name}.lora_up.weight"] = (torch.randn(out, rank, generator=g) * 0.01).half()
        tensors[f"{name}.alpha"] = torch.tensor(rank / 2).half()
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", "ss_output_name": f"l{seed}",
                                            "ss_tag_frequency": json.dumps({"10_x": {"1girl": 30, "solo": 20}})})


def rate(fn, items) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=10, help="SD1.5-shaped kohya LoRAs for the full scan")
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()

    root = Path(__file__).resolve().parent.parent
    guard = Guard(Bank.load(root / "embeddings" / "demo-bank.safetensors"), Policy.load())
    with tempfile.TemporaryDirectory() as tmp:
        small = []
        for i in range(args.small):
            path = Path(tmp) / f"small_{i}.safetensors"
            write_lora(path, i, layers=24, width=64, rank=4)
            small.append(path)
        large = []
        for i in range(args.large):
            path = Path(tmp) / f"large_{i}.safetensors"
            write_sd15_lora(path, 10_000 + i, rank=args.rank)
            large.append(path)
        total_bytes = sum(p.stat().st_size for p in large)

        check_header = lambda p: guard.check_model_file(p, metadata_only=True)  # noqa: E731
        rate(check_header, small[:50])  # warm-up (imports, translate tables)
        header_rate = max(rate(check_header, small) for _ in range(3))
        bank_path = root / "embeddings" / "demo-bank.safetensors"

        def scan(files: list, workers: int | None) -> float:  # a fresh pool each time: start-up included
            start = time.perf_counter()
            list(scan_files(files, {"bank": bank_path}, workers=workers, check={"metadata_only": True},
                            guard=guard))
            return len(files) / (time.perf_counter() - start)

        names = [str(p) for p in small]
        default_rate = max(scan(names, None) for _ in range(3))
        pool_rates = sorted(scan(names, os.cpu_count() or 1) for _ in range(3))

        def plain_sha(path: Path) -> str:
            # hashlib's own file hashing (readinto one reused buffer): steadier, and a little
            # faster, than hashing fresh 8 MiB reads, whose cost swings with the allocator.
            with open(path, "rb") as fh:
                return hashlib.file_digest(fh, "sha256").hexdigest()

        no_b3 = Guard(guard.bank, Policy.from_dict({"model": {"blake3": False}}))
        rate(plain_sha, large[:2])
        guard.check_model_file(large[0])
        # Interleaved passes, best of three each: this machine's timings drift from pass to pass.
        passes = [(rate(plain_sha, large), rate(no_b3.check_model_file, large), rate(guard.check_model_file, large))
                  for _ in range(3)]
        sha_rate, full_rate_no_b3, full_rate = (max(column) for column in zip(*passes))
        verdict = guard.check_model_file(large[0])

    mb = total_bytes / len(large) / 1e6
    print(f"CPU, {os.cpu_count()} cores; blake3 {'on' if _blake3 else 'not installed'}; warm page cache")
    chosen = default_workers(len(small), metadata_only=True)
    print(f"header-only scan : {default_rate:9.0f} files/s over {len(small)} LoRA files as `guard scan "
          f"--metadata-only` runs them ({chosen} process{'es' if chosen > 1 else ''}; goal >= 5,000)")
    print(f"  one process {header_rate:.0f}/s; a pool of {os.cpu_count()} worker processes, start-up "
          f"included: {', '.join(f'{r:.0f}' for r in pool_rates)}/s (worth it from {_POOL_FROM_HEADERS} files)")
    print(f"plain SHA-256    : {sha_rate * mb:9.0f} MB/s over {len(large)} files of {mb:.1f} MB")
    print(f"full scan        : {full_rate_no_b3 * mb:9.0f} MB/s  ratio {full_rate_no_b3 / sha_rate:.2f} (goal >= 0.8): "
          f"SHA-256 + tensor SHA-256 + AutoV1 + fingerprint ({verdict.facts.get('fingerprint_layers')} layers) "
          f"+ metadata audit")
    print(f"  with BLAKE3 too: {full_rate * mb:8.0f} MB/s  ratio {full_rate / sha_rate:.2f} (the default when "
          f"blake3 is installed; policy [model] blake3)")


if __name__ == "__main__":
    main()
