"""Tiny SD1/SDXL/Flux-shaped LoRAs, the naming families that write them, and the recipes
people re-upload them with (keep-down tests and `benchmarks/bench_fingerprint.py`).

A LoRA here is ``{diffusers layer name: Layer}``, the name dotted with its component
(``unet.…``, ``text_encoder.…``, ``text_encoder_2.…``, ``transformer.…``). The architectures
keep the real layer names and block structure at reduced widths. The other layouts
(LDM/SGM UNet names, Flux's fused original names) come from ComfyUI's own key maps
(`comfy.utils.unet_to_diffusers` / `flux_to_diffusers`), so the files are named as
ComfyUI and kohya name them. The recipes re-implement, from their documented behaviour,
tools that do not install from the package index: sd-scripts' ``resize_lora``,
``merge_lora`` (factor sums, or ``--concat``) and ``svd_merge_lora``, and ComfyUI's LoraSave
(SVD of the model difference, 0.99-quantile clamp, fp16).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from guard.testing.comfyui import comfy_utils


@dataclass(frozen=True)
class Layer:
    up: torch.Tensor  # [out, rank]
    down: torch.Tensor  # [rank, in]
    alpha: float

    @property
    def delta(self) -> torch.Tensor:
        return (self.up.float() @ self.down.float()) * (self.alpha / self.up.shape[1])


@dataclass(frozen=True)
class Arch:
    name: str
    layers: tuple[tuple[str, int, int], ...]  # (diffusers name, out, in)
    spare: tuple[tuple[str, int, int], ...]  # real modules the LoRAs leave alone
    unet_config: dict | None = None  # ComfyUI's, for the LDM names
    flux_config: dict | None = None
    te_slots: tuple[str, ...] = ("text_encoder",)


def _transformer(t: str, d: int, ctx: int) -> list[tuple[str, int, int]]:
    return [*((f"{t}.attn1.{x}", d, d) for x in ("to_q", "to_k", "to_v", "to_out.0")),
            (f"{t}.attn2.to_q", d, d), (f"{t}.attn2.to_k", d, ctx), (f"{t}.attn2.to_v", d, ctx),
            (f"{t}.attn2.to_out.0", d, d), (f"{t}.ff.net.0.proj", 8 * d, d), (f"{t}.ff.net.2", d, 4 * d)]


def _clip(slot: str, layers: int, width: int) -> list[tuple[str, int, int]]:
    rows = []
    for i in range(layers):
        e = f"{slot}.text_model.encoder.layers.{i}"
        rows += [(f"{e}.self_attn.{x}_proj", width, width) for x in ("q", "k", "v", "out")]
        rows += [(f"{e}.mlp.fc1", 4 * width, width), (f"{e}.mlp.fc2", width, 4 * width)]
    return rows


def _unet(blocks: list[tuple[str, int, int]], ctx: int) -> list[tuple[str, int, int]]:
    rows = []
    for prefix, d, depth in blocks:
        rows += [(f"unet.{prefix}.proj_in", d, d), (f"unet.{prefix}.proj_out", d, d)]
        for t in range(depth):
            rows += _transformer(f"unet.{prefix}.transformer_blocks.{t}", d, ctx)
    return rows


@functools.cache
def sd1() -> Arch:
    widths, ctx = (64, 128, 256), 128
    blocks = [(f"down_blocks.{b}.attentions.{a}", widths[b], 1) for b in range(3) for a in range(2)]
    blocks += [("mid_block.attentions.0", widths[2], 1)]
    blocks += [(f"up_blocks.{b}.attentions.{a}", widths[3 - b], 1) for b in (1, 2, 3) for a in range(3)]
    spare = tuple((f"unet.down_blocks.{b}.resnets.0.time_emb_proj", widths[b], 256) for b in range(3)) + \
        (("unet.mid_block.resnets.0.time_emb_proj", widths[2], 256), ("unet.conv_in", widths[0], 4))
    config = {"num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
              "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
              "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1}
    return Arch("sd1", tuple(_unet(blocks, ctx) + _clip("text_encoder", 12, ctx)), spare, config)


@functools.cache
def sdxl() -> Arch:
    widths, ctx = (64, 128, 256), 160
    blocks = [(f"down_blocks.1.attentions.{a}", widths[1], 1) for a in range(2)]
    blocks += [(f"down_blocks.2.attentions.{a}", widths[2], 2) for a in range(2)]
    blocks += [("mid_block.attentions.0", widths[2], 2)]
    blocks += [(f"up_blocks.0.attentions.{a}", widths[2], 2) for a in range(3)]
    blocks += [(f"up_blocks.1.attentions.{a}", widths[1], 1) for a in range(3)]
    spare = tuple((f"unet.down_blocks.{b}.resnets.1.time_emb_proj", widths[b], 256) for b in range(3)) + \
        (("unet.up_blocks.2.resnets.0.time_emb_proj", widths[0], 256), ("unet.conv_out", 4, widths[0]))
    config = {"num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 1, 1, 2, 2],
              "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2], "transformer_depth_middle": 2}
    layers = _unet(blocks, ctx) + _clip("text_encoder", 2, 96) + _clip("text_encoder_2", 4, 128)
    return Arch("sdxl", tuple(layers), spare, config, te_slots=("text_encoder", "text_encoder_2"))


@functools.cache
def flux() -> Arch:
    h, double, single = 128, 2, 4
    rows = []
    for b in range(double):
        t = f"transformer.transformer_blocks.{b}"
        rows += [(f"{t}.attn.{x}", h, h) for x in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj",
                                                    "to_out.0", "to_add_out")]
        rows += [(f"{t}.ff.net.0.proj", 4 * h, h), (f"{t}.ff.net.2", h, 4 * h), (f"{t}.ff_context.net.0.proj", 4 * h, h),
                 (f"{t}.ff_context.net.2", h, 4 * h), (f"{t}.norm1.linear", 6 * h, h), (f"{t}.norm1_context.linear", 6 * h, h)]
    for b in range(single):
        t = f"transformer.single_transformer_blocks.{b}"
        rows += [(f"{t}.attn.{x}", h, h) for x in ("to_q", "to_k", "to_v")]
        rows += [(f"{t}.proj_mlp", 4 * h, h), (f"{t}.proj_out", h, 5 * h), (f"{t}.norm.linear", 3 * h, h)]
    spare = (("transformer.x_embedder", h, 64), ("transformer.context_embedder", h, 256),
             ("transformer.time_text_embed.timestep_embedder.linear_1", h, 256),
             ("transformer.time_text_embed.timestep_embedder.linear_2", h, h), ("transformer.proj_out", 64, h))
    config = {"depth": double, "depth_single_blocks": single, "hidden_size": h, "mlp_ratio": 4.0}
    return Arch("flux", tuple(rows), spare, flux_config=config, te_slots=())


ARCHS = {"sd1": sd1, "sdxl": sdxl, "flux": flux}


def make_lora(arch: Arch, seed: int, rank: int, spectrum: str = "flat", down_seed: int | None = None) -> dict:
    """Random LoRA weights (kohya's alpha = rank / 2). ``spectrum="decaying"`` gives each
    layer singular values falling as 1/(1+j), as trained LoRAs have; ``down_seed`` shares the
    down matrices with another LoRA (two trainings from the same initialisation seed)."""
    g = torch.Generator().manual_seed(seed)
    gd = torch.Generator().manual_seed(down_seed) if down_seed is not None else g
    decay = (1.0 / (1.0 + torch.arange(rank, dtype=torch.float32))) if spectrum == "decaying" else torch.ones(rank)
    out = {}
    for name, o, i in arch.layers:
        up = torch.randn(o, rank, generator=g) * 0.02 * decay
        down = torch.randn(rank, i, generator=gd) * 0.1
        out[name] = Layer(up, down, rank / 2)
    return out


# --- naming families ------------------------------------------------------------------------

def _component(name: str) -> tuple[str, str]:
    head, rest = name.split(".", 1)
    return head, rest


@functools.cache
def _ldm_names(arch_name: str) -> dict[str, str]:
    arch = ARCHS[arch_name]()
    utils = comfy_utils()
    if utils is None:
        raise RuntimeError("ComfyUI's source (../shared/vendor or GUARD_COMFYUI_SRC) and einops are needed")
    if arch.unet_config:
        mapping = utils.unet_to_diffusers(dict(arch.unet_config))
        return {k[:-len(".weight")]: v[:-len(".weight")] for k, v in mapping.items() if k.endswith(".weight")}
    mapping = utils.flux_to_diffusers(dict(arch.flux_config))
    out = {}
    for k, v in mapping.items():
        if not k.endswith(".weight"):
            continue
        if isinstance(v, tuple):
            if v[1] is None:
                continue
            out[k[:-len(".weight")]] = (v[0][:-len(".weight")], v[1][1], v[1][2])
        else:
            out[k[:-len(".weight")]] = v[:-len(".weight")]
    return out


def _original(lora: dict, arch: Arch) -> dict[str, Layer]:
    """The LoRA under the original (LDM or Flux) layer names, Flux's q/k/v(/mlp) fused into
    one layer as kohya and ComfyUI write them (up block-diagonal, downs stacked)."""
    names = _ldm_names(arch.name)
    plain, fused = {}, {}
    for name, layer in lora.items():
        head, rest = _component(name)
        if head not in ("unet", "transformer"):
            continue
        target = names.get(rest)
        if target is None:
            raise KeyError(f"{arch.name}: no original name for {rest}")
        if isinstance(target, tuple):
            fused.setdefault(target[0], []).append((target[1], layer))
        else:
            plain[target] = layer
    for key, parts in fused.items():
        parts.sort(key=lambda p: p[0])
        rows = sum(layer.up.shape[0] for _, layer in parts)
        ranks = [layer.up.shape[1] for _, layer in parts]
        up = torch.zeros(rows, sum(ranks))
        r0 = c0 = 0
        for _, layer in parts:
            up[r0:r0 + layer.up.shape[0], c0:c0 + layer.up.shape[1]] = layer.up * (layer.alpha / layer.up.shape[1])
            r0, c0 = r0 + layer.up.shape[0], c0 + layer.up.shape[1]
        down = torch.cat([layer.down for _, layer in parts])
        plain[key] = Layer(up, down, float(sum(ranks)))  # scale 1: each part's scale is in its rows
    return plain


def _te(lora: dict, arch: Arch):
    return {name: layer for name, layer in lora.items() if _component(name)[0].startswith("text_encoder")}


def _kohya_te_prefix(arch: Arch, slot: str) -> str:
    if len(arch.te_slots) == 1:
        return "lora_te_"
    return {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}[slot]


def _put(tensors: dict, key: str, layer: Layer, dtype, suffix=("lora_up.weight", "lora_down.weight"), alpha=True):
    tensors[f"{key}.{suffix[0]}"] = layer.up.to(dtype).contiguous()
    tensors[f"{key}.{suffix[1]}"] = layer.down.to(dtype).contiguous()
    if alpha:
        tensors[f"{key}.alpha"] = torch.tensor(float(layer.alpha)).to(dtype)


def write(lora: dict, arch: Arch, family: str, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file in one naming family (see `FAMILIES`)."""
    t: dict[str, torch.Tensor] = {}
    te = _te(lora, arch)
    denoiser = {n: layer for n, layer in lora.items() if n not in te}
    comfy_te = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}
    if family in ("kohya", "comfyui+kohya-te", "lycoris"):
        for name, layer in te.items():
            slot, rest = _component(name)
            _put(t, _kohya_te_prefix(arch, slot) + rest.replace(".", "_"), layer, dtype)
    if family == "kohya":
        if arch.name == "sd1":  # kohya's SD1 files use diffusers' names; SDXL and Flux the originals
            for name, layer in denoiser.items():
                _put(t, "lora_unet_" + _component(name)[1].replace(".", "_"), layer, dtype)
        else:
            for key, layer in _original(denoiser, arch).items():
                _put(t, "lora_unet_" + key.replace(".", "_"), layer, dtype)
    elif family in ("comfyui", "comfyui+kohya-te"):
        for key, layer in _original(denoiser, arch).items():
            _put(t, "diffusion_model." + key, layer, dtype)
        if family == "comfyui":
            for name, layer in te.items():
                slot, rest = _component(name)
                _put(t, f"text_encoders.{comfy_te[slot]}.transformer.{rest}", layer, dtype)
    elif family == "lycoris":
        for name, layer in denoiser.items():
            _put(t, "lycoris_" + _component(name)[1].replace(".", "_"), layer, dtype)
    elif family == "peft":  # diffusers' save_lora_weights layout: no alpha, its scale folded in
        for name, layer in lora.items():
            scaled = Layer(layer.up * (layer.alpha / layer.up.shape[1]), layer.down, float(layer.up.shape[1]))
            _put(t, name, scaled, dtype, ("lora_B.weight", "lora_A.weight"), alpha=False)
    elif family == "diffusers-old":  # diffusers 0.14-0.20: attention processors and patched CLIP layers
        for name, layer in lora.items():
            scaled = Layer(layer.up * (layer.alpha / layer.up.shape[1]), layer.down, float(layer.up.shape[1]))
            head, rest = _component(name)
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                if head == "unet" and rest.endswith(f".{proj}") and ".attn" in rest:
                    base = rest[:-len(proj) - 1]
                    _put(t, f"unet.{base}.processor.{proj.split('.')[0]}_lora", scaled, dtype, ("up.weight", "down.weight"),
                         alpha=False)
                    break
            else:
                clip = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out"}
                last = rest.rsplit(".", 1)[-1]
                if head.startswith("text_encoder") and last in clip:
                    _put(t, f"{head}.{rest[:-len(last) - 1]}.{clip[last]}_lora", scaled, dtype,
                         ("up.weight", "down.weight"), alpha=False)
                elif head.startswith("text_encoder"):
                    _put(t, name, scaled, dtype, ("lora_linear_layer.up.weight", "lora_linear_layer.down.weight"),
                         alpha=False)
                else:
                    _put(t, name, scaled, dtype, ("lora.up.weight", "lora.down.weight"), alpha=False)
    else:
        raise ValueError(f"unknown family {family}")
    return t


