"""Exceptions the guard raises on purpose. Bad *inputs* are verdicts, not exceptions."""


class GuardError(Exception):
    """Base class: the guard could not do what was asked."""


class ConfigError(GuardError):
    """A bank, policy or encoder spec is unusable; the message says how to fix it."""


class EncoderUnavailable(ConfigError):
    """The weights for a production encoder spec are not available here."""


class DeviceUnavailable(ConfigError):
    """The device asked for (``--device``) does not exist or is not available here."""


class BankError(ConfigError):
    """A bank file is malformed or does not fit the encoder in use."""


class PathNotAllowed(ConfigError):
    """A path a request names (or a bundle names inside it) lies outside the allowed folders."""

    def __init__(self, path: str):
        super().__init__(f"{path} is outside the folders this service may read")
        self.path = path
