"""Protection that follows the components: a pipeline built from a protected pipeline's
modules (``from_pipe``, an AutoPipeline, ``Pipeline(**pipe.components)``) shares its denoiser,
and that denoiser refuses to run outside a guarded call.

A forward pre-hook on the denoiser checks a context variable that only the guarded
``__call__`` sets, for the modules of the pipeline it runs. Context variables are per thread
(and per asyncio task), so a concurrent guarded call elsewhere opens nothing here.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch

from guard.verdict import Surface
from guard.adapters.diffusers.settings import GuardBlocked, Settings

#: The components that denoise: without them no image is made. Text encoders and the VAE
#: stay usable on their own (servers encode prompts themselves, e.g. for prompt weighting).
DENOISERS = ("unet", "unet_2", "transformer", "transformer_2", "prior", "decoder")

_RUNNING: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar("guard_running_denoisers",
                                                                          default=frozenset())


def denoisers(pipe) -> list[torch.nn.Module]:
    return [m for m in (getattr(pipe, name, None) for name in DENOISERS) if isinstance(m, torch.nn.Module)]


def mark(pipe, settings: Settings) -> None:
    """Hook ``pipe``'s denoisers so that they run only inside a guarded call."""
    for module in denoisers(pipe):
        module._guard_settings = settings
        if not getattr(module, "_guard_hooked", False):
            module.register_forward_pre_hook(_only_when_guarded)
            module._guard_hooked = True


@contextlib.contextmanager
def running(pipe) -> Iterator[None]:
    """The guarded call of ``pipe`` is under way: its denoisers may run."""
    token = _RUNNING.set(_RUNNING.get() | {id(m) for m in denoisers(pipe)})
    try:
        yield
    finally:
        _RUNNING.reset(token)


def _only_when_guarded(module: torch.nn.Module, args) -> None:
    if id(module) in _RUNNING.get():
        return
    settings: Settings = module._guard_settings
    verdict = settings.guard.refuse(
        type(module).__name__, Surface.GENERATED_IMAGE,
        "this denoiser belongs to a protected pipeline and was called outside a guarded call (a pipeline "
        "built from the protected one's components, or the module called directly): protect() that pipeline",
        settings.account)
    raise GuardBlocked([verdict], "running a protected pipeline's denoiser")
