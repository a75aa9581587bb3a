"""Guarding a diffusers pipeline: LoRA and Checkpoint loading, prompts, outputs, early abort.

    pipe = protect(StableDiffusionPipeline.from_single_file(...), guard, account="alice")
    pipe.load_lora_weights("uploads/style.safetensors")   # the model-file gate runs first
    out = pipe("a castle at dusk")                          # prompt screened before the UNet runs
    out = pipe("a castle", guard_account="bob")            # a per-call account, for shared servers
    out.guard_verdicts                                     # one verdict per output image

`protect` swaps the instance's class for a subclass (same name) whose ``__call__`` and
``load_lora_weights`` go through the `Guard` first, so the guard cannot be skipped by
calling the pipeline the usual way. Every decision is the guard's; this module only acts.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, GuardError
from ..facade import Guard
from ..scan import find_model_files
from ..verdict import Action, Verdict
from ..verdict import Surface

__all__ = ["GuardBlocked", "protect", "load_pipeline"]


class GuardBlocked(GuardError):
    """The guard blocked what was asked; ``verdicts`` say why, ``step`` where denoising stopped."""

    def __init__(self, verdicts: Sequence[Verdict], what: str, step: int | None = None):
        self.verdicts = list(verdicts)
        self.step = step
        reasons = "; ".join(f"{v.subject}: " + ", ".join(f"{f.subject} ({f.signal.value})" for f in v.findings
                                                         if f.action is Action.BLOCK) for v in verdicts if v.blocked)
        where = f" at denoising step {step}" if step is not None else ""
        super().__init__(f"{what} blocked by the guard{where}: {reasons}")

    @property
    def verdict(self) -> Verdict:
        return next((v for v in self.verdicts if v.blocked), self.verdicts[0])


@dataclasses.dataclass
class _Settings:
    guard: Guard
    account: str | None
    early_abort_every: int | None
    preview_size: int
    placeholder: Image.Image | None


def protect(pipe, guard: Guard, *, account: str | None = None, early_abort_every: int | None = None,
            preview_size: int = 128, placeholder: Image.Image | None = None):
    """Instrument ``pipe`` in place and return it.

    Args:
        pipe: a diffusers pipeline with the usual ``__call__`` (SD1.x, SDXL, Flux, ...).
        guard: the guard that decides.
        account: the account generating (allowlists, strikes, audit).
        early_abort_every: every k denoising steps, decode a low-resolution preview of the
            latents and check it; a block stops denoising and raises `GuardBlocked`.
        preview_size: preview edge in pixels (the VAE decodes at this size only).
        placeholder: image that replaces blocked outputs (default: black).

    Latent output (which cannot be checked) is refused or passed as the policy's
    ``[generation] latent_output`` says.
    """
    if early_abort_every is not None and early_abort_every < 1:
        raise ValueError(f"early_abort_every={early_abort_every!r} must be a positive number of steps")
    settings = _Settings(guard, account, early_abort_every, preview_size, placeholder)
    if not getattr(type(pipe), "_guard_protected", False):
        base = type(pipe)
        pipe.__class__ = type(base.__name__, (base,), {
            "__call__": _call, "load_lora_weights": _load_lora_weights, "_guard_protected": True,
            "__module__": base.__module__, "__qualname__": base.__qualname__})
    pipe._guard_settings = settings
    return pipe


def load_pipeline(cls, path: str | os.PathLike, guard: Guard, *, account: str | None = None, **kwargs):
    """Scan a local Checkpoint file or pipeline folder, then load it with ``cls`` and protect it.

    Files: ``cls.from_single_file``; folders: ``cls.from_pretrained`` with safetensors required
    unless every pickle-based weight file passed the pickle gate.
    """
    path = Path(path)
    if path.is_file():
        verdicts = [guard.check_model_file(path, account=account)]
    elif path.is_dir():
        verdicts = [guard.check_model_file(f, account=account) for f in find_model_files([path])]
    else:
        raise ConfigError(f"load_pipeline loads local files only ({path} is not one): download, then scan")
    if not verdicts:
        verdicts = [guard.refuse(str(path), Surface.MODEL_FILE, "the folder holds no weight files", account)]
    if any(v.blocked for v in verdicts):
        raise GuardBlocked(verdicts, "loading this checkpoint")
    if path.is_file():
        pipe = cls.from_single_file(str(path), **kwargs)
    else:
        pickled = any(v.facts.get("container", "").endswith("pickle") for v in verdicts)
        kwargs.setdefault("use_safetensors", not pickled)
        pipe = cls.from_pretrained(str(path), **kwargs)
    return protect(pipe, guard, account=account)


# The instrumented methods ------------------------------------------------------------------------
def _load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name=None, **kwargs):
    settings: _Settings = self._guard_settings
    source = pretrained_model_name_or_path_or_dict
    with tempfile.TemporaryDirectory() as tmp:
        path = _lora_file(source, kwargs.get("weight_name"), tmp)
        verdict = settings.guard.check_model_file(path, account=settings.account,
                                                  subject=str(source) if not isinstance(source, dict) else None)
    if verdict.blocked:
        raise GuardBlocked([verdict], "loading this LoRA")
    return type(self).__mro__[1].load_lora_weights(self, source, adapter_name=adapter_name, **kwargs)


def _lora_file(source: Any, weight_name: str | None, tmp: str) -> str:
    if isinstance(source, dict):  # a state dict: the gate reads it as the file it would be
        from safetensors.torch import save_file

        path = os.path.join(tmp, "state_dict.safetensors")
        save_file({k: v.detach().contiguous().cpu() for k, v in source.items()}, path)
        return path
    path = Path(os.fspath(source))
    if path.is_file():
        return str(path)
    if path.is_dir():
        if weight_name:
            return str(path / weight_name)
        found = sorted(path.glob("*.safetensors")) or sorted(p for p in path.iterdir() if p.suffix in (".bin", ".pt"))
        if not found:
            raise ConfigError(f"{path} holds no LoRA weights file; pass weight_name=")
        return str(found[0])
    raise ConfigError(f"{source!r} is not a local file, folder or state dict: the guard scans before loading, "
                      "so download the LoRA first")


def _call(self, *args, guard_account: str | None = None, **kwargs):
    settings: _Settings = self._guard_settings
    if guard_account is not None:  # one shared pipeline, many users: the account is per call
        settings = dataclasses.replace(settings, account=guard_account)
    guard, account = settings.guard, settings.account
    base_call = type(self).__mro__[1].__call__

    # 1. Prompts, before any GPU work: every prompt argument the pipeline takes, every element.
    # Negatives only pair with their prompts (a missing or short negative list never drops one).
    prompt = kwargs.get("prompt", args[0] if args else None)
    prompts = _texts(prompt)
    negative = kwargs.get("negative_prompt")
    negatives = _texts(negative) if isinstance(negative, list) else [negative] * len(prompts)
    negatives += [None] * (len(prompts) - len(negatives))
    others = [text for name in _OTHER_PROMPTS if name in kwargs for text in _texts(kwargs[name])]
    verdicts = [guard.check_prompt(p, negative=n, account=account) for p, n in zip(prompts, negatives)]
    verdicts += [guard.check_prompt(text, account=account) for text in others]
    if not verdicts:
        verdicts = [guard.unscreened_prompt("called with prompt_embeds: the prompt text was not available",
                                            account)]
    if any(v.blocked for v in verdicts):
        raise GuardBlocked(verdicts, "this prompt")
    if any(v.steer for v in verdicts[:len(prompts)]):
        steered = [", ".join(x for x in (n, v.steer) if x) for n, v in zip(negatives, verdicts)]
        kwargs["negative_prompt"] = steered[0] if isinstance(prompt, str) else steered

    # 2. Early abort, composed with the caller's own callback.
    aborted: dict[str, Any] = {}
    if settings.early_abort_every:
        _add_early_abort(self, kwargs, settings, aborted)

    # 3. Generation.
    output = base_call(self, *args, **kwargs)
    if aborted:
        recorded = guard.record_decision(aborted["verdicts"], account, early_abort_step=aborted["step"])
        raise GuardBlocked(recorded, "this generation", step=aborted["step"])

    # 4. Outputs.
    output_type = kwargs.get("output_type", "pil")
    images = output.images if hasattr(output, "images") else output[0]
    if output_type == "latent":
        verdict = guard.check_latent_output(account)
        if verdict.blocked:
            raise GuardBlocked([verdict], "latent output")
        return output
    checked = guard.check_images(_as_checkable(images, output_type), surface=Surface.GENERATED_IMAGE,
                                 account=account)
    images = _replace_blocked(images, output_type, checked, settings.placeholder)
    if hasattr(output, "images"):
        output.images = images
        output.guard_verdicts = checked
        output.guard_blocked = [v.blocked for v in checked]
        return output
    self.guard_verdicts = checked
    return (images, *tuple(output)[1:])


#: Prompt arguments besides ``prompt`` (SDXL, SD3, Flux's T5 prompt): screened like it.
_OTHER_PROMPTS = ("prompt_2", "prompt_3")


def _texts(value: Any) -> list:
    """A prompt argument as a list of texts (a str, a list of str, or None)."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _add_early_abort(pipe, kwargs: dict, settings: _Settings, aborted: dict) -> None:
    user_callback = kwargs.get("callback_on_step_end")
    inputs = list(kwargs.get("callback_on_step_end_tensor_inputs") or ["latents"])
    if "latents" not in inputs:
        inputs.append("latents")
    steps = kwargs.get("num_inference_steps", 50)

    def callback(p, step: int, timestep, tensors: dict):
        if user_callback is not None:
            tensors = user_callback(p, step, timestep, tensors) or tensors
        done = step + 1
        if not aborted and done % settings.early_abort_every == 0 and done < steps:
            preview = _preview(p, tensors["latents"], settings.preview_size)
            verdicts = settings.guard.check_images(preview, surface=Surface.GENERATED_IMAGE,
                                                   account=settings.account, record=False)
            if any(v.blocked for v in verdicts):
                aborted.update(step=done, verdicts=verdicts)
                p._interrupt = True  # diffusers skips the remaining steps
        return tensors

    kwargs["callback_on_step_end"] = callback
    kwargs["callback_on_step_end_tensor_inputs"] = inputs


