"""diffusion-guard: keep protected characters out of what diffusion platforms train, load,
generate and publish.

The public API is re-exported here; everything else is private.
"""

__version__ = "0.1.0"

from guard.bank import Bank, Character, build_bank  # noqa: E402
from guard.encoders import load_encoder  # noqa: E402
from guard.errors import BankError, ConfigError, EncoderUnavailable, GuardError  # noqa: E402
from guard.facade import Guard  # noqa: E402
from guard.policy import Policy  # noqa: E402
from guard.verdict import Action, Finding, Signal, Surface, Verdict  # noqa: E402

__all__ = [
    "Guard", "Verdict", "Finding", "Action", "Signal", "Surface", "Policy", "Bank", "Character",
    "build_bank", "load_encoder", "GuardError", "ConfigError", "BankError", "EncoderUnavailable",
    "__version__",
]
