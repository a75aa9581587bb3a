"""Converting a pickle-based checkpoint that passed the gate into safetensors.

Only files whose verdict is not ``block`` are converted, and even then they are loaded with
``torch.load(weights_only=True)``: two independent refusals stand between a hostile pickle
and code execution. Tensors that share storage are copied (safetensors stores each once).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from safetensors.torch import save_file

from guard.errors import GuardError
from guard.verdict import Verdict


class ConversionRefused(GuardError):
    def __init__(self, verdict: Verdict):
        self.verdict = verdict
        reasons = "; ".join(f.evidence.get("reason", f.subject) for f in verdict.findings)
        super().__init__(f"{verdict.subject} was not converted: the guard blocked it ({reasons})")


def convert_to_safetensors(guard, source: str | os.PathLike, target: str | os.PathLike) -> Verdict:
    """Gate ``source``; if it passes, write its tensors to ``target``. Returns the gate's verdict.

    Raises:
        ConversionRefused: the gate blocked the file (nothing is loaded or written).
        GuardError: the file passed the gate but holds no tensors, or torch refused it.
    """
    verdict = guard.check_model_file(source)
    if verdict.blocked:
        raise ConversionRefused(verdict)
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, EOFError, AttributeError, TypeError) as exc:
        raise GuardError(f"{source}: torch.load(weights_only=True) refused it: {exc}") from None
    tensors = _tensors(loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded)
    if not tensors:
        raise GuardError(f"{source}: no tensors to convert")
    metadata = {"converted_by": "diffusion-guard", "source_name": Path(source).name,
                "source_sha256": verdict.facts.get("sha256", "")}
    tmp = Path(f"{target}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o666 & ~_umask())  # safetensors writes 0600 whatever the umask; a model file is not a secret
    tmp.replace(target)
    return verdict


def _umask() -> int:
    """The process's umask, read without setting it (``os.umask`` would change it for every
    thread meanwhile)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)  # no /proc: the only other way
    os.umask(current)
    return current


def _tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj.detach().clone().contiguous()  # clone: no shared storage
    elif isinstance(obj, dict):
        for key, value in obj.items():
            out.update(_tensors(value, f"{prefix}{key}."))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            out.update(_tensors(value, f"{prefix}{i}."))
    return out
