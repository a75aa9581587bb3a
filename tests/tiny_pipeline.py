"""A tiny Stable Diffusion pipeline built from configs (no downloads): 2-block UNet, tiny VAE,
tiny CLIP text encoder, and a CLIPTokenizer made from open_clip's bundled BPE vocabulary."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import open_clip
import torch


def _byte_alphabet() -> list[str]:
    """CLIP's stand-ins for the 256 byte values (GPT-2's byte-level scheme): printable bytes as
    themselves, in order, then the others mapped to code points from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]


def clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = [tuple(line.split()) for line in gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]]
    alphabet = _byte_alphabet()
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + \
        ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>",
                         model_max_length=77)


def tiny_pipeline(folder: Path, seed: int = 0):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=8, attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=[16, 32], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=8)
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, hidden_size=32, intermediate_size=37,
                                        num_attention_heads=4, num_hidden_layers=2, pad_token_id=49407,
                                        vocab_size=49408))
    scheduler = DDIMScheduler(clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(folder / "tokenizer"),
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_lora(path: Path, seed: int, metadata: dict | None = None) -> Path:
    """A kohya-format LoRA for the tiny UNet's attention layers."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in ("down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                 "down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
                 "up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_v"):
        key = f"lora_unet_{name}"
        tensors[f"{key}.lora_down.weight"] = torch.randn(4, 32, generator=g) * 0.1
        tensors[f"{key}.lora_up.weight"] = torch.randn(32, 4, generator=g) * 0.1
        tensors[f"{key}.alpha"] = torch.tensor(4.0)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", **(metadata or {})})
    return path


def preview_at(pipe, prompt: str, seed: int, step: int, size: int, **call):
    """Generate once and return the guard's early-abort preview (HxWx3 floats) after ``step`` steps."""
    from guard.adapters.diffusers.early_abort import decode_preview

    previews = []

    def grab(p, i, t, tensors):
        if i + 1 == step:
            previews.extend(decode_preview(p, tensors["latents"], size, (call.get("height"), call.get("width"))))
        return tensors

    image = pipe(prompt, generator=torch.Generator().manual_seed(seed), callback_on_step_end=grab, **call).images[0]
    return image, previews[0]


def _clip_text(projection: bool = False, hidden: int = 32, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, hidden_size=hidden, intermediate_size=37,
                            num_attention_heads=4, num_hidden_layers=2, pad_token_id=49407, vocab_size=49408,
                            projection_dim=hidden)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _t5_text(seed: int = 0):
    """A tiny T5 encoder over CLIP's vocabulary: the pipelines only need token ids in range."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=49408, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   decoder_start_token_id=0, pad_token_id=49407))


def _flow_vae(latent_channels: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=[16, 32], in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         norm_num_groups=8, use_quant_conv=False, use_post_quant_conv=False,
                         shift_factor=0.0609, scaling_factor=1.5035)


def tiny_sdxl(folder: Path, seed: int = 0):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                                norm_num_groups=8, attention_head_dim=(2, 4), use_linear_projection=True,
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80)
    vae = AutoencoderKL(block_out_channels=[16, 32], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=8)
    tokenizer = clip_tokenizer(folder / "tokenizer")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=_clip_text(), tokenizer=tokenizer,
                                     text_encoder_2=_clip_text(projection=True, seed=1), tokenizer_2=tokenizer,
                                     unet=unet, scheduler=EulerDiscreteScheduler(steps_offset=1))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3(folder: Path, seed: int = 0):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=1, in_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=64, out_channels=4)
    tokenizer = clip_tokenizer(folder / "tokenizer")
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
                                    vae=_flow_vae(4), text_encoder=_clip_text(projection=True),
                                    tokenizer=tokenizer, text_encoder_2=_clip_text(projection=True, seed=1),
                                    tokenizer_2=tokenizer, text_encoder_3=_t5_text(), tokenizer_3=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux(folder: Path, seed: int = 0):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    tokenizer = clip_tokenizer(folder / "tokenizer")
    pipe = FluxPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(4),
                        text_encoder=_clip_text(), tokenizer=tokenizer, text_encoder_2=_t5_text(),
                        tokenizer_2=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


#: Each family's tiny pipeline, and call arguments that keep a generation under a second.
FAMILIES = {
    "sd15": (tiny_pipeline, dict(num_inference_steps=4, height=64, width=64)),
    "sdxl": (tiny_sdxl, dict(num_inference_steps=4, height=64, width=64)),
    "sd3": (tiny_sd3, dict(num_inference_steps=4, height=64, width=64, max_sequence_length=16)),
    "flux": (tiny_flux, dict(num_inference_steps=4, height=64, width=64, max_sequence_length=16)),
}
