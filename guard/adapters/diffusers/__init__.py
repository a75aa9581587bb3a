"""Guarding a diffusers pipeline: every loader, every prompt argument, every output, early abort.

    pipe = protect(StableDiffusionPipeline.from_single_file(...), guard, account="alice")
    pipe.load_lora_weights("uploads/style.safetensors")   # the model-file gate runs first
    out = pipe("a castle at dusk")                          # prompts screened before the UNet runs
    out = pipe("a castle", guard_account="bob")            # a per-call account, for shared servers
    out.guard_verdicts                                     # one verdict per output image

`protect` swaps the instance's class for a subclass (same name) whose ``__call__`` and
loaders go through the `Guard` first, gates its components' own loaders the same way, and
protects any pipeline later built from its components (``from_pipe``, AutoPipeline,
``Pipeline(**components)``) as it is built. Its denoiser runs only inside a guarded call, so a
pipeline that shares it by any other route refuses to run. Every decision is the
guard's; this package only acts on it. The modules, in the order a call meets them:
`loaders` (what may be loaded, what a pipeline may hold), `prompts`, `early_abort`,
`outputs`; `sharing` keeps the components protected.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from PIL import Image

from guard.errors import ConfigError
from guard.facade import Guard
from guard.adapters.scan import find_model_files
from guard.verdict import Surface
from guard.adapters.diffusers import loaders, prompts, sharing
from guard.adapters.diffusers.early_abort import add_early_abort
from guard.adapters.diffusers.outputs import check_output
from guard.adapters.diffusers.settings import GuardBlocked, Settings, blocked_if

__all__ = ["GuardBlocked", "protect", "load_pipeline"]


def protect(pipe, guard: Guard, *, account: str | None = None, early_abort_every: int | None = None,
            preview_size: int | None = None, placeholder: Image.Image | None = None):
    """Instrument ``pipe`` in place and return it.

    Args:
        pipe: a diffusers pipeline with the usual ``__call__`` (SD 1.x, SDXL, SD3, Flux, ...).
        guard: the guard that decides.
        account: the account generating (allowlists, strikes, audit); a shared server passes
            ``guard_account=`` per call instead.
        early_abort_every: check a preview every k denoising steps and stop at a block
            (default: the policy's ``[generation] early_abort_every``; 0 is off).
        preview_size: the preview's largest edge in pixels (default: the policy's
            ``[generation] preview_edge``); never more than the image's own size.
        placeholder: image that replaces blocked outputs (default: black).

    Latent output (which cannot be checked) is refused or passed as the policy's
    ``[generation] latent_output`` says.
    """
    generation = guard.policy.generation
    every = generation.early_abort_every if early_abort_every is None else early_abort_every
    edge = generation.preview_edge if preview_size is None else preview_size
    if not isinstance(every, int) or every < 0:
        raise ValueError(f"early_abort_every={every!r} must be a number of steps (0: off)")
    if not isinstance(edge, int) or edge < 16:
        raise ValueError(f"preview_size={edge!r} must be at least 16 pixels")
    _instrument(pipe, Settings(guard, account, every, edge, placeholder))
    _follow_components()
    return pipe


def _instrument(pipe, settings: Settings) -> None:
    pipe.__class__ = loaders.guarded_class(type(pipe), {"__call__": _call})
    pipe._guard_settings = settings
    loaders.protect_components(pipe, settings)
    sharing.mark(pipe, settings)


def _follow_components() -> None:
    """Once per process: a pipeline that registers a protected pipeline's module (``from_pipe``,
    an AutoPipeline, ``Pipeline(**pipe.components)``) is protected while it is built, with
    the same guard and settings, so its loaders and calls are gated before anyone uses it."""
    from diffusers import DiffusionPipeline

    original = DiffusionPipeline.register_modules
    if getattr(original, "_guard_follows", False):
        return

    def register_modules(self, **modules):
        original(self, **modules)
        owner = next((vars(m)["_guard_settings"] for m in modules.values()
                      if hasattr(m, "__dict__") and "_guard_settings" in vars(m)), None)
        if owner is not None:
            _instrument(self, owner)

    register_modules._guard_follows = True
    register_modules.__doc__ = original.__doc__
    DiffusionPipeline.register_modules = register_modules


def load_pipeline(cls, path: str | os.PathLike, guard: Guard, *, account: str | None = None, **kwargs):
    """Scan a local Checkpoint file or pipeline folder, then load it with ``cls`` and protect it.

    Files: ``cls.from_single_file``. Folders: every weight file under them, symlinked
    component folders included (``from_pretrained`` follows them), then ``cls.from_pretrained``
    with safetensors required unless a pickle-based weight file passed the pickle gate
    (transformers may save text encoders as safetensors either way: both formats may then load).
    """
    path = Path(path)
    if path.is_file():
        verdicts = [guard.check_model_file(path, account=account)]
    elif path.is_dir():
        verdicts = [guard.check_model_file(f, account=account) for f in find_model_files([path], follow_links=True)]
    else:
        raise ConfigError(f"load_pipeline loads local files only ({path} is not one): download, then scan")
    if not verdicts:
        verdicts = [guard.refuse(str(path), Surface.MODEL_FILE, "the folder holds no weight files", account)]
    blocked_if(verdicts, "loading this checkpoint")
    if path.is_file():
        pipe = cls.from_single_file(str(path), **kwargs)
    else:
        if not any(v.facts.get("container", "").endswith("pickle") for v in verdicts):
            kwargs.setdefault("use_safetensors", True)  # nothing pickled passed the gate: none may load
        pipe = cls.from_pretrained(str(path), **kwargs)
    return protect(pipe, guard, account=account)


def _call(self, *args, guard_account: str | None = None, **kwargs):
    settings: Settings = self._guard_settings.for_account(guard_account)
    base_call = type(self).__mro__[1].__call__
    signature = inspect.signature(base_call)
    bound = signature.bind(self, *args, **kwargs)  # a TypeError here is the pipeline's own
    given = dict(bound.arguments)
    values = {name: p.default for name, p in signature.parameters.items() if p.default is not p.empty} | given
    parameters = list(signature.parameters)

    # 1. What the pipeline holds: only weights that passed the gate.
    loaders.check_admitted(self, settings)

    # 2. Prompts, before any GPU work.
    screened = prompts.screen(settings.guard, settings.account, values, prompts.prompt_names(parameters))
    verdicts = [v for found in screened.values() for v in found]
    blocked_if(verdicts, "this prompt")
    negatives = prompts.steered(values, screened)
    if negatives:
        if not prompts.negatives_apply(values, parameters) or not set(negatives) <= set(parameters):
            blocked_if([settings.guard.refuse(
                "negative_prompt", Surface.PROMPT, "the prompt needs steering through its negative prompt, and this "
                "call does not use one (classifier-free guidance off)", settings.account)], "this prompt")
        bound.arguments.update(negatives)

    # 3. Early abort, composed with the caller's own callback.
    aborted: dict = {}
    if settings.early_abort_every:
        add_early_abort(self, bound.arguments, settings, aborted)
        bound.arguments.setdefault("height", values.get("height"))
        bound.arguments.setdefault("width", values.get("width"))

    # 4. Generation: the denoiser runs only in here.
    with sharing.running(self):
        output = base_call(*bound.args, **bound.kwargs)
    if "step" in aborted:
        recorded = settings.guard.record_decision(aborted["verdicts"], settings.account,
                                                  early_abort_step=aborted["step"])
        raise GuardBlocked(recorded, "this generation", step=aborted["step"])

    # 5. Outputs.
    return check_output(output, values.get("output_type", "pil"), settings)
