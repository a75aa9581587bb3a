"""Where ComfyUI's source is, for tests and benchmarks that check the guard against it.

``GUARD_COMFYUI_SRC`` names an unpacked checkout; otherwise the copy in ``../shared/vendor``
is unpacked once into ``.cache/`` beside the project. Nothing is downloaded.
"""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARBALL = ROOT.parent / "shared" / "vendor" / "comfyui-a125cd84.tar.gz"


def comfyui_source() -> Path | None:
    """The folder holding ComfyUI's ``main.py`` and ``comfy/``, or ``None`` when there is none."""
    named = os.environ.get("GUARD_COMFYUI_SRC")
    if named:
        return Path(named) if (Path(named) / "comfy").is_dir() else None
    target = ROOT / ".cache" / "comfyui-src"
    if (target / "comfy").is_dir():
        return target
    if not TARBALL.is_file():
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(TARBALL) as tar:
        tar.extractall(target.parent, filter="data")
    return target if (target / "comfy").is_dir() else None


def comfy_utils():
    """ComfyUI's ``comfy.utils`` (its key maps between layouts), or ``None`` without ComfyUI."""
    source = comfyui_source()
    if source is None:
        return None
    if str(source) not in sys.path:
        sys.path.insert(0, str(source))
    try:
        import comfy.utils
    except ImportError:  # a dependency of ComfyUI's (einops) is missing
        return None
    return comfy.utils


# The smallest checkpoint ComfyUI's model detection reads as Stable Diffusion 1.5: its UNet
# class at SD1.5's width (320 channels, 768-wide cross-attention) but one level and one block
# deep (detection reads the depth from the weights), SD1's CLIP-L text encoder (its size is
# fixed by ComfyUI's config; zero weights) and TAESD as the VAE. Built from ComfyUI's own
# classes on the meta device, so the key names and shapes are what its loader expects.
_TINY_SD15 = r'''
import sys
out = sys.argv[1]
sys.argv = [sys.argv[0], "--cpu"]  # comfy.cli_args reads the command line
import comfy.options
comfy.options.enable_args_parsing()
import torch
from safetensors.torch import save_file
import comfy.ops, comfy.sd1_clip, comfy.taesd.taesd
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
with torch.device("meta"):
    parts = {
        "model.diffusion_model.": UNetModel(
            image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[1], channel_mult=[1],
            num_heads=8, use_spatial_transformer=True, transformer_depth=[1], transformer_depth_output=[1, 1],
            transformer_depth_middle=1, context_dim=768, use_linear_in_transformer=False, legacy=False,
            operations=comfy.ops.disable_weight_init),
        "cond_stage_model.": comfy.sd1_clip.SDClipModel(device="meta"),
        "first_stage_model.": comfy.taesd.taesd.TAESD(),
    }
g = torch.Generator().manual_seed(0)
sd = {}
for prefix, module in parts.items():
    for key, value in module.state_dict().items():
        random = prefix != "cond_stage_model." and value.is_floating_point() and value.ndim > 1
        sd[prefix + key] = ((torch.randn(value.shape, generator=g) * 0.02).half() if random else
                            torch.zeros(value.shape, dtype=torch.float16 if value.is_floating_point() else value.dtype))
save_file(sd, out)
'''


def write_tiny_sd15_checkpoint(path: str | os.PathLike) -> Path:
    """Write that checkpoint (~300 MB, a few seconds) to ``path``; needs ComfyUI's source."""
    import subprocess

    source = comfyui_source()
    if source is None:
        raise RuntimeError("ComfyUI's source is not available")
    env = {**os.environ, "PYTHONPATH": str(source)}
    done = subprocess.run([sys.executable, "-c", _TINY_SD15, str(path)], cwd=source, env=env, capture_output=True,
                          text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"could not build the tiny SD1.5 checkpoint: {done.stderr[-2000:]}")
    return Path(path)
