"""LoRA structure: naming families, effective weight deltas, and weight fingerprints.

A fingerprint is what stays when everything cosmetic changes: it is computed from each
adapted layer's effective update ΔW (kohya ``lora_down/lora_up/alpha``, PEFT ``lora_A/lora_B``,
LyCORIS LoHa ``(w1a@w1b)⊙(w2a@w2b)``, LoKr Kronecker, full ``diff``), under a layer name
normalised across naming families, and sketched to ``K×K`` numbers with random projections
seeded by the layer's shape: ``S = R_outᵀ ΔW R_in`` (for low-rank layers
computed as ``(R_outᵀ up)(down R_in)`` without forming ΔW). Each sketch is scaled to unit
length, so re-scaling alpha, rank or the whole file changes nothing, and fp16/bf16 casts or
small noise change it little. Metadata never enters it.

DoRA's magnitude vector is not part of the fingerprint (its direction update is).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch

K = 8  # sketch side: K*K numbers per layer
SAMPLE = 128  # rows and columns of ΔW a sketch looks at (a window placed by the layer shape)
_PREFIXES = [  # naming family prefix -> canonical prefix
    ("lora_unet_", "unet_"), ("lora_te1_", "text_encoder_"), ("lora_te2_", "text_encoder_2_"),
    ("lora_te_", "text_encoder_"), ("base_model.model.", "unet."), ("unet.", "unet."),
    ("text_encoder_2.", "text_encoder_2."), ("text_encoder.", "text_encoder."), ("transformer.", "transformer."),
]
_PARTS = {
    "lora_down.weight": "down", "lora_up.weight": "up", "lora_A.weight": "down", "lora_B.weight": "up",
    "lora_A.default.weight": "down", "lora_B.default.weight": "up", "alpha": "alpha",
    "hada_w1_a": "w1a", "hada_w1_b": "w1b", "hada_w2_a": "w2a", "hada_w2_b": "w2b",
    "lokr_w1": "k1", "lokr_w1_a": "k1a", "lokr_w1_b": "k1b", "lokr_w2": "k2", "lokr_w2_a": "k2a",
    "lokr_w2_b": "k2b", "diff": "diff", "dora_scale": "dora", "lora_magnitude_vector": "dora",
    "lora_magnitude_vector.default_0": "dora",
}
_SUFFIX = re.compile("|".join(re.escape("." + s) + "$" for s in sorted(_PARTS, key=len, reverse=True)))


def canonical_layer(prefix: str) -> str:
    """The layer name every naming family maps to: ``unet_down_blocks_0_..._to_q``."""
    for family, canonical in _PREFIXES:
        if prefix.startswith(family):
            prefix = canonical + prefix[len(family):]
            break
    else:
        prefix = "unet." + prefix  # PEFT files of a bare UNet carry no component prefix
    return prefix.replace(".", "_")


def split_key(key: str) -> tuple[str, str] | None:
    """``(layer prefix, part)`` for a LoRA-family tensor key, else ``None``."""
    m = _SUFFIX.search(key)
    if not m:
        return None
    return key[: m.start()], _PARTS[m.group()[1:]]


def group_layers(keys) -> dict[str, dict[str, str]]:
    """Canonical layer -> {part: tensor key} for every LoRA-family key."""
    layers: dict[str, dict[str, str]] = {}
    for key in keys:
        split = split_key(key)
        if split:
            layers.setdefault(canonical_layer(split[0]), {})[split[1]] = key
    return layers


def delta_sketch(name: str, parts: Mapping[str, torch.Tensor]) -> np.ndarray | None:
    """The unit-length K*K sketch of a layer's ΔW, or ``None`` when the parts do not form one.

    Alpha and rank only scale ΔW, so they drop out with the normalisation.
    """
    p = {k: v.float() for k, v in parts.items()}
    if "up" in p and "down" in p:
        up, down = p["up"].reshape(p["up"].shape[0], -1), p["down"].reshape(p["down"].shape[0], -1)
        if up.shape[1] != down.shape[0]:
            return None
        (r0, r_out), (c0, r_in) = _windows(up.shape[0], down.shape[1])
        sketch = (r_out.T @ up[r0:r0 + len(r_out)]) @ (down[:, c0:c0 + len(r_in)] @ r_in)
    else:
        delta = _dense_delta(p)
        if delta is None:
            return None
        (r0, r_out), (c0, r_in) = _windows(delta.shape[0], delta.shape[1])
        sketch = r_out.T @ delta[r0:r0 + len(r_out), c0:c0 + len(r_in)] @ r_in
    norm = torch.linalg.vector_norm(sketch)
    if not torch.isfinite(norm):  # NaN and Inf in the weights always reach the sketch
        raise ValueError(f"layer {name}: tensor with NaN or infinite values")
    if norm == 0:
        return None
    return (sketch / norm).reshape(-1).numpy().astype(np.float32)


def _dense_delta(p: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    if all(k in p for k in ("w1a", "w1b", "w2a", "w2b")):  # LoHa
        w1 = p["w1a"].reshape(p["w1a"].shape[0], -1) @ p["w1b"].reshape(p["w1b"].shape[0], -1)
        w2 = p["w2a"].reshape(p["w2a"].shape[0], -1) @ p["w2b"].reshape(p["w2b"].shape[0], -1)
        return w1 * w2 if w1.shape == w2.shape else None
    k1 = p.get("k1") if "k1" in p else (p["k1a"] @ p["k1b"] if "k1a" in p and "k1b" in p else None)
    k2 = p.get("k2") if "k2" in p else (p["k2a"] @ p["k2b"].reshape(p["k2b"].shape[0], -1)
                                        if "k2a" in p and "k2b" in p else None)
    if k1 is not None and k2 is not None:  # LoKr
        return torch.kron(k1.reshape(k1.shape[0], -1), k2.reshape(k2.shape[0], -1))
    if "diff" in p:
        return p["diff"].reshape(p["diff"].shape[0], -1)
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
    g = torch.Generator().manual_seed(seed)
    n_rows, n_cols = min(rows, SAMPLE), min(cols, SAMPLE)
    r0 = int(torch.randint(0, rows - n_rows + 1, (1,), generator=g))
    c0 = int(torch.randint(0, cols - n_cols + 1, (1,), generator=g))
    return (r0, torch.randn(n_rows, K, generator=g)), (c0, torch.randn(n_cols, K, generator=g))


@dataclass(frozen=True)
class Fingerprint:
    """Per-layer unit sketches of a LoRA's effective weight updates."""

    layers: Mapping[str, np.ndarray]

    def similarity(self, other: "Fingerprint") -> float:
        """Mean sketch cosine over shared layers, counting unshared layers as 0: in [0, 1]."""
        if not self.layers or not other.layers:
            return 0.0
        shared = self.layers.keys() & other.layers.keys()
        total = sum(float(np.dot(self.layers[n], other.layers[n])) for n in shared)
        return max(0.0, total / max(len(self.layers), len(other.layers)))

    def to_bytes(self) -> bytes:
        names = sorted(self.layers)
        matrix = np.stack([self.layers[n] for n in names]).astype(np.float16) if names else np.zeros((0, K * K))
        head = json.dumps({"k": K, "layers": names}).encode()
        return len(head).to_bytes(4, "little") + head + matrix.astype(np.float16).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Fingerprint":
        n = int.from_bytes(data[:4], "little")
        head = json.loads(data[4:4 + n])
        matrix = np.frombuffer(data[4 + n:], dtype=np.float16).reshape(len(head["layers"]), head["k"] ** 2)
        return cls({name: matrix[i].astype(np.float32) for i, name in enumerate(head["layers"])})


