"""Early abort: every k denoising steps, a cheap preview of the latents is checked like an
output, and a block stops denoising.

The preview follows the generation: the latents are decoded at the image's own size when it
is at most the policy's ``preview_edge``, else average-pooled by a whole factor first (never
upsampled: a preview larger than the image is a different picture). Flux's packed latents
are unpacked, and SD3/Flux's VAE shift factor applied, as their pipelines do before decoding.
The caller's own ``callback_on_step_end`` (a function or a ``PipelineCallback``) still runs,
with the tensors it asked for.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, MutableMapping

import numpy as np
import torch

from guard.verdict import Surface
from guard.adapters.diffusers.settings import Settings


def add_early_abort(pipe, arguments: MutableMapping[str, Any], settings: Settings, aborted: dict) -> None:
    user_callback = arguments.get("callback_on_step_end")
    inputs = list(arguments.get("callback_on_step_end_tensor_inputs") or [])
    inputs += [t for t in getattr(user_callback, "tensor_inputs", None) or [] if t not in inputs]
    if "latents" not in inputs:
        inputs.append("latents")
    size = (arguments.get("height"), arguments.get("width"))

    def callback(p, step: int, timestep, tensors: dict):
        if user_callback is not None:
            tensors = user_callback(p, step, timestep, tensors) or tensors
        done = step + 1
        total = getattr(p, "num_timesteps", None) or arguments.get("num_inference_steps") or 0
        if aborted or done % settings.early_abort_every or done >= total:
            return tensors  # the last step's image is checked as the output
        try:
            preview = decode_preview(p, tensors["latents"], settings.preview_edge, size)
        except Exception as exc:  # noqa: BLE001 - a preview is an optimisation; the output check still runs
            aborted["unavailable"] = True
            warnings.warn(f"guard: early abort off for this call, the preview failed: {exc}", RuntimeWarning)
            return tensors
        verdicts = settings.guard.check_images(preview, surface=Surface.GENERATED_IMAGE,
                                               account=settings.account, record=False)
        if any(v.blocked for v in verdicts):
            aborted.update(step=done, verdicts=verdicts)
            p._interrupt = True  # diffusers skips the remaining steps
        return tensors

    arguments["callback_on_step_end"] = callback
    arguments["callback_on_step_end_tensor_inputs"] = inputs


@torch.inference_mode()
def decode_preview(pipe, latents: torch.Tensor, edge: int, size: tuple = (None, None)) -> list[np.ndarray]:
    """The latents as HxWx3 float pictures, at most ``edge`` pixels wide, decoded by the pipeline's VAE."""
    vae = pipe.vae
    factor = getattr(pipe, "vae_scale_factor", 8)
    if latents.ndim == 3:  # packed (Flux): B x tokens x channels
        height, width = (s or pipe.default_sample_size * factor for s in size)
        latents = pipe._unpack_latents(latents, height, width, factor)
    pool = max(1, math.ceil(max(latents.shape[-2:]) * factor / edge))
    small = torch.nn.functional.avg_pool2d(latents.float(), pool, ceil_mode=True) if pool > 1 else latents.float()
    small = small / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
    decoded = vae.decode(small.to(vae.dtype)).sample
    return list(((decoded.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy())
