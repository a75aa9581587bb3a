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
    if not all(torch.isfinite(t).all() for t in p.values()):
        raise ValueError(f"layer {name}: tensor with NaN or infinite values")
    if "up" in p and "down" in p:
        up, down = p["up"].reshape(p["up"].shape[0], -1), p["down"].reshape(p["down"].shape[0], -1)
        if up.shape[1] != down.shape[0]:
            return None
        r_out, r_in = _projections(up.shape[0], down.shape[1])
        sketch = (r_out.T @ up) @ (down @ r_in)
    else:
        delta = _dense_delta(p)
        if delta is None:
            return None
        r_out, r_in = _projections(delta.shape[0], delta.shape[1])
        sketch = r_out.T @ delta @ r_in
    norm = torch.linalg.vector_norm(sketch)
    if not torch.isfinite(norm) or norm == 0:
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
def _projections(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Seeded by shape alone (layers are compared by name anyway), so they can be cached.
    seed = int.from_bytes(hashlib.sha256(f"guard-lora-sketch:{rows}:{cols}".encode()).digest()[:8], "little")
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, K, generator=g), torch.randn(cols, K, generator=g)


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
    sketches = {}
    for name, parts in layers.items():
        sketch = delta_sketch(name, {part: load(key) for part, key in parts.items() if part != "dora"})
        if sketch is not None:
            sketches[name] = sketch
    return Fingerprint(sketches)