def fingerprint(layers: Mapping[str, Mapping[str, str]], load: Callable[[str], torch.Tensor]) -> Fingerprint:
    """Fingerprint from grouped layers; ``load(key)`` returns a tensor by its key."""
    sketches: dict[str, np.ndarray] = {}
    for name, parts in layers.items():
        sketch = delta_sketch(name, {part: load(key) for part, key in parts.items() if part not in ("dora", "alpha")})
        if sketch is not None:
            sketches[name] = sketch
    return Fingerprint(sketches)


_RAW = {"F16": (np.uint16, 2), "BF16": (np.uint16, 2), "F32": (np.uint32, 4)}


def fingerprint_buffer(layers: Mapping[str, Mapping[str, str]], infos: Mapping, data: memoryview,
                       data_start: int, load: Callable[[str], torch.Tensor]) -> Fingerprint:
    """The same fingerprint as `fingerprint`, vectorised over a file held in memory.

    Low-rank layers of one shape and dtype (a LoRA has hundreds of layers but a handful of
    shapes) are gathered from the raw bytes with one fancy index per group and sketched in one
    batched product; other layers go through ``load`` one by one.
    """
    groups: dict[tuple, list[tuple[str, int, int]]] = {}
    rest = {}
    for name, parts in layers.items():
        up, down = infos.get(parts.get("up")), infos.get(parts.get("down"))
        if up is None or down is None or set(parts) - {"up", "down", "alpha", "dora"} or up.dtype != down.dtype \
                or up.dtype not in _RAW or not up.shape or not down.shape:
            rest[name] = parts
            continue
        out, rank = up.shape[0], int(np.prod(up.shape[1:]))
        rank_down, width = down.shape[0], int(np.prod(down.shape[1:]))
        size = _RAW[up.dtype][1]
        a, b = data_start + up.begin, data_start + down.begin
        if rank != rank_down or a % size or b % size or 0 in (out, rank, width):
            rest[name] = parts
            continue
        groups.setdefault((up.dtype, out, rank, width), []).append((name, a // size, b // size))
    sketches = dict(fingerprint(rest, load).layers)
    for (dtype, out, rank, width), group in groups.items():
        raw_type, size = _RAW[dtype]
        raw = np.frombuffer(data, dtype=raw_type, count=len(data) // size)
        (r0, r_out), (c0, r_in) = _windows(out, width)
        n_out, n_in = r_out.shape[0], r_in.shape[0]
        # Views into the buffer, stacked once: only the sampled windows are copied.
        ups = np.stack([raw[u + r0 * rank:u + (r0 + n_out) * rank] for _, u, _ in group])
        downs = np.stack([raw[d:d + rank * width].reshape(rank, width)[:, c0:c0 + n_in] for _, _, d in group])
        ups = _as_float(ups, dtype).reshape(len(group), n_out, rank)
        downs = _as_float(downs, dtype)
        batch = (r_out.T @ ups) @ (downs @ r_in)  # [L, K, K]
        flat = batch.reshape(len(group), -1)
        norms = torch.linalg.vector_norm(flat, dim=1, keepdim=True)
        finite = torch.isfinite(norms).reshape(-1)
        if not finite.all():  # NaN and Inf in the weights always reach the sketch
            bad = group[int((~finite).nonzero()[0])][0]
            raise ValueError(f"layer {bad}: tensor with NaN or infinite values")
        unit = (flat / norms.clamp_min(1e-30)).numpy()
        for i, (name, _, _) in enumerate(group):
            if float(norms[i]) > 0:
                sketches[name] = unit[i].astype(np.float32)
    return Fingerprint(sketches)


def _as_float(raw: np.ndarray, dtype: str) -> torch.Tensor:
    if dtype == "F16":
        return torch.from_numpy(raw.view(np.float16)).float()
    if dtype == "BF16":
        return torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16).float()
    return torch.from_numpy(raw.view(np.float32)).clone()
