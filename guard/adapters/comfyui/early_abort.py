"""Early abort inside ComfyUI's samplers: every k steps (the policy's ``[generation]
early_abort_every``; 0 is off), the sampler's current estimate of the final image is checked
like an output, and a block stops the workflow before the remaining steps run.

It hooks where ComfyUI's own previews come from: ``latent_preview.prepare_callback``, which
KSampler, KSamplerAdvanced and the custom-sampler nodes call for their step callback. The
preview is ComfyUI's approximate latent-to-RGB decode (the latent format's
``latent_rgb_factors``, no VAE), scaled to the image's size; a latent format without those
factors gets no early abort (the output guard still checks the image). A block is recorded
(``early_abort_step``) and stops the run with ComfyUI's interruption, as its Cancel does.
"""

from __future__ import annotations

import functools
import logging

from guard.adapters.comfyui.runtime import Runtime, current
from guard.verdict import Surface

log = logging.getLogger("guard")
LATENT_SCALE = 8  # pixels per latent cell in the SD-family VAEs


def install(runtime: Runtime) -> None:
    import latent_preview

    original = latent_preview.prepare_callback
    if getattr(original, "_diffusion_guard", False) or runtime.guard is None:
        return
    every = runtime.guard.policy.generation.early_abort_every
    if not every:
        return

    @functools.wraps(original)
    def prepare_callback(model, steps, *args, **kwargs):
        callback = original(model, steps, *args, **kwargs)
        fmt = getattr(getattr(model, "model", None), "latent_format", None)
        factors = getattr(fmt, "latent_rgb_factors", None)
        if factors is None:
            return callback

        def checked(step, x0, x, total_steps):
            callback(step, x0, x, total_steps)
            done = step + 1
            if done % every or done >= total_steps:
                return  # the last step's image is checked as the output
            try:
                pictures = preview(x0, fmt)
            except Exception as exc:  # noqa: BLE001 (a preview is an optimisation: the output guard still checks)
                log.warning("diffusion-guard: no early abort at step %d, the preview failed: %s", done, exc)
                return
            verdicts = runtime.guard.check_images(pictures, Surface.GENERATED_IMAGE, current.get().account,
                                                  subjects=[f"{current.get().prompt_id or 'comfyui'} preview step "
                                                            f"{done} image {i}" for i in range(x0.shape[0])],
                                                  record=False)
            if any(v.blocked for v in verdicts):
                import comfy.model_management

                runtime.guard.record_decision(verdicts, current.get().account, early_abort_step=done)
                log.warning("diffusion-guard: generation stopped at step %d: a preview was blocked", done)
                raise comfy.model_management.InterruptProcessingException()

        return checked

    prepare_callback._diffusion_guard = True
    latent_preview.prepare_callback = prepare_callback


def preview(x0, fmt) -> list:
    """``x0`` [B, C, h, w] as uint8 HxWx3 pictures at the image's size, by the latent
    format's linear RGB map (what ComfyUI's Latent2RGB previewer does)."""
    import torch

    factors = torch.tensor(fmt.latent_rgb_factors, dtype=torch.float32)
    bias = torch.tensor(fmt.latent_rgb_factors_bias or [0.0, 0.0, 0.0], dtype=torch.float32)
    latent = x0.detach().float().cpu()
    if latent.ndim == 5:  # video latents: the first frame
        latent = latent[:, :, 0]
    rgb = torch.einsum("bchw,cr->bhwr", latent[:, :factors.shape[0]], factors) + bias
    rgb = ((rgb.clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)
    big = rgb.repeat_interleave(LATENT_SCALE, 1).repeat_interleave(LATENT_SCALE, 2)
    return list(big.numpy())
