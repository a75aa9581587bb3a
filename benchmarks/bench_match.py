"""Matcher latency: a batch of 64 queries against 200,000 x 768 fp16 exemplars on CPU.

Prints the guard's `EmbeddingIndex.search` time next to the plain float32 approach
(one ``[B, M]`` product, then a per-character max with scatter_reduce) measured in the
same run, and checks both return the same matches, on two synthetic banks: random unit
rows (every unrelated score near 0) and a clustered, CLIP-like bank (a shared direction and
a decaying spectrum; unrelated scores up to ~0.7). The index is exact on any bank; how much
its coarse stage dismisses depends on the bank, so the share of rows it kept is printed too.
For comparison: one read of the fp16 matrix and the bare full-width bf16 / int8 products.
Goal: <= 20 ms per batch.

``--bank FILE`` measures your own bank instead (e.g. real CLIP embeddings), with 64 of its
exemplars as the queries.

    python benchmarks/bench_match.py [--exemplars 200000] [--dim 768] [--batch 64] [--bank FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from guard.match.embedding import CHUNK_ROWS, KERNELS, EmbeddingIndex
from guard.policy import Policy
from guard.testing.synthetic import clustered_embeddings
from guard.verdict import Signal, Surface


def timed(fn, repeat: int) -> tuple[float, object]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, result


def synthetic_banks(exemplars: int, dim: int, batch: int, per_character: int):
    """name -> (exemplars fp16, owner, queries): random rows and a clustered, CLIP-like bank,
    each batch holding four near-copies of exemplars (true matches)."""
    owner = torch.arange(exemplars) // per_character
    picks = torch.tensor([0, 1234, 99_999, exemplars - 1]) % exemplars
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(exemplars, dim, generator=g), dim=1).half()
    queries = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g), dim=1)
    queries[:4] = emb[picks].float()
    clustered = clustered_embeddings(exemplars + batch, dim, per_character, seed=1)
    near = clustered[exemplars:].clone()
    near[:4] = torch.nn.functional.normalize(clustered[picks] + 0.05 * near[4:8], dim=1)
    return {"random rows": (emb, owner, queries), "clustered, CLIP-like": (clustered[:exemplars].half(), owner, near)}


def own_bank(path: str, batch: int):
    from guard.bank import Bank

    emb, owner, _ = Bank.load(path).image_matrix()
    picks = torch.linspace(0, emb.shape[0] - 1, batch).long()
    return {path: (emb, owner, emb[picks].float())}


def measure(emb: torch.Tensor, owner: torch.Tensor, queries: torch.Tensor, floor: float, repeat: int,
            kernel: str | None = None, device: str = "cpu") -> dict:
    """One index (``kernel`` forced through GUARD_MATCH_KERNEL, or as measured) against the
    plain product, in this run."""
    if kernel:
        os.environ["GUARD_MATCH_KERNEL"] = kernel
    try:
        started = time.perf_counter()
        index = EmbeddingIndex(emb, owner, device=device)
        build_s = time.perf_counter() - started
    finally:
        os.environ.pop("GUARD_MATCH_KERNEL", None)
    guard_ms, found = timed(lambda: index.search(queries, floor), repeat)
    one_ms, _ = timed(lambda: index.search(queries[:1], floor), repeat)
    emb32, n_owners = emb.to(device, torch.float32), int(owner.max()) + 1
    qd, od = queries.to(device), owner.to(device)

    def plain():
        sim = qd @ emb32.T
        best = torch.full((queries.shape[0], n_owners), -2.0, device=device).scatter_reduce(
            1, od.expand(queries.shape[0], -1), sim, "amax")
        return best.cpu()  # synchronises a GPU: the time is the answer's

    plain_ms, per_owner = timed(plain, max(3, repeat // 3))
    agree = all({m.owner for m in row} == set((per_owner[i] >= floor).nonzero().flatten().tolist())
                for i, row in enumerate(found))
    kept = index.coarse_kept(queries, floor)
    return {"guard": guard_ms, "one": one_ms, "plain": plain_ms, "agree": agree, "build": build_s,
            "matches": sum(map(len, found)), "kept": None if kept is None else kept / emb.shape[0],
            "kernel": index.kernel}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exemplars", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--per-character", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--bank", help="measure this bank file instead of the synthetic ones")
    parser.add_argument("--device", default="cpu", help="cuda: the index on the GPU (its fp16 kernel), against the "
                                                        "plain fp32 product on the same device")
    args = parser.parse_args()

    floor = Policy.load().lowest_threshold(Signal.CLIP_IMAGE, Surface.GENERATED_IMAGE, None)
    banks = own_bank(args.bank, args.batch) if args.bank else \
        synthetic_banks(args.exemplars, args.dim, args.batch, args.per_character)
    results = {name: measure(*bank, floor, args.repeat, device=args.device) for name, bank in banks.items()}
    from guard.match.embedding import int8_product_available

    runnable = [k for k in KERNELS if (k != "int8" or int8_product_available()) and (k != "fp16" or args.device != "cpu")]
    if args.device != "cpu":
        runnable = ["fp16"]
    per_kernel = {(name, k): measure(*bank, floor, max(3, args.repeat // 3), k, args.device)
                  for name, bank in banks.items() for k in runnable if k != results[name]["kernel"]}

    # For comparison: one read of the fp16 matrix, and the bare full-width products at the
    # lowest precisions this CPU's kernels offer (bf16; int8 where torch has _int_mm).
    emb, _, queries = next(iter(banks.values()))

    def chunked(matrix: torch.Tensor, product) -> None:  # cache-sized row blocks, as the index uses
        for start in range(0, matrix.shape[0], CHUNK_ROWS):
            product(matrix[start:start + CHUNK_ROWS])

    slow = max(3, args.repeat // 3)
    read_ms, _ = timed(lambda: emb.view(torch.int16).amax(0), slow)
    bf16, qb = emb.to(torch.bfloat16), queries.to(torch.bfloat16).T.contiguous()
    bf16_ms, _ = timed(lambda: chunked(bf16, lambda block: block @ qb), slow)
    int8_ms = None
    if hasattr(torch, "_int_mm"):
        e8 = (emb.float() * 127).round().to(torch.int8)
        q8 = (queries * 127).round().to(torch.int8).T.contiguous()
        int8_ms, _ = timed(lambda: chunked(e8, lambda block: torch._int_mm(block, q8)), slow)

    from guard.match.embedding import kernel_for

    print(f"device: {args.device if args.device != 'cpu' else 'CPU'}, {torch.get_num_threads()} CPU threads; batch {args.batch}, "
          f"floor {floor:.2f} (default policy); kernel chosen on this CPU: {kernel_for(banks[next(iter(banks))][0].shape[1])}"
          " (GUARD_MATCH_KERNEL=int8|coarse32|fp32|fp16 forces one)")
    for name, (emb, owner, _), r in ((n, banks[n], results[n]) for n in banks):
        kept = "no coarse stage" if r["kept"] is None else f"coarse stage kept {r['kept']:.1%} of the rows"
        print(f"{name} bank ({emb.shape[0]} x {emb.shape[1]}, {int(owner.max()) + 1} characters): "
              f"guard EmbeddingIndex.search {r['guard']:.1f} ms per batch (goal <= 20 ms); "
              f"plain fp32 product + max {r['plain']:.1f} ms; speed-up {r['plain'] / r['guard']:.2f}x; "
              f"{r['matches']} matches, the same: {r['agree']}; one query alone {r['one']:.1f} ms; "
              f"{kept}; index built in {r['build']:.2f} s; kernel {r['kernel']} (chosen)")
        for kernel in runnable:
            k = r if kernel == r["kernel"] else per_kernel[(name, kernel)]
            print(f"  kernel {kernel:<8}{' (chosen)' if kernel == r['kernel'] else '         '} "
                  f"{k['guard']:8.1f} ms per batch, {k['plain'] / k['guard']:5.2f}x the plain fp32 product "
                  f"({k['plain']:.1f} ms in the same run); same matches: {k['agree']}; built in {k['build']:.2f} s")
    print(f"for comparison: reading the fp16 matrix once {read_ms:.1f} ms; bare full-width product "
          f"bf16 {bf16_ms:.1f} ms" + (f", int8 {int8_ms:.1f} ms" if int8_ms is not None else ""))


if __name__ == "__main__":
    main()
