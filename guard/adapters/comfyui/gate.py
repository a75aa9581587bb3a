"""The load gate: whatever node loads a model file, the file passes the model-file gate first.

ComfyUI's loaders, and custom nodes that load by path, go through ``comfy.utils.load_torch_file``;
others call ``torch.load`` or safetensors directly. All three are wrapped, so a pickle never
reaches ``torch.load`` unless the gate passed its file, whichever node asked.
"""

from __future__ import annotations

import functools
import os

from guard.adapters.comfyui.runtime import Runtime, current
from guard.errors import GuardError


class GuardRefusedLoad(GuardError):
    """A model file the guard did not pass (ComfyUI shows this as the node's error)."""


def check_file(runtime: Runtime, path, loader: str) -> None:
    """Raise `GuardRefusedLoad` unless the guard passes the file at ``path``."""
    if runtime.guard is None:
        raise GuardRefusedLoad(runtime.problem or "diffusion-guard is not loaded")
    request = current.get()
    path = os.fspath(path)
    verdict = runtime.guard.check_model_file_cached(path, request.account)
    [verdict] = runtime.guard.record_decision([verdict], request.account, loaded_by=loader,
                                              workflow=request.prompt_id)
    if verdict.blocked:
        why = "; ".join(f"{f.subject} ({f.signal.value})" for f in verdict.findings if f.action is verdict.action)
        raise GuardRefusedLoad(f"diffusion-guard refused to load {os.path.basename(path)}: {why or verdict.error}")


def _path_of(target) -> str | None:
    if isinstance(target, (str, bytes, os.PathLike)):
        return os.fsdecode(target)
    name = getattr(target, "name", None)
    return name if isinstance(name, str) and os.path.isfile(name) else None


def install(runtime: Runtime) -> None:
    """Wrap the loaders once per process."""
    import safetensors.torch
    import torch

    import comfy.utils

    def gated(original, loader):
        if getattr(original, "_diffusion_guard", False):
            return original

        @functools.wraps(original)
        def load(target, *args, **kwargs):
            path = _path_of(target)
            if path is None:  # an anonymous buffer: nothing to check it by, so it is not loaded
                raise GuardRefusedLoad(f"diffusion-guard refused {loader} of an in-memory object "
                                       "(only files can be checked)")
            check_file(runtime, path, loader)
            return original(target, *args, **kwargs)

        load._diffusion_guard = True
        return load

    comfy.utils.load_torch_file = gated(comfy.utils.load_torch_file, "comfy.utils.load_torch_file")
    torch.load = gated(torch.load, "torch.load")
    safetensors.torch.load_file = gated(safetensors.torch.load_file, "safetensors.torch.load_file")
