"""LoRA structure: naming families, effective weight deltas, and weight fingerprints.

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
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

K = 8  # sketch side: K*K numbers per layer
SAMPLE = 64  # rows and columns of ΔW a sketch looks at (a window placed by the layer shape)
#: Names the sketch recipe; stored with every fingerprint, so a change of recipe never
#: compares incomparable sketches (a takedown list then needs the files taken down again).
SCHEME = f"window{SAMPLE}-k{K}"
_PREFIXES = [  # naming family prefix -> canonical prefix
    ("lora_unet_", "unet_"), ("lora_te1_", "text_encoder_"), ("lora_te2_", "text_encoder_2_"),
    ("lora_te_", "text_encoder_"), ("base_model.model.", "unet."), ("unet.", "unet."),
    ("text_encoder_2.", "text_encoder_2."), ("text_encoder.", "text_encoder."), ("transformer.", "transformer."),
]
_PARTS = {
    "lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid", "lora_A.weight": "down", "lora_B.weight": "up",
    "lora_A.default.weight": "down", "lora_B.default.weight": "up", "alpha": "alpha",
    "hada_w1_a": "w1a", "hada_w1_b": "w1b", "hada_w2_a": "w2a", "hada_w2_b": "w2b",
    "lokr_w1": "k1", "lokr_w1_a": "k1a", "lokr_w1_b": "k1b", "lokr_w2": "k2", "lokr_w2_a": "k2a",
    "lokr_w2_b": "k2b", "diff": "diff", "dora_scale": "dora", "lora_magnitude_vector": "dora",
    "lora_magnitude_vector.default_0": "dora",
    # diffusers before PEFT (0.14-0.24): LoRACompatibleLinear/Conv, and the text encoder's patched layers
    "lora.down.weight": "down", "lora.up.weight": "up",
    "lora_linear_layer.down.weight": "down", "lora_linear_layer.up.weight": "up",
}
#: diffusers' first LoRA format (``unet.save_attn_procs``): the adapted projection is named
#: by the attention processor that held it, ``….attn1.processor.to_q_lora.down.weight``.
_ATTN_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_SUFFIX = re.compile("|".join(re.escape("." + s) + "$" for s in sorted(_PARTS, key=len, reverse=True)))


def canonical_layer(prefix: str) -> str:
    """The layer name every naming family maps to: ``unet_down_blocks_0_..._to_q``."""
    for family, canonical in _PREFIXES:
        if prefix.startswith(family):
            prefix = canonical + prefix[len(family):]
            break
    else:
        prefix = "unet." + prefix  # PEFT files of a bare UNet carry no component prefix
    name = prefix.replace(".", "_")
    if name.startswith(_LDM_PREFIXES):
        return _from_ldm(name)
    if flux := _FLUX_BLOCK.match(name):
        return _from_flux(name, *flux.groups())
    if sd3 := _SD3_BLOCK.match(name):
        return _from_sd3(name, *sd3.groups())
    return name


# The original (LDM/SGM) UNet layout that kohya's SDXL LoRAs name, mapped onto the diffusers
# layout that PEFT files name: two resnets (+ attentions) and a downsampler per down block,
# three resnets (+ attentions) and an upsampler per up block.
_LDM_PREFIXES = ("unet_input_blocks_", "unet_middle_block_", "unet_output_blocks_", "unet_time_embed_",
                 "unet_label_emb_", "unet_out_")
_LDM_BLOCK = re.compile(r"unet_(input|output)_blocks_(\d+)_(\d+)(?:_(.+))?$")
_LDM_MIDDLE = re.compile(r"unet_middle_block_([012])_(.+)$")
_LDM_RESNET = {"in_layers_2": "conv1", "emb_layers_1": "time_emb_proj", "out_layers_3": "conv2",
               "skip_connection": "conv_shortcut"}
_LDM_OTHER = {"unet_input_blocks_0_0": "unet_conv_in", "unet_time_embed_0": "unet_time_embedding_linear_1",
              "unet_time_embed_2": "unet_time_embedding_linear_2", "unet_label_emb_0_0": "unet_add_embedding_linear_1",
              "unet_label_emb_0_2": "unet_add_embedding_linear_2", "unet_out_2": "unet_conv_out"}


def _from_ldm(name: str) -> str:
    if name in _LDM_OTHER:
        return _LDM_OTHER[name]
    if m := _LDM_MIDDLE.match(name):
        part, rest = int(m.group(1)), m.group(2)
        if part == 1:
            return f"unet_mid_block_attentions_0_{rest}"
        return f"unet_mid_block_resnets_{part // 2}_{_LDM_RESNET.get(rest, rest)}"
    m = _LDM_BLOCK.match(name)
    if not m or m.group(4) is None:
        return name
    side, index, sub, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    if side == "input":
        block, position = divmod(index - 1, 3)
        if position == 2:
            return f"unet_down_blocks_{block}_downsamplers_0_conv" if (sub, rest) == (0, "op") else name
        where = f"unet_down_blocks_{block}"
    else:
        block, position = divmod(index, 3)
        where = f"unet_up_blocks_{block}"
        if sub > 0 and rest == "conv":
            return f"{where}_upsamplers_0_conv"
    if sub == 0:
        return f"{where}_resnets_{position}_{_LDM_RESNET.get(rest, rest)}"
    return f"{where}_attentions_{position}_{rest}" if sub == 1 else name


# Flux's original layout (kohya's and ComfyUI's LoRAs) mapped onto the diffusers one (PEFT
# LoRAs). The original fuses q, k, v (and, in single blocks, the MLP input) into one layer;
# `split_fused` cuts such a layer into per-projection parts "#0", "#1", … first.
_FLUX_BLOCK = re.compile(r"(?:unet|transformer)_(?:diffusion_model_)?(double|single)_blocks_(\d+)_(.+)$")
_FLUX_DOUBLE = {"img_attn_qkv#0": "attn_to_q", "img_attn_qkv#1": "attn_to_k", "img_attn_qkv#2": "attn_to_v",
                "txt_attn_qkv#0": "attn_add_q_proj", "txt_attn_qkv#1": "attn_add_k_proj",
                "txt_attn_qkv#2": "attn_add_v_proj", "img_attn_proj": "attn_to_out_0", "txt_attn_proj": "attn_to_add_out",
                "img_mlp_0": "ff_net_0_proj", "img_mlp_2": "ff_net_2", "txt_mlp_0": "ff_context_net_0_proj",
                "txt_mlp_2": "ff_context_net_2", "img_mod_lin": "norm1_linear", "txt_mod_lin": "norm1_context_linear"}
_FLUX_SINGLE = {"linear1#0": "attn_to_q", "linear1#1": "attn_to_k", "linear1#2": "attn_to_v", "linear1#3": "proj_mlp",
                "linear2": "proj_out", "modulation_lin": "norm_linear"}
#: Fused layer -> the share of its output rows each part takes (q, k, v; and the 4x-wide MLP).
_FUSED = {"img_attn_qkv": (1, 1, 1), "txt_attn_qkv": (1, 1, 1), "linear1": (1, 1, 1, 4)}

# SD3's original (MMDiT) layout, the same way: each joint block's image ("x") and text
# ("context") halves fuse q, k, v; SD3.5's second image attention (attn2) too.
_SD3_BLOCK = re.compile(r"(?:unet|transformer)_(?:diffusion_model_)?joint_blocks_(\d+)_(x_block|context_block)_(.+)$")
_SD3_X = {"attn_qkv#0": "attn_to_q", "attn_qkv#1": "attn_to_k", "attn_qkv#2": "attn_to_v",
          "attn_proj": "attn_to_out_0", "attn2_qkv#0": "attn2_to_q", "attn2_qkv#1": "attn2_to_k",
          "attn2_qkv#2": "attn2_to_v", "attn2_proj": "attn2_to_out_0", "mlp_fc1": "ff_net_0_proj",
          "mlp_fc2": "ff_net_2", "adaLN_modulation_1": "norm1_linear"}
_SD3_CONTEXT = {"attn_qkv#0": "attn_add_q_proj", "attn_qkv#1": "attn_add_k_proj", "attn_qkv#2": "attn_add_v_proj",
                "attn_proj": "attn_to_add_out", "mlp_fc1": "ff_context_net_0_proj", "mlp_fc2": "ff_context_net_2",
                "adaLN_modulation_1": "norm1_context_linear"}
_SD3_FUSED = {"attn_qkv": (1, 1, 1), "attn2_qkv": (1, 1, 1)}
_FUSED_ENDINGS = tuple("_" + name for name in (*_FUSED, *_SD3_FUSED))


def _from_flux(name: str, kind: str, block: str, rest: str) -> str:
    target = (_FLUX_DOUBLE if kind == "double" else _FLUX_SINGLE).get(rest)
    if target is None:
        return name
    return f"transformer_{'transformer_blocks' if kind == 'double' else 'single_transformer_blocks'}_{block}_{target}"


def _from_sd3(name: str, block: str, half: str, rest: str) -> str:
    target = (_SD3_X if half == "x_block" else _SD3_CONTEXT).get(rest)
    return name if target is None else f"transformer_transformer_blocks_{block}_{target}"


def _fused_shares(layer: str) -> tuple[int, ...] | None:
    if m := _FLUX_BLOCK.match(layer):
        return _FUSED.get(m.group(3))
    if m := _SD3_BLOCK.match(layer):
        return _SD3_FUSED.get(m.group(3))
    return None


def split_fused(infos: Mapping[str, Any]) -> Mapping[str, Any]:
    """The tensors with each fused Flux or SD3 layer (``…img_attn.qkv``, ``…linear1``, ``…attn.qkv``) replaced by
    per-projection layers ``…qkv#0``, ``#1``, …: the up matrix's rows cut into parts, the
    down matrix and alpha shared. Other tensors, and tables with no fused layer, unchanged."""
    out = None
    for key, info in infos.items():
        found = layer_part(key)
        if not found or not found[0].endswith(_FUSED_ENDINGS):  # the common case, kept cheap
            continue
        shares = _fused_shares(found[0])
        if shares is None:
            continue
        prefix, part = split_key(key)
        suffix = key[len(prefix):]
        parts = [info] * len(shares)
        if part == "up":
            rows = info.shape[0] if info.shape else 0
            unit, extra = divmod(rows, sum(shares))
            if extra or not unit or (info.end - info.begin) % rows:
                continue  # not a shape this layer can have: left whole
            row_bytes, start, parts = (info.end - info.begin) // rows, info.begin, []
            for share in shares:
                size = share * unit
                parts.append(info._replace(shape=(size, *info.shape[1:]), begin=start, end=start + size * row_bytes))
                start += size * row_bytes
        out = dict(infos) if out is None else out
        del out[key]
        out.update({f"{prefix}#{j}{suffix}": piece for j, piece in enumerate(parts)})
    return infos if out is None else out


def split_key(key: str) -> tuple[str, str] | None:
    """``(layer prefix, part)`` for a LoRA-family tensor key, else ``None``."""
    if m := _ATTN_PROCESSOR.search(key):
        projection = "to_out.0" if m.group(1) == "to_out" else m.group(1)
        return f"{key[:m.start()]}.{projection}", m.group(2)
    m = _SUFFIX.search(key)
    if not m:
        return None
    return key[: m.start()], _PARTS[m.group()[1:]]


def group_layers(keys) -> dict[str, dict[str, str]]:
    """Canonical layer -> {part: tensor key} for every LoRA-family key."""
    layers: dict[str, dict[str, str]] = {}
    for key in keys:
        found = layer_part(key)
        if found:
            layers.setdefault(found[0], {})[found[1]] = key
    return layers


def layer_part(key: str) -> tuple[str, str] | None:
    """``(canonical layer, part)`` for a LoRA-family tensor key, else ``None``.

    Cached for ordinary keys: a catalog's files share a few thousand key names.
    """
    return _layer_part_cached(key) if len(key) <= 256 else _layer_part(key)


def _layer_part(key: str) -> tuple[str, str] | None:
    split = split_key(key)
    return (canonical_layer(split[0]), split[1]) if split else None


_layer_part_cached = functools.lru_cache(maxsize=1 << 16)(_layer_part)


def delta_sketch(name: str, parts: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The unit-length K*K sketch of a layer's ΔW, or ``None`` when the parts do not form one.

    Alpha and rank only scale ΔW, so they drop out with the normalisation.
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
        (r0, r_out), (c0, r_in) = _windows(up.shape[0], down.shape[1])
        sketch = (r_out.T @ up[r0:r0 + len(r_out)]) @ (down[:, c0:c0 + len(r_in)] @ r_in)
    else:
        delta = _dense_delta(p)
        if delta is None:
            return None
        (r0, r_out), (c0, r_in) = _windows(delta.shape[0], delta.shape[1])
        sketch = r_out.T @ delta[r0:r0 + len(r_out), c0:c0 + len(r_in)] @ r_in
    with np.errstate(all="ignore"):
        norm = float(np.linalg.norm(sketch))
    if not math.isfinite(norm):  # NaN and Inf in the weights always reach the sketch
        raise ValueError(f"layer {name}: tensor with NaN or infinite values")
    if norm == 0:
        return None
    return (sketch / norm).reshape(-1).astype(np.float32)


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
    g = torch.Generator().manual_seed(seed)  # torch's generator: the stored fingerprints depend on it
    n_rows, n_cols = min(rows, SAMPLE), min(cols, SAMPLE)
    r0 = int(torch.randint(0, rows - n_rows + 1, (1,), generator=g))
    c0 = int(torch.randint(0, cols - n_cols + 1, (1,), generator=g))
    r_out, r_in = torch.randn(n_rows, K, generator=g).numpy(), torch.randn(n_cols, K, generator=g).numpy()
    return (r0, r_out), (c0, r_in)


@dataclass(frozen=True)
class Fingerprint:
    """Per-layer unit sketches of a LoRA's effective weight updates."""

    layers: Mapping[str, np.ndarray]
    scheme: str = SCHEME

    def similarity(self, other: "Fingerprint") -> float:
        """Mean sketch cosine over shared layers, counting unshared layers as 0: in [0, 1].

        Sketches of different schemes (window, projections) are not comparable: 0.
        """
        if not self.layers or not other.layers or self.scheme != other.scheme:
            return 0.0
        shared = self.layers.keys() & other.layers.keys()
        total = sum(float(np.dot(self.layers[n], other.layers[n])) for n in shared)
        return max(0.0, total / max(len(self.layers), len(other.layers)))

    def to_bytes(self) -> bytes:
        names = sorted(self.layers)
        matrix = np.stack([self.layers[n] for n in names]).astype(np.float16) if names else np.zeros((0, K * K))
        head = json.dumps({"k": K, "scheme": self.scheme, "layers": names}).encode()
        return len(head).to_bytes(4, "little") + head + matrix.astype(np.float16).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Fingerprint":
        n = int.from_bytes(data[:4], "little")
        head = json.loads(data[4:4 + n])
        matrix = np.frombuffer(data[4 + n:], dtype=np.float16).reshape(len(head["layers"]), head["k"] ** 2)
        # Fingerprints stored before schemes were named used 128x128 windows.
        return cls({name: matrix[i].astype(np.float32) for i, name in enumerate(head["layers"])},
                   head.get("scheme", "window128-k8"))


def fingerprint(layers: Mapping[str, Mapping[str, str]], load: Callable[[str], np.ndarray]) -> Fingerprint:
    """Fingerprint from grouped layers; ``load(key)`` returns a tensor (an array) by its key."""
    sketches: dict[str, np.ndarray] = {}
    for name, parts in layers.items():
        sketch = delta_sketch(name, {part: load(key) for part, key in parts.items() if part not in ("dora", "alpha")})
        if sketch is not None:
            sketches[name] = sketch
    return Fingerprint(sketches)


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
    sketches = dict(fingerprint(rest, load).layers)
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
    return Fingerprint(sketches)


_LOW_RANK_PARTS = {"up", "down", "alpha", "dora"}


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
