"""Real model files in every format the gate knows, with tiny tensors and real key names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

# (kohya name, PEFT name, out, in, conv kernel) of a few SD1.5 layers.
LAYERS = [
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
     "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 32, 32, None),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
     "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", 32, 768, None),
    ("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_out_0",
     "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0", 64, 64, None),
    ("lora_unet_up_blocks_1_attentions_2_proj_in", "unet.up_blocks.1.attentions.2.proj_in", 48, 48, None),
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj",
     "text_encoder.text_model.encoder.layers.0.self_attn.q_proj", 32, 32, None),
    ("lora_te_text_model_encoder_layers_11_mlp_fc1", "text_encoder.text_model.encoder.layers.11.mlp.fc1", 64, 32, None),
] + [(f"lora_unet_up_blocks_{b}_attentions_{a}_transformer_blocks_0_ff_net_2",
      f"unet.up_blocks.{b}.attentions.{a}.transformer_blocks.0.ff.net.2", 40, 80, None)
     for b in (1, 2, 3) for a in (0, 1, 2)]
CONV = ("lora_unet_down_blocks_0_resnets_0_conv1", "unet.down_blocks.0.resnets.0.conv1", 32, 32, 3)


# kohya's SDXL LoRAs name the original (LDM/SGM) UNet layout; PEFT files name the diffusers one.
SDXL_LAYERS = [
    ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
     "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"),
    ("lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_0_proj",
     "unet.down_blocks.2.attentions.1.transformer_blocks.9.ff.net.0.proj"),
    ("lora_unet_input_blocks_1_0_in_layers_2", "unet.down_blocks.0.resnets.0.conv1"),
    ("lora_unet_input_blocks_6_0_op", "unet.down_blocks.1.downsamplers.0.conv"),
    ("lora_unet_middle_block_1_proj_in", "unet.mid_block.attentions.0.proj_in"),
    ("lora_unet_middle_block_2_emb_layers_1", "unet.mid_block.resnets.1.time_emb_proj"),
    ("lora_unet_output_blocks_0_1_transformer_blocks_3_attn2_to_k",
     "unet.up_blocks.0.attentions.0.transformer_blocks.3.attn2.to_k"),
    ("lora_unet_output_blocks_2_2_conv", "unet.up_blocks.0.upsamplers.0.conv"),
    ("lora_unet_output_blocks_8_0_skip_connection", "unet.up_blocks.2.resnets.2.conv_shortcut"),
    ("lora_unet_time_embed_0", "unet.time_embedding.linear_1"),
    ("lora_unet_label_emb_0_2", "unet.add_embedding.linear_2"),
    ("lora_te2_text_model_encoder_layers_0_self_attn_q_proj",
     "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj"),
]


# Flux LoRA layers in kohya's naming (the original layout: q, k, v fused; single blocks fuse
# q, k, v and the MLP input) -> their diffusers names and the rows each takes, for hidden size H.
FLUX_H = 8
FLUX_LAYERS = {
    "lora_unet_double_blocks_0_img_attn_qkv": (
        ("transformer.transformer_blocks.0.attn.to_q", 1), ("transformer.transformer_blocks.0.attn.to_k", 1),
        ("transformer.transformer_blocks.0.attn.to_v", 1)),
    "lora_unet_double_blocks_0_txt_attn_qkv": (
        ("transformer.transformer_blocks.0.attn.add_q_proj", 1), ("transformer.transformer_blocks.0.attn.add_k_proj", 1),
        ("transformer.transformer_blocks.0.attn.add_v_proj", 1)),
    "lora_unet_double_blocks_0_img_attn_proj": (("transformer.transformer_blocks.0.attn.to_out.0", 1),),
    "lora_unet_double_blocks_0_img_mlp_0": (("transformer.transformer_blocks.0.ff.net.0.proj", 4),),
    "lora_unet_double_blocks_0_txt_mod_lin": (("transformer.transformer_blocks.0.norm1_context.linear", 6),),
    "lora_unet_single_blocks_0_linear1": (
        ("transformer.single_transformer_blocks.0.attn.to_q", 1), ("transformer.single_transformer_blocks.0.attn.to_k", 1),
        ("transformer.single_transformer_blocks.0.attn.to_v", 1), ("transformer.single_transformer_blocks.0.proj_mlp", 4)),
    "lora_unet_single_blocks_0_linear2": (("transformer.single_transformer_blocks.0.proj_out", 1),),
}


FLUX_ORIGINAL = {  # kohya name -> the original module path (ComfyUI's LoRA keys)
    "lora_unet_double_blocks_0_img_attn_qkv": "double_blocks.0.img_attn.qkv",
    "lora_unet_double_blocks_0_txt_attn_qkv": "double_blocks.0.txt_attn.qkv",
    "lora_unet_double_blocks_0_img_attn_proj": "double_blocks.0.img_attn.proj",
    "lora_unet_double_blocks_0_img_mlp_0": "double_blocks.0.img_mlp.0",
    "lora_unet_double_blocks_0_txt_mod_lin": "double_blocks.0.txt_mod.lin",
    "lora_unet_single_blocks_0_linear1": "single_blocks.0.linear1",
    "lora_unet_single_blocks_0_linear2": "single_blocks.0.linear2",
}

# SD3's original (MMDiT) layout, as kohya names it: q, k, v fused per attention. SD3.5 adds attn2.
SD3_LAYERS = {
    "lora_unet_joint_blocks_0_x_block_attn_qkv": (
        ("transformer.transformer_blocks.0.attn.to_q", 1), ("transformer.transformer_blocks.0.attn.to_k", 1),
        ("transformer.transformer_blocks.0.attn.to_v", 1)),
    "lora_unet_joint_blocks_0_context_block_attn_qkv": (
        ("transformer.transformer_blocks.0.attn.add_q_proj", 1), ("transformer.transformer_blocks.0.attn.add_k_proj", 1),
        ("transformer.transformer_blocks.0.attn.add_v_proj", 1)),
    "lora_unet_joint_blocks_1_x_block_attn2_qkv": (
        ("transformer.transformer_blocks.1.attn2.to_q", 1), ("transformer.transformer_blocks.1.attn2.to_k", 1),
        ("transformer.transformer_blocks.1.attn2.to_v", 1)),
    "lora_unet_joint_blocks_0_x_block_attn_proj": (("transformer.transformer_blocks.0.attn.to_out.0", 1),),
    "lora_unet_joint_blocks_0_context_block_attn_proj": (("transformer.transformer_blocks.0.attn.to_add_out", 1),),
    "lora_unet_joint_blocks_1_x_block_attn2_proj": (("transformer.transformer_blocks.1.attn2.to_out.0", 1),),
    "lora_unet_joint_blocks_0_x_block_mlp_fc1": (("transformer.transformer_blocks.0.ff.net.0.proj", 4),),
    "lora_unet_joint_blocks_0_context_block_mlp_fc2": (("transformer.transformer_blocks.0.ff_context.net.2", 1),),
    "lora_unet_joint_blocks_0_x_block_adaLN_modulation_1": (("transformer.transformer_blocks.0.norm1.linear", 6),),
    "lora_unet_joint_blocks_0_context_block_adaLN_modulation_1": (
        ("transformer.transformer_blocks.0.norm1_context.linear", 6),),
}


def fused_weights(layers, seed: int, rank: int = 4, width: dict[str, int] | None = None):
    """Per kohya layer of a fused layout (`FLUX_LAYERS`, `SD3_LAYERS`): (up [rows, r], down [r, in])."""
    g = torch.Generator().manual_seed(seed)
    return {name: (torch.randn(sum(s for _, s in parts) * FLUX_H, rank, generator=g) * 0.02,
                   torch.randn(rank, (width or {}).get(name, FLUX_H), generator=g) * 0.1)
            for name, parts in layers.items()}


def flux_weights(seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return fused_weights(FLUX_LAYERS, seed, width={"lora_unet_single_blocks_0_linear2": 5 * FLUX_H})


def flux_as_comfyui(weights) -> dict[str, torch.Tensor]:
    return {f"diffusion_model.{FLUX_ORIGINAL[name]}.lora_{'B' if part == 'up' else 'A'}.weight": t
            for name, (up, down) in weights.items() for part, t in (("up", up), ("down", down))}


def as_diffusers(weights, layers) -> dict[str, torch.Tensor]:
    """What a kohya -> diffusers conversion writes: fused up matrices cut by rows, downs repeated."""
    tensors = {}
    for name, (up, down) in weights.items():
        rows = 0
        for target, share in layers[name]:
            tensors[f"{target}.lora_B.weight"] = up[rows:rows + share * FLUX_H].contiguous()
            tensors[f"{target}.lora_A.weight"] = down.clone()
            rows += share * FLUX_H
    return tensors


def lora_weights(seed: int, rank: int = 4, conv: bool = False) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per kohya layer name: (up [out, r], down [r, in] or [r, in, k, k]) — a trained-looking LoRA."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for kohya, _, o, i, _ in LAYERS + ([CONV] if conv else []):
        down_shape = (rank, i, 3, 3) if kohya == CONV[0] else (rank, i)
        up_shape = (o, rank, 1, 1) if kohya == CONV[0] else (o, rank)
        out[kohya] = (torch.randn(up_shape, generator=g) * 0.02, torch.randn(down_shape, generator=g) * 0.1)
    return out


def kohya_tensors(weights, alpha: float = 2.0, dtype=torch.float16) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, (up, down) in weights.items():
        tensors[f"{name}.lora_up.weight"] = up.to(dtype).contiguous()
        tensors[f"{name}.lora_down.weight"] = down.to(dtype).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(alpha, dtype=dtype)
    return tensors


def peft_tensors(weights, dtype=torch.float32) -> dict[str, torch.Tensor]:
    peft_name = {k: p for k, p, *_ in LAYERS + [CONV]}
    tensors = {}
    for name, (up, down) in weights.items():
        tensors[f"{peft_name[name]}.lora_B.weight"] = up.to(dtype).contiguous()
        tensors[f"{peft_name[name]}.lora_A.weight"] = down.to(dtype).contiguous()
    return tensors


def legacy_diffusers_tensors(weights, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """diffusers' pre-PEFT formats: attention projections held by attention processors
    (``unet.save_attn_procs``, no component prefix), other UNet layers as LoRACompatible
    layers (``….lora.down.weight``), the text encoder's patched layers (``lora_linear_layer``)."""
    peft_name = {k: p for k, p, *_ in LAYERS + [CONV]}
    tensors = {}
    for name, (up, down) in weights.items():
        layer = peft_name[name]
        attention = re.match(r"unet\.(.+\.attn[12])\.(to_q|to_k|to_v|to_out)(?:\.0)?$", layer)
        if attention:
            stem = f"{attention.group(1)}.processor.{attention.group(2)}_lora"
        elif layer.startswith("text_encoder."):
            stem = f"{layer}.lora_linear_layer"
        else:
            stem = f"{layer}.lora"
        tensors[f"{stem}.up.weight"] = up.to(dtype).contiguous()
        tensors[f"{stem}.down.weight"] = down.to(dtype).contiguous()
    return tensors


