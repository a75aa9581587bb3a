"""Checking what a generation returns, and replacing what is blocked.

What the images are is read from what came back, not from ``output_type``: diffusers turns
an ``output_type`` it does not know (``None``, ``"numpy"``, ``"PIL"``) into numpy arrays, so a
tensor is ``pt``, an array is ``np``, a list of PIL images is ``pil``; anything else is refused.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from guard.verdict import Surface, Verdict
from guard.adapters.diffusers.settings import GuardBlocked, Settings


def check_output(output, output_type, settings: Settings):
    """The output with its blocked images replaced and its verdicts attached."""
    guard, account = settings.guard, settings.account
    has_images = hasattr(output, "images")
    images = output.images if has_images else output[0]
    if output_type == "latent":
        verdict = guard.check_latent_output(account)
        if verdict.blocked:
            raise GuardBlocked([verdict], "latent output")
        return output
    checkable = _checkable(images)
    if checkable is None:
        verdict = guard.refuse("output", Surface.GENERATED_IMAGE,
                               f"the pipeline returned {type(images).__name__} images the guard cannot check", account)
        raise GuardBlocked([verdict], "this output")
    verdicts = guard.check_images(checkable, surface=Surface.GENERATED_IMAGE, account=account)
    images = _replace_blocked(images, verdicts, settings.placeholder)
    if has_images:
        output.images = images
        output.guard_verdicts = verdicts
        output.guard_blocked = [v.blocked for v in verdicts]
        return output
    return (images, *tuple(output)[1:])


def _checkable(images) -> list | None:
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy())
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)) and all(isinstance(i, Image.Image) for i in images):
        return list(images)
    return None


def _replace_blocked(images, verdicts: Sequence[Verdict], placeholder: Image.Image | None):
    blocked = [i for i, v in enumerate(verdicts) if v.blocked]
    if not blocked:
        return images
    if isinstance(images, torch.Tensor):  # B x C x H x W
        images = images.clone()
        for i in blocked:
            images[i] = torch.from_numpy(_filler(placeholder, images.shape[-1], images.shape[-2])).permute(2, 0, 1)
        return images
    if isinstance(images, np.ndarray):  # B x H x W x C
        images = images.copy()
        for i in blocked:
            images[i] = _filler(placeholder, images.shape[2], images.shape[1]).astype(images.dtype)
        return images
    images = list(images)
    for i in blocked:
        size = images[i].size
        images[i] = placeholder.convert("RGB").resize(size) if placeholder is not None else Image.new("RGB", size)
    return images


def _filler(placeholder: Image.Image | None, width: int, height: int) -> np.ndarray:
    if placeholder is None:
        return np.zeros((height, width, 3), dtype=np.float32)
    return np.asarray(placeholder.convert("RGB").resize((width, height)), dtype=np.float32) / 255.0