@torch.inference_mode()
def _preview(pipe, latents: torch.Tensor, size: int) -> list[np.ndarray]:
    """Decode the current latents cheaply: downsampled first, so the VAE runs at ``size`` px."""
    factor = getattr(pipe, "vae_scale_factor", 8)
    small = torch.nn.functional.interpolate(latents.float(), size=(max(1, size // factor),) * 2, mode="bilinear")
    vae = pipe.vae
    decoded = vae.decode(small.to(vae.dtype) / vae.config.scaling_factor).sample
    pictures = ((decoded.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    return list(pictures)


def _as_checkable(images, output_type: str) -> list:
    if output_type == "pt":
        return list(images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy())
    if output_type == "np":
        return list(images)
    return list(images)


def _replace_blocked(images, output_type: str, verdicts: Sequence[Verdict], placeholder: Image.Image | None):
    blocked = [i for i, v in enumerate(verdicts) if v.blocked]
    if not blocked:
        return images
    if output_type == "pt":
        images = images.clone()
        for i in blocked:
            images[i] = _placeholder_array(placeholder, images.shape[-1], images.shape[-2], images.dtype, torch=True)
        return images
    if output_type == "np":
        images = images.copy()
        for i in blocked:
            images[i] = _placeholder_array(placeholder, images.shape[2], images.shape[1], images.dtype)
        return images
    images = list(images)
    for i in blocked:
        size = images[i].size
        images[i] = placeholder.resize(size) if placeholder is not None else Image.new("RGB", size)
    return images


def _placeholder_array(placeholder, width: int, height: int, dtype, torch: bool = False):
    if placeholder is None:
        arr = np.zeros((height, width, 3), dtype=np.float32)
    else:
        arr = np.asarray(placeholder.convert("RGB").resize((width, height)), dtype=np.float32) / 255.0
    if torch:
        import torch as _torch

        return _torch.from_numpy(arr).permute(2, 0, 1).to(dtype)
    return arr.astype(dtype)
