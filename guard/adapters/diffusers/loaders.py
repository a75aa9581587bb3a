"""Every loader a pipeline or its components expose for user weights goes through the gate.

The loaders are discovered, not listed: each ``load_*`` method that diffusers' loader mixins
(and transformers' PEFT integration, for text encoders) define on the pipeline's class or a
component's class is replaced, on that instance's class, by one that scans what the loader
would read first. Loading through a component (``pipe.unet.load_lora_adapter``, the
``load_lora_into_*`` class methods, which call it, a converted pipeline sharing the UNet) is
gated as well, because the component itself is.

What a loader reads, from its arguments:
- a state dict (or an embedding tensor): saved as the safetensors file it would be, and scanned;
- a file: that file;
- a folder: every weight file under it (symlinks followed), plus the file ``weight_name``
  names. That is a superset of what diffusers resolves (its weight-name preference,
  ``subfolder``, the pickle fallback), so no naming trick changes what is scanned; a folder
  is loaded only if everything in it passes;
- anything else (a Hub id, say): refused. The guard scans local files; download first.

Weights can also reach a module without a loader (``peft.inject_adapter_in_model``,
``tokenizer.add_tokens``). Each component therefore carries the set of adapters, added
tokens and weighted attention processors the gate admitted; a guarded call whose pipeline
holds anything else is refused before the denoiser runs (`check_admitted`).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import tempfile
import types
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from guard.adapters.scan import find_model_files
from guard.verdict import Surface, Verdict
from guard.adapters.diffusers.settings import GuardBlocked, Settings, blocked_if

#: Where the methods that load user weights are defined.
_LOADER_MODULES = ("diffusers.loaders", "transformers.integrations")
#: The argument naming what a loader reads, as diffusers and transformers call it.
_SOURCE_ARGS = ("pretrained_model_name_or_path_or_dict", "pretrained_model_name_or_path", "peft_model_id")
_STATE_DICT_ARGS = ("adapter_state_dict",)  # transformers' load_adapter: weights given in memory

#: Set while an admitted load runs: the component loaders it calls have nothing left to scan.
_ADMITTED: contextvars.ContextVar[bool] = contextvars.ContextVar("guard_admitted_load", default=False)

_GUARDED_CLASSES: dict[type, type] = {}


def discover(cls: type) -> list[str]:
    """The names of the ``load_*`` instance methods the loader mixins in ``cls``'s MRO define."""
    names: list[str] = []
    for klass in cls.__mro__:
        if not getattr(klass, "__module__", "").startswith(_LOADER_MODULES):
            continue
        names += [name for name, attr in vars(klass).items()
                  if name.startswith("load_") and inspect.isfunction(attr) and name not in names]
    return names


def guarded_class(base: type, extra: Mapping[str, Any] | None = None) -> type:
    """``base`` with its loaders gated (one subclass per base class, same name and module)."""
    if getattr(base, "_guard_protected", False):
        return base
    if base not in _GUARDED_CLASSES:
        body = {name: _gated(name, getattr(base, name)) for name in discover(base)}
        body.update(extra or {}, _guard_protected=True, __module__=base.__module__, __qualname__=base.__qualname__)
        _GUARDED_CLASSES[base] = type(base.__name__, (base,), body)
    return _GUARDED_CLASSES[base]


def protect_components(pipe, settings: Settings) -> None:
    """Gate every component's own loaders and record what each holds now as admitted.

    A component keeps its class (``from_pipe`` only hands over a module whose type is exactly
    the one it expects): its gated loaders are bound on the instance, which ``copy.deepcopy``
    rebinds to the copy."""
    for component in components(pipe).values():
        for name in discover(type(component)):
            if name not in vars(component):
                setattr(component, name, types.MethodType(_gated_for(type(component), name), component))
        component._guard_settings = settings
    admit(pipe)


@functools.cache
def _gated_for(cls: type, name: str) -> Callable:
    return _gated(name, getattr(cls, name))


def components(pipe) -> dict[str, Any]:
    """The pipeline's modules and tokenizers, by name: what can hold user weights. Read from
    its config, as ``pipe.components`` is, but usable while the pipeline is being built."""
    config = getattr(pipe, "config", {})  # a module's entry is its (library, class) pair
    found = {name: getattr(pipe, name, None) for name, value in config.items()
             if not name.startswith("_") and isinstance(value, (list, tuple))}
    return {name: c for name, c in found.items()
            if isinstance(c, torch.nn.Module) or callable(getattr(c, "get_added_vocab", None))}


# What a component holds -------------------------------------------------------------------------
def holdings(component) -> frozenset[str]:
    """The adapters, added tokens and weighted attention processors ``component`` holds."""
    held: set[str] = set()
    if isinstance(component, torch.nn.Module):
        config = getattr(component, "peft_config", None)
        held |= {f"adapter {name}" for name in (config or {})}
        for module in component.modules():
            for layer_names in (getattr(module, "adapter_layer_names", None),):
                for attr in layer_names or ():
                    layers = getattr(module, attr, None)
                    held |= {f"adapter {name}" for name in getattr(layers, "keys", lambda: ())()}
        processors = getattr(component, "attn_processors", None)
        if isinstance(processors, Mapping):
            held |= {f"attention processor {type(p).__name__}" for p in processors.values()
                     if isinstance(p, torch.nn.Module) and any(True for _ in p.parameters())}
        projection = getattr(component, "encoder_hid_proj", None)
        if isinstance(projection, torch.nn.Module) and type(projection).__name__.startswith(("IPAdapter", "MultiIP")):
            held.add(f"image projection {type(projection).__name__}")
    added = getattr(component, "get_added_vocab", None)
    if callable(added):
        held |= {f"token {token}" for token in added()}
    return frozenset(held)