FAMILIES = ("kohya", "peft", "comfyui", "comfyui+kohya-te", "lycoris", "diffusers-old")


# --- recipes ------------------------------------------------------------------------------

def _svd(delta: torch.Tensor, rank: int, clamp: float | None) -> Layer:
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    rank = min(rank, s.shape[0])
    up, down = u[:, :rank] * s[:rank], vh[:rank]
    if clamp is not None:  # ComfyUI's and sd-scripts' extraction clip outliers at a quantile
        hi = torch.quantile(torch.cat([up.flatten(), down.flatten()]), clamp)
        up, down = up.clamp(-hi, hi), down.clamp(-hi, hi)
    return Layer(up, down, float(rank))


def resize(lora: dict, rank: int) -> dict:
    """sd-scripts ``resize_lora`` at a fixed rank: each ΔW's top singular directions."""
    return {n: _svd(layer.delta, rank, None) for n, layer in lora.items()}


def merge(a: dict, b: dict, ratio_a: float, ratio_b: float, concat: bool = False) -> dict:
    """sd-scripts ``merge_lora`` between LoRAs: up and down matrices summed weighted by the
    ratio (equal alphas), or with ``--concat`` stacked along the rank (ranks add)."""
    out = dict(b)
    for n, la in a.items():
        lb = b.get(n)
        if lb is None:
            out[n] = Layer(la.up * abs(ratio_a), la.down * ratio_a, la.alpha)
        elif concat:
            out[n] = Layer(torch.cat([la.up * abs(ratio_a), lb.up * abs(ratio_b)], 1),
                           torch.cat([la.down * ratio_a, lb.down * ratio_b]), la.alpha + lb.alpha)
        else:
            out[n] = Layer(la.up * abs(ratio_a) + lb.up * abs(ratio_b), la.down * ratio_a + lb.down * ratio_b, la.alpha)
    return out


