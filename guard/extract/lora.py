"""LoRA weight fingerprints: effective weight deltas, sketched (layer naming: `guard.extract.lora_keys`).

A fingerprint is what stays when everything cosmetic changes: it is computed from each
adapted layer's effective update ΔW (kohya ``lora_down/lora_up/alpha``, LyCORIS LoCon with a
Tucker core ``lora_mid``, PEFT ``lora_A/lora_B``,
diffusers' pre-PEFT ``…processor.to_q_lora.down``/``….lora.down``,
LyCORIS LoHa ``(w1a@w1b)⊙(w2a@w2b)``, LoKr Kronecker, full ``diff``), under a layer name
normalised across naming families, and sketched to ``K×K`` numbers with random projections
seeded by the layer's shape: ``S = R_outᵀ ΔW R_in`` (for low-rank layers
computed as ``(R_outᵀ up)(down R_in)`` without forming ΔW). Each sketch is scaled to unit
length, so re-scaling alpha, rank or the whole file changes nothing, and fp16/bf16 casts or
small noise change it little. Metadata never enters it.

DoRA's magnitude vector is not part of the fingerprint (its direction update is).

The arithmetic is numpy on one thread: the fingerprint runs while another thread is still
hashing the file, and a multi-threaded BLAS/OpenMP pool would fight that thread for the cores.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import threading
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from guard.extract.lora_keys import upgrade_layer_name

K = 8  # sketch side: K*K numbers per layer
SAMPLE = 64  # rows and columns of ΔW a sketch looks at (a window placed by the layer shape)
#: Names the sketch recipe; stored with every fingerprint, so a change of recipe never
#: compares incomparable sketches (a takedown list then needs the files taken down again).
SCHEME = f"window{SAMPLE}-k{K}"
def delta_sketch(name: str, parts: Mapping[str, np.ndarray]) -> tuple[np.ndarray, float] | None:
    """``(unit-length K*K sketch of a layer's ΔW, the layer's energy)``, or ``None`` when the
    parts do not form one. The energy (squared length, estimated for the whole ΔW from its
    window) is before alpha/rank scaling (see `layer_scale`).
    """
    p = {k: np.asarray(v, dtype=np.float32) for k, v in parts.items()}
    if "mid" in p and "down" in p:
        # LyCORIS LoCon with Tucker: 1x1 down, [r, r, k, k] core, 1x1 up. The core folds into
        # down exactly (a 1x1 convolution, then a kxk one, is one kxk convolution).
        mid, down = p["mid"], p["down"].reshape(p["down"].shape[0], -1)
        if mid.ndim != 4 or mid.shape[1] != down.shape[0]:
            return None
        p["down"] = np.einsum("abhw,bi->aihw", mid, down)
    if "up" in p and "down" in p:
        up, down = p["up"].reshape(p["up"].shape[0], -1), p["down"].reshape(p["down"].shape[0], -1)
        if up.shape[1] != down.shape[0]:
            return None
        shape = up.shape[0], down.shape[1]
        (r0, r_out), (c0, r_in) = _windows(*shape)
        sketch = (r_out.T @ up[r0:r0 + len(r_out)]) @ (down[:, c0:c0 + len(r_in)] @ r_in)
    else:
        delta = _dense_delta(p)
        if delta is None:
            return None
        shape = delta.shape[0], delta.shape[1]
        (r0, r_out), (c0, r_in) = _windows(*shape)
        sketch = r_out.T @ delta[r0:r0 + len(r_out), c0:c0 + len(r_in)] @ r_in
    with np.errstate(all="ignore"):
        norm = float(np.linalg.norm(sketch))
    if not math.isfinite(norm):  # NaN and Inf in the weights always reach the sketch
        raise ValueError(f"layer {name}: tensor with NaN or infinite values")
    if norm == 0:
        return None
    return (sketch / norm).reshape(-1).astype(np.float32), norm * norm * _area(*shape)


def _area(rows: int, cols: int) -> float:
    """A window's squared sketch length times this estimates the whole layer's (up to a
    constant): the window holds ``min(rows, SAMPLE) * min(cols, SAMPLE)`` of its entries."""
    return rows * cols / (min(rows, SAMPLE) * min(cols, SAMPLE))


def layer_scale(alpha: np.ndarray | None, rank: int) -> float:
    """kohya/LyCORIS scale ΔW by ``alpha / rank``; a file without alpha applies ΔW as stored."""
    if alpha is None or alpha.size != 1 or rank <= 0:
        return 1.0
    value = float(np.asarray(alpha, dtype=np.float64).reshape(-1)[0])
    return abs(value) / rank if math.isfinite(value) and value != 0 else 1.0


def _dense_delta(p: Mapping[str, np.ndarray]) -> np.ndarray | None:
    def flat(a: np.ndarray) -> np.ndarray:
        return a.reshape(a.shape[0], -1)

    if all(k in p for k in ("w1a", "w1b", "w2a", "w2b")):  # LoHa
        w1, w2 = flat(p["w1a"]) @ flat(p["w1b"]), flat(p["w2a"]) @ flat(p["w2b"])
        return w1 * w2 if w1.shape == w2.shape else None
    k1 = p.get("k1") if "k1" in p else (flat(p["k1a"]) @ flat(p["k1b"]) if "k1a" in p and "k1b" in p else None)
    k2 = p.get("k2") if "k2" in p else (flat(p["k2a"]) @ flat(p["k2b"]) if "k2a" in p and "k2b" in p else None)
    if k1 is not None and k2 is not None:  # LoKr
        return np.kron(flat(k1), flat(k2))
    if "diff" in p:
        return flat(p["diff"])
    return None


@functools.lru_cache(maxsize=256)
def _windows(rows: int, cols: int):
    """``((first row, R_out), (first column, R_in))`` for a ``rows x cols`` ΔW.

    Gaussian projections over a window of at most `SAMPLE` consecutive rows and columns
    (placed by a seed): the sketch stays a fixed function of ΔW, so copies match, while large
    layers cost a fraction of a full pass and the window can be gathered in one slice.
    Seeded by shape alone (layers are compared by name anyway), so they can be cached.
    """
    seed = int.from_bytes(hashlib.sha256(f"guard-lora-sketch:{rows}:{cols}".encode()).digest()[:8], "little")
    import torch  # its generator: the stored fingerprints depend on it

    g = torch.Generator().manual_seed(seed)
    n_rows, n_cols = min(rows, SAMPLE), min(cols, SAMPLE)
    r0 = int(torch.randint(0, rows - n_rows + 1, (1,), generator=g))
    c0 = int(torch.randint(0, cols - n_cols + 1, (1,), generator=g))
    r_out, r_in = torch.randn(n_rows, K, generator=g).numpy(), torch.randn(n_cols, K, generator=g).numpy()
    return (r0, r_out), (c0, r_in)


@dataclass(frozen=True)
class KeepDown:
    """How much of a taken-down LoRA an upload reproduces (`Fingerprint.contains`)."""

    score: float  # what the policy's thresholds compare: agreement beyond chance (1 = a copy), times coverage
    agreement: float  # mean sketch cosine over the layers both adapt, weighted by the taken-down energy
    coverage: float  # share of the taken-down update on layers the upload adapts too
    shared: int  # layers both adapt
    chance: float  # agreement two unrelated files reach by chance (4 standard errors)


NO_MATCH = KeepDown(0.0, 0.0, 0.0, 0, 0.0)


@dataclass(frozen=True)
class Fingerprint:
    """Per-layer unit sketches of a LoRA's effective weight updates, and each update's energy.

    ``energy`` is the squared length of each layer's sketch after alpha/rank scaling: only
    its proportions between layers are used, so re-scaling the whole file changes nothing.
    Fingerprints stored before energies were kept weigh every layer the same.
    """

    layers: Mapping[str, np.ndarray]
    scheme: str = SCHEME
    energy: Mapping[str, float] | None = None

    def contains(self, taken_down: "Fingerprint", substantial: float = 0.5) -> KeepDown:
        """Is a substantial part of ``taken_down``'s work in this file?

        Only layers both files adapt are compared, so extra layers (junk, padding, another
        LoRA's layers) never dilute a match and a subset of the layers is still the same
        work. The shared layers' sketch cosines are averaged with `_match_weights`. Two
        unrelated files agree by chance about ``1 / (K * sqrt(n))`` for n equally weighted
        layers: the score is the agreement beyond four times that, rescaled so that a copy
        still scores 1, and scaled down when the shared layers carry less than
        ``substantial`` of the taken-down update. Sketches of different schemes are not
        comparable: no match.
        """
        if not self.layers or not taken_down.layers or self.scheme != taken_down.scheme:
            return NO_MATCH
        shared = [n for n in taken_down.layers if n in self.layers]
        if not shared:
            return NO_MATCH
        w = _match_weights(taken_down, self, shared)
        covered = taken_down._share(shared)
        if covered <= 0 or w is None:
            return NO_MATCH
        cos = np.einsum("ij,ij->i", np.stack([taken_down.layers[n] for n in shared]),
                        np.stack([self.layers[n] for n in shared])).astype(np.float64)
        agreement = float(np.dot(w, cos))
        chance = min(0.5, 4.0 * math.sqrt(float(np.dot(w, w))) / K)
        reach = min(1.0, covered / substantial) if substantial > 0 else 1.0
        score = max(0.0, min(1.0, (agreement - chance) / (1.0 - chance))) * reach
        return KeepDown(score, agreement, covered, len(shared), chance)

    def similarity(self, other: "Fingerprint") -> float:
        """The larger containment score either way round (for comparing two uploads)."""
        return max(self.contains(other).score, other.contains(self).score)

    def _share(self, names) -> float:
        """The share of this file's update carried by ``names`` (by layer count without energies)."""
        if not self.energy:
            return len(names) / len(self.layers)
        total = sum(self.energy.get(n, 0.0) for n in self.layers)
        if not math.isfinite(total) or total <= 0:
            return len(names) / len(self.layers)
        return sum(self.energy.get(n, 0.0) for n in names) / total


    def to_bytes(self) -> bytes:
        names = sorted(self.layers)
        matrix = np.stack([self.layers[n] for n in names]).astype(np.float16) if names else np.zeros((0, K * K))
        head = {"k": K, "scheme": self.scheme, "layers": names}
        if self.energy is not None:
            head["energy"] = [float(self.energy.get(n, 0.0)) for n in names]
        data = json.dumps(head).encode()
        return len(data).to_bytes(4, "little") + data + matrix.astype(np.float16).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Fingerprint":
        n = int.from_bytes(data[:4], "little")
        head = json.loads(data[4:4 + n])
        matrix = np.frombuffer(data[4 + n:], dtype=np.float16).reshape(len(head["layers"]), head["k"] ** 2)
        names = [upgrade_layer_name(name) for name in head["layers"]]
        energy = dict(zip(names, head["energy"])) if "energy" in head else None
        # Fingerprints stored before schemes were named used 128x128 windows.
        return cls({name: matrix[i].astype(np.float32) for i, name in enumerate(names)},
                   head.get("scheme", "window128-k8"), energy)


def _match_weights(taken_down: Fingerprint, upload: Fingerprint, shared: list[str]) -> np.ndarray | None:
    """Per shared layer, how strongly the taken-down update shows in the upload's: the ratio
    of their lengths (the matched filter for "upload = a·taken-down + other work"; equal
    for a copy at any scale), normalised to sum 1. Layers the taken-down file barely
    changed weigh little; so do layers an upload filled with other work. Equal weights when
    either file has no stored energies."""
    if not taken_down.energy or not upload.energy:
        return np.full(len(shared), 1.0 / len(shared))
    t = np.sqrt(np.array([taken_down.energy.get(n, 0.0) for n in shared], dtype=np.float64))
    u = np.sqrt(np.array([upload.energy.get(n, 0.0) for n in shared], dtype=np.float64))
    with np.errstate(all="ignore"):
        ratio = np.where(u > 0, t / u, 0.0)
    ratio = np.where(np.isfinite(ratio), ratio, 0.0)
    total = ratio.sum()
    return ratio / total if total > 0 else None


def fingerprint(layers: Mapping[str, Mapping[str, str]], load: Callable[[str], np.ndarray]) -> Fingerprint:
    """Fingerprint from grouped layers; ``load(key)`` returns a tensor (an array) by its key."""
    sketches: dict[str, np.ndarray] = {}
    energy: dict[str, float] = {}
    for name, parts in layers.items():
        tensors = {part: load(key) for part, key in parts.items() if part != "dora"}
        found = delta_sketch(name, {p: t for p, t in tensors.items() if p != "alpha"})
        if found is not None:
            sketches[name], raw = found
            energy[name] = raw * layer_scale(tensors.get("alpha"), _rank(tensors)) ** 2
    return Fingerprint(sketches, energy=energy)


def _rank(tensors: Mapping[str, np.ndarray]) -> int:
    for part in ("down", "w1b", "k2b"):
        if part in tensors and tensors[part].ndim:
            return int(tensors[part].shape[0])
    return 0


#: The unsigned word type of each float dtype a LoRA uses: tensors are gathered as raw words.
WORDS = {"F16": np.uint16, "BF16": np.uint16, "F32": np.uint32, "F64": np.uint64}


def fingerprint_buffer(layers: Mapping[str, Mapping[str, str]], infos: Mapping, data: memoryview,
                       data_start: int, load: Callable[[str], np.ndarray]) -> Fingerprint:
    """The same fingerprint as `fingerprint`, vectorised over a file held in memory.

    Low-rank layers of one shape and dtype (a LoRA has hundreds of layers but a handful of
    shapes) are gathered from the raw bytes with one fancy index per group and sketched in one
    batched product; other layers go through ``load`` one by one.
    """
    groups: dict[tuple, list[tuple[str, int, int]]] = {}
    rest = {}
    for name, parts in layers.items():
        up, down = infos.get(parts.get("up")), infos.get(parts.get("down"))
        if up is None or down is None or len(parts.keys() - _LOW_RANK_PARTS) or up.dtype != down.dtype \
                or up.dtype not in WORDS or not up.shape or not down.shape:
            rest[name] = parts
            continue
        out, rank = up.shape[0], math.prod(up.shape[1:])
        rank_down, width = down.shape[0], math.prod(down.shape[1:])
        size = np.dtype(WORDS[up.dtype]).itemsize
        a, b = data_start + up.begin, data_start + down.begin
        if rank != rank_down or a % size or b % size or 0 in (out, rank, width):
            rest[name] = parts
            continue
        groups.setdefault((up.dtype, out, rank, width), []).append((name, a // size, b // size))
    loose = fingerprint(rest, load)
    sketches, energy = dict(loose.layers), dict(loose.energy or {})
    for (dtype, out, rank, width), group in groups.items():
        word = np.dtype(WORDS[dtype])
        raw = np.frombuffer(data, dtype=word, count=len(data) // word.itemsize)
        (r0, r_out), (c0, r_in) = _windows(out, width)
        n_out, n_in = r_out.shape[0], r_in.shape[0]
        # Only the sampled windows are copied: stacked from views into the buffer, then cast
        # to float32 in one go, both into reused per-thread memory (no page faults).
        n, a, b = len(group), n_out * rank, rank * n_in
        words, floats = _workspace(n * (a + b), word)
        np.stack([raw[u + r0 * rank:u + (r0 + n_out) * rank] for _, u, _ in group], out=words[:n * a].reshape(n, a))
        np.stack([raw[d:d + rank * width].reshape(rank, width)[:, c0:c0 + n_in] for _, _, d in group],
                 out=words[n * a:].reshape(n, rank, n_in))
        floats = as_float32(words, dtype, out=floats)
        ups, downs = floats[:n * a].reshape(n, n_out, rank), floats[n * a:].reshape(n, rank, n_in)
        with np.errstate(all="ignore"):  # NaN/Inf weights are reported below
            flat = ((r_out.T @ ups) @ (downs @ r_in)).reshape(n, -1)  # [L, K*K]
            norms = np.linalg.norm(flat, axis=1)
        finite = np.isfinite(norms)
        if not finite.all():  # NaN and Inf in the weights always reach the sketch
            raise ValueError(f"layer {group[int(np.argmin(finite))][0]}: tensor with NaN or infinite values")
        unit = flat / np.maximum(norms, 1e-30)[:, None]
        for i, (name, _, _) in enumerate(group):
            if norms[i] > 0:
                sketches[name] = unit[i]
                alpha = _scalar(data, data_start, infos.get(layers[name].get("alpha")))
                energy[name] = float(norms[i]) ** 2 * _area(out, width) * layer_scale(alpha, rank) ** 2
    return Fingerprint(sketches, energy=energy)


_LOW_RANK_PARTS = {"up", "down", "alpha", "dora"}


def _scalar(data: memoryview, data_start: int, info) -> np.ndarray | None:
    """A one-element float tensor (an alpha) read straight from the buffer; ``None`` otherwise.

    A LoRA has an alpha per layer: going through the general loader for each costs more
    than the sketches of a whole shape group."""
    if info is None or info.dtype not in WORDS or info.end - info.begin != np.dtype(WORDS[info.dtype]).itemsize:
        return None
    raw = bytes(data[data_start + info.begin:data_start + info.end])
    if info.dtype == "BF16":
        return np.frombuffer(b"\0\0" + raw, dtype="<f4")  # bfloat16 is float32's upper half
    return np.frombuffer(raw, dtype={"F16": "<f2", "F32": "<f4", "F64": "<f8"}[info.dtype])


def as_float32(words: np.ndarray, dtype: str, out: np.ndarray | None = None) -> np.ndarray:
    """Raw tensor words (see `WORDS`) of a float dtype as float32 (into ``out`` when given).

    Half-precision words are cast by torch (SIMD, ~9x numpy's cast) in slices below its
    parallel grain, so the cast stays on this thread instead of waking an OpenMP pool.
    """
    if dtype in ("F32", "F64"):
        cast = words.view(np.float32 if dtype == "F32" else np.float64)
        if out is None:
            return cast.astype(np.float32)
        np.copyto(out.reshape(cast.shape), cast, casting="same_kind")
        return out.reshape(cast.shape)
    import torch

    half = torch.from_numpy(np.ascontiguousarray(words).view(np.int16).reshape(-1))
    half = half.view(torch.float16 if dtype == "F16" else torch.bfloat16)
    target = torch.from_numpy(out.reshape(-1)) if out is not None else torch.empty(half.shape, dtype=torch.float32)
    for start in range(0, len(half), _CAST_SLICE):
        target[start:start + _CAST_SLICE].copy_(half[start:start + _CAST_SLICE])
    return target.numpy().reshape(words.shape)


_CAST_SLICE = 16384  # elements; torch parallelises element-wise work from 32768 (at::internal::GRAIN_SIZE)
_local = threading.local()


def _workspace(count: int, word: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """``count`` raw words and ``count`` float32s of per-thread memory, reused between calls."""
    have = getattr(_local, "workspace", None)
    if have is None or len(have[1]) < count:
        have = _local.workspace = (np.empty(count * 8, dtype=np.uint8), np.empty(count, dtype=np.float32))
    return have[0][:count * word.itemsize].view(word), have[1][:count]