def admit(owner) -> None:
    """Record what ``owner`` (a pipeline: each component; or one component) holds as admitted."""
    owned = [owner] if isinstance(owner, torch.nn.Module) else components(owner).values()
    for component in owned:
        component._guard_admitted = getattr(component, "_guard_admitted", frozenset()) | holdings(component)


def check_admitted(pipe, settings: Settings) -> None:
    """Refuse a call whose pipeline holds weights that did not pass the gate."""
    for name, component in components(pipe).items():
        unknown = holdings(component) - getattr(component, "_guard_admitted", frozenset())
        if unknown:
            verdict = settings.guard.refuse(
                name, Surface.MODEL_FILE,
                "weights reached this component without passing the guard's loaders: " + ", ".join(sorted(unknown)),
                settings.account)
            raise GuardBlocked([verdict], "this generation")


# The gated loader --------------------------------------------------------------------------------
def _gated(name: str, original: Callable) -> Callable:
    signature = inspect.signature(original)

    def loader(self, *args, **kwargs):
        if _ADMITTED.get():
            return original(self, *args, **kwargs)
        settings: Settings = self._guard_settings
        blocked_if(_scan_arguments(settings, signature, self, args, kwargs, name), f"{name}")
        token = _ADMITTED.set(True)
        try:
            result = original(self, *args, **kwargs)
        finally:
            _ADMITTED.reset(token)
        admit(self)
        return result

    loader.__name__ = loader.__qualname__ = name
    loader.__doc__ = f"``{name}``, after the guard's model-file gate passed what it reads.\n\n{original.__doc__ or ''}"
    return loader


def _scan_arguments(settings: Settings, signature: inspect.Signature, owner, args, kwargs,
                    name: str) -> list[Verdict]:
    guard, account = settings.guard, settings.account
    try:
        bound = signature.bind(owner, *args, **kwargs)
    except TypeError as exc:
        return [guard.refuse(name, Surface.MODEL_FILE, f"{name} called with arguments it does not take: {exc}",
                             account)]
    given = {**bound.arguments, **bound.arguments.get("kwargs", {})}
    sources = [given[arg] for arg in (*_SOURCE_ARGS, *_STATE_DICT_ARGS) if given.get(arg) is not None]
    if not sources:
        return [guard.refuse(name, Surface.MODEL_FILE, f"{name}: no weights source the guard knows how to read",
                             account)]
    names, subfolders = _as_list(given.get("weight_name")), _as_list(given.get("subfolder"))
    verdicts: list[Verdict] = []
    with tempfile.TemporaryDirectory(prefix="guard-load-") as tmp:
        for source in sources:
            for i, item in enumerate(source if isinstance(source, (list, tuple)) else [source]):
                for path, subject, reason in _files(item, names, subfolders, i, tmp):
                    if path is None:
                        verdicts.append(guard.refuse(subject, Surface.MODEL_FILE, reason, account))
                    else:
                        verdicts.append(guard.check_model_file(path, account=account, subject=subject))
    return verdicts


_NOT_LOCAL = ("not a local file, folder or state dict: the guard scans what is loaded before it is loaded, "
              "so download it first and load the local copy")


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _files(item, names: list, subfolders: list, i: int, tmp: str) -> Iterable[tuple[str | None, str, str]]:
    """(file to scan, subject, why not) for one source; a ``None`` file is refused for that reason."""
    if isinstance(item, (Mapping, torch.Tensor)):
        yield (_state_dict_file(item, os.path.join(tmp, f"state_dict_{i}.safetensors")), "<state dict>",
               "a state dict holding values other than tensors, text and numbers")
        return
    if not isinstance(item, (str, os.PathLike)):
        yield None, f"<{type(item).__name__}>", f"a {type(item).__name__} is not a weights source the guard reads"
        return
    path = Path(os.fspath(item))
    if path.is_file():
        yield str(path), str(path), ""
    elif path.is_dir():
        weight = names[i] if i < len(names) else (names[0] if len(names) == 1 else None)
        sub = subfolders[i] if i < len(subfolders) else (subfolders[0] if len(subfolders) == 1 else None)
        wanted = [path / weight, path / (sub or "") / weight] if isinstance(weight, str) else []
        found = dict.fromkeys([*(str(p) for p in wanted if p.is_file()), *find_model_files([path], follow_links=True)])
        if not found:
            yield None, str(path), "the folder holds no weight files"
        for file in found:
            yield file, file, ""
    else:
        yield None, str(item), _NOT_LOCAL


def _state_dict_file(state: Mapping | torch.Tensor, path: str) -> str | None:
    """A state dict as the safetensors file it would be (nested keys joined with dots; text
    values kept as metadata, so the metadata screen reads them); ``None`` if it holds anything else."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    texts: dict[str, str] = {}

    def walk(prefix: str, value) -> bool:
        if isinstance(value, torch.Tensor):
            tensors[prefix or "tensor"] = value.detach().contiguous().cpu()
        elif isinstance(value, str):
            texts[prefix] = value
        elif isinstance(value, Mapping):
            return all(walk(f"{prefix}.{k}" if prefix else str(k), v) for k, v in value.items())
        elif isinstance(value, (int, float)) or value is None:
            texts[prefix] = repr(value)
        else:
            return False
        return True

    if not walk("", state):
        return None
    try:
        save_file(tensors, path, metadata=texts or None)
    except (ValueError, RuntimeError):  # shared storage, an odd dtype: not a file the guard can read
        return None
    return path
