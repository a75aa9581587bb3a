"""LoRA key naming: which layer a tensor adapts, whatever family named it.

LoRA files name the same layer many ways: kohya's ``lora_unet_…``/``lora_te1_…``, PEFT's
``unet.…``/``transformer.…``, diffusers' pre-PEFT attention processors, the original
(LDM/SGM) UNet layout kohya's SDXL files use, Flux's and SD3's original layouts with fused
q/k/v. `layer_part` maps a key to ``(canonical layer, part)`` in one naming (diffusers'),
and `split_fused` cuts a fused layer into the parts the other naming holds, so that
fingerprints (`guard.extract.lora`) compare layers across families.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping

_PREFIXES = [  # naming family prefix -> canonical prefix (the first that fits wins)
    ("lora_unet_", "unet_"), ("lora_te1_", "text_encoder_"), ("lora_te2_", "text_encoder_2_"),
    ("lora_te3_", "text_encoder_3_"), ("lora_te_", "text_encoder_"), ("lora_transformer_", "transformer_"),
    ("lora_prior_unet_", "prior_unet_"), ("lora_prior_te_", "prior_text_encoder_"),
    ("base_model.model.", "unet."), ("unet.", "unet."),
    ("text_encoder_2.", "text_encoder_2."), ("text_encoder_3.", "text_encoder_3."), ("text_encoder.", "text_encoder."),
    ("transformer.", "transformer."),
    # ComfyUI's own names: its model's state-dict keys (LDM/original layouts) and text encoders by model
    ("diffusion_model.", "unet."), ("text_encoders.clip_l.transformer.", "text_encoder."),
    ("text_encoders.clip_h.transformer.", "text_encoder."), ("text_encoders.clip_g.transformer.", "text_encoder_2."),
    ("text_encoders.t5xxl.transformer.", "text_encoder_t5."),
]
#: SimpleTuner's LyCORIS files (``lycoris_`` + the diffusers name, dots as underscores) name
#: the denoiser without saying which: a transformer's blocks, else a UNet's.
_LYCORIS = "lycoris_"
_TRANSFORMER_BLOCKS = ("transformer_blocks_", "single_transformer_blocks_", "joint_blocks_", "double_blocks_",
                       "single_blocks_", "context_embedder", "x_embedder", "controlnet_x_embedder", "time_text_embed", "norm_out", "proj_out")
#: T5 is one model whatever slot a family gives it (diffusers' Flux: text_encoder_2, SD3:
#: text_encoder_3; kohya's te2/te3; ComfyUI's t5xxl): its layer paths say it is T5.
_T5 = re.compile(r"^text_encoder(?:_[23])?_(?=encoder_block_|encoder_final_layer_norm|shared$)")
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
    "lora_A": "down", "lora_B": "up",  # Mochi's official files (ComfyUI reads them)
}
#: diffusers' first LoRA format (``unet.save_attn_procs``): the adapted projection is named
#: by the attention processor that held it, ``….attn1.processor.to_q_lora.down.weight``.
_ATTN_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
#: ...and its text encoder's patched CLIP attention: ``….self_attn.to_q_lora.up.weight`` is ``q_proj``.
_TEXT_ATTN = re.compile(r"\.self_attn\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_CLIP_PROJECTION = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
_SUFFIX = re.compile("|".join(re.escape("." + s) + "$" for s in sorted(_PARTS, key=len, reverse=True)))


def canonical_layer(prefix: str) -> str:
    """The layer name every naming family maps to: ``unet_down_blocks_0_..._to_q``."""
    for family, canonical in _PREFIXES:
        if prefix.startswith(family):
            prefix = canonical + prefix[len(family):]
            break
    else:
        if prefix.startswith(_LYCORIS):
            rest = prefix[len(_LYCORIS):]
            prefix = ("transformer_" if rest.startswith(_TRANSFORMER_BLOCKS) else "unet_") + rest
        elif prefix.startswith(("transformer_blocks.", "single_transformer_blocks.", "joint_blocks.")):
            prefix = "transformer." + prefix  # a bare transformer's diffusers names
        else:
            prefix = "unet." + prefix  # PEFT files of a bare UNet carry no component prefix
    name = upgrade_layer_name(prefix.replace(".", "_"))
    if name.startswith(_LDM_PREFIXES) or name in _LDM_OTHER:
        return _from_ldm(name)
    if flux := _FLUX_BLOCK.match(name):
        return _from_flux(name, *flux.groups())
    if other := _FLUX_OTHER_NAME.match(name):
        return "transformer_" + _FLUX_OTHER[other.group(1)]
    if sd3 := _SD3_BLOCK.match(name):
        return _from_sd3(name, *sd3.groups())
    return name


def upgrade_layer_name(name: str) -> str:
    """A canonical name as this version writes it (fingerprints store names: older ones gave
    T5 the slot of the model it came with)."""
    return _T5.sub("text_encoder_t5_", name, count=1)


# The original (LDM/SGM) UNet layout that kohya's SDXL LoRAs name, mapped onto the diffusers
# layout that PEFT files name: two resnets (+ attentions) and a downsampler per down block,
# three resnets (+ attentions) and an upsampler per up block.
_LDM_PREFIXES = ("unet_input_blocks_", "unet_middle_block_", "unet_output_blocks_", "unet_time_embed_",
                 "unet_label_emb_", "unet_out_")
_LDM_BLOCK = re.compile(r"unet_(input|output)_blocks_(\d+)_(\d+)(?:_(.+))?$")
_LDM_MIDDLE = re.compile(r"unet_middle_block_([012])_(.+)$")
_LDM_RESNET = {"in_layers_2": "conv1", "emb_layers_1": "time_emb_proj", "out_layers_3": "conv2",
               "skip_connection": "conv_shortcut", "in_layers_0": "norm1", "out_layers_0": "norm2"}
_LDM_OTHER = {"unet_input_blocks_0_0": "unet_conv_in", "unet_time_embed_0": "unet_time_embedding_linear_1",
              "unet_time_embed_2": "unet_time_embedding_linear_2", "unet_label_emb_0_0": "unet_add_embedding_linear_1",
              "unet_label_emb_0_2": "unet_add_embedding_linear_2", "unet_out_2": "unet_conv_out",
              "unet_out_0": "unet_conv_norm_out",
              # diffusers names the one LDM label embedding two ways, by what it embeds
              "unet_class_embedding_linear_1": "unet_add_embedding_linear_1",
              "unet_class_embedding_linear_2": "unet_add_embedding_linear_2"}


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
#: Flux's layers outside the blocks, original name -> diffusers name.
_FLUX_OTHER = {"img_in": "x_embedder", "txt_in": "context_embedder", "final_layer_linear": "proj_out",
               "time_in_in_layer": "time_text_embed_timestep_embedder_linear_1",
               "time_in_out_layer": "time_text_embed_timestep_embedder_linear_2",
               "vector_in_in_layer": "time_text_embed_text_embedder_linear_1",
               "vector_in_out_layer": "time_text_embed_text_embedder_linear_2",
               "guidance_in_in_layer": "time_text_embed_guidance_embedder_linear_1",
               "guidance_in_out_layer": "time_text_embed_guidance_embedder_linear_2",
               "pos_embed_input": "controlnet_x_embedder"}
_FLUX_OTHER_NAME = re.compile(r"(?:unet|transformer)_(?:diffusion_model_)?(" + "|".join(_FLUX_OTHER) + ")$")
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
    if m := _TEXT_ATTN.search(key):
        return f"{key[:m.start()]}.self_attn.{_CLIP_PROJECTION[m.group(1)]}", m.group(2)
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
