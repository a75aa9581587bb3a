"""The output guard: images reaching an output node (``SaveImage``, ``PreviewImage``, any
other ``OUTPUT_NODE`` with an ``IMAGE`` input) are checked first; a blocked image is
replaced by a grey placeholder before the node writes anything, and the verdicts are added
to the node's UI output, which ComfyUI keeps in ``/history``."""

from __future__ import annotations

import functools
from typing import Any

from guard.adapters.comfyui.runtime import Runtime, current
from guard.verdict import Surface

PLACEHOLDER = 0.5  # mid grey, in ComfyUI's 0..1 IMAGE scale


def check_images(runtime: Runtime, images, where: str):
    """``(images with blocked ones replaced, verdict summaries)`` for an IMAGE tensor [B,H,W,C]."""
    import torch

    request = current.get()
    arrays = [(img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy() for img in images]
    if runtime.guard is None:
        return torch.full_like(images, PLACEHOLDER), [{"action": "block", "reason": runtime.problem}]
    names = [f"{request.prompt_id or 'comfyui'} {where} image {i}" for i in range(len(arrays))]
    verdicts = runtime.guard.check_images(arrays, Surface.GENERATED_IMAGE, request.account, subjects=names)
    out = images
    for i, verdict in enumerate(verdicts):
        if verdict.blocked:
            out = out.clone() if out is images else out
            out[i] = PLACEHOLDER
    return out, [summary(v) for v in verdicts]


def summary(verdict) -> dict[str, Any]:
    return {"subject": verdict.subject, "action": verdict.action.value, "error": verdict.error,
            "findings": [{"subject": f.subject, "signal": f.signal.value, "score": round(f.score, 4),
                          "action": f.action.value} for f in verdict.findings]}


def image_inputs(cls) -> list[str]:
    try:
        spec = cls.INPUT_TYPES()
    except Exception:  # noqa: BLE001 (a node whose inputs cannot be listed: nothing to wrap)
        return []
    names = []
    for section in ("required", "optional"):
        for name, value in (spec.get(section) or {}).items():
            if isinstance(value, (tuple, list)) and value and value[0] == "IMAGE":
                names.append(name)
    return names


def wrap(runtime: Runtime, cls) -> None:
    """Check the IMAGE inputs of an output node class before its function runs (once)."""
    if not getattr(cls, "OUTPUT_NODE", False) or cls.__dict__.get("_diffusion_guard_outputs"):
        return
    function = getattr(cls, "FUNCTION", None)
    original = getattr(cls, function, None) if isinstance(function, str) else None
    inputs = image_inputs(cls)
    if original is None or not inputs:
        return
    if not getattr(original, "_diffusion_guard", False):  # PreviewImage inherits SaveImage's
        @functools.wraps(original)
        def checked(self, *args, **kwargs):
            verdicts = []
            for name in inputs:
                if kwargs.get(name) is not None:
                    kwargs[name], found = check_images(runtime, kwargs[name], f"{type(self).__name__}.{name}")
                    verdicts += found
            result = original(self, *args, **kwargs)
            if isinstance(result, dict):
                result.setdefault("ui", {})["diffusion_guard"] = verdicts
            return result

        checked._diffusion_guard = True
        setattr(cls, function, checked)
    cls._diffusion_guard_outputs = True