def svd_merge(a: dict, b: dict, ratio_a: float, ratio_b: float, rank: int) -> dict:
    """sd-scripts ``svd_merge_lora``: the weighted sum of the ΔWs, re-factored by SVD at ``rank``."""
    out = {}
    for n in a.keys() | b.keys():
        delta = sum(r * lora[n].delta for lora, r in ((a, ratio_a), (b, ratio_b)) if n in lora)
        out[n] = _svd(delta, rank, 0.99)
    return out


def lora_save(lora: dict, arch: Arch, rank: int = 8) -> dict[str, torch.Tensor]:
    """ComfyUI's LoraSave of a model with the LoRA applied: each changed weight's difference
    (Flux's fused layers whole) by SVD at ``rank``, clamped at the 0.99 quantile, fp16, under
    ComfyUI's own names."""
    t: dict[str, torch.Tensor] = {}
    comfy_te = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}
    te = _te(lora, arch)
    for key, layer in _original({n: v for n, v in lora.items() if n not in te}, arch).items():
        _put(t, "diffusion_model." + key, _svd(layer.delta, rank, 0.99), torch.float16, alpha=False)
    for name, layer in te.items():
        slot, rest = _component(name)
        _put(t, f"text_encoders.{comfy_te[slot]}.transformer.{rest}", _svd(layer.delta, rank, 0.99), torch.float16,
             alpha=False)
    return t