def kohya_metadata(tags: dict[str, int] | None = None, folder: str = "10_ultraman", images: int = 40,
                   **extra: str) -> dict[str, str]:
    tags = tags if tags is not None else {"ultraman": 37, "1boy": 20, "silver giant": 6, "kaiju": 4}
    return {"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1", "ss_network_dim": "4",
            "ss_network_alpha": "2.0", "ss_output_name": "my_lora", "ss_learning_rate": "0.0001",
            "ss_tag_frequency": json.dumps({folder: tags}),
            "ss_dataset_dirs": json.dumps({folder: {"n_repeats": 10, "img_count": images}}), **extra}


def write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    save_file(tensors, str(path), metadata=metadata)
    return path


def other_formats(folder: Path) -> dict[str, Path]:
    """One file per further format: name -> path."""
    g = torch.Generator().manual_seed(99)
    r = lambda *s: torch.randn(*s, generator=g).half()  # noqa: E731
    name = LAYERS[0][0]
    files = {
        "lycoris-loha": {f"{name}.hada_w1_a": r(32, 4), f"{name}.hada_w1_b": r(4, 32), f"{name}.hada_w2_a": r(32, 4),
                         f"{name}.hada_w2_b": r(4, 32), f"{name}.alpha": torch.tensor(4.0).half()},
        "lycoris-lokr": {f"{name}.lokr_w1": r(4, 4), f"{name}.lokr_w2": r(8, 8), f"{name}.alpha": torch.tensor(1.0).half()},
        "lycoris-full": {f"{name}.diff": r(32, 32), f"{name}.diff_b": r(32)},
        "dora": {f"{name}.lora_up.weight": r(32, 4), f"{name}.lora_down.weight": r(4, 32),
                 f"{name}.alpha": torch.tensor(4.0).half(), f"{name}.dora_scale": r(1, 32)},
        "textual-inversion": {"emb_params": r(4, 768)},
        "checkpoint": {"model.diffusion_model.input_blocks.0.0.weight": r(8, 4, 3, 3),
                       "first_stage_model.decoder.conv_in.weight": r(8, 4, 3, 3),
                       "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": r(16, 8)},
        "flux-lora": {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": r(4, 64),
                      "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": r(192, 4),
                      "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(4.0).half()},
        "sdxl-checkpoint": {"model.diffusion_model.input_blocks.0.0.weight": r(8, 4, 3, 3),
                            "conditioner.embedders.1.model.ln_final.weight": r(8)},
    }
    return {fmt: write(folder / f"{fmt}.safetensors", tensors) for fmt, tensors in files.items()}


def without_scheme(fingerprint: bytes) -> bytes:
    """Fingerprint bytes as written before sketch recipes were named (no "scheme" in the head)."""
    n = int.from_bytes(fingerprint[:4], "little")
    head = json.loads(fingerprint[4:4 + n])
    del head["scheme"]
    raw = json.dumps(head).encode()
    return len(raw).to_bytes(4, "little") + raw + fingerprint[4 + n:]
