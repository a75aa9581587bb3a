"""diffusion-guard: keep protected characters out of what diffusion platforms train, load,
generate and publish.

The public API is re-exported here; everything else is private. The names are resolved
when first used, so that ``import guard`` (and ``guard --version``, or a model-file scan)
does not import torch.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Guard": "guard.facade", "Policy": "guard.policy",
    "Verdict": "guard.verdict", "Finding": "guard.verdict", "Action": "guard.verdict",
    "Signal": "guard.verdict", "Surface": "guard.verdict",
    "Bank": "guard.bank", "Character": "guard.bank", "build_bank": "guard.bank",
    "load_encoder": "guard.encoders",
    "GuardError": "guard.errors", "ConfigError": "guard.errors", "BankError": "guard.errors",
    "EncoderUnavailable": "guard.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'guard' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__():
    return sorted(__all__)
