"""Exceptions the guard raises on purpose. Bad *inputs* are verdicts, not exceptions."""


class GuardError(Exception):
    """Base class: the guard could not do what was asked."""


class ConfigError(GuardError):
    """A bank, policy or encoder spec is unusable; the message says how to fix it."""


class EncoderUnavailable(ConfigError):
    """The weights for a production encoder spec are not available here."""


class BankError(ConfigError):
    """A bank file is malformed or does not fit the encoder in use."""
