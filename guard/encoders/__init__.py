"""Image and text encoders: open_clip behind the `Encoder` protocol.

open_clip and torch are imported when an encoder is first loaded or named, never by
importing this package: a model-file scan needs neither.
"""

from guard.encoders.protocol import Encoder
from guard.encoders.spec import TINY_TEST, EncoderSpec, encoder_label, meaningful, parse_spec


def load_encoder(spec: str, **options):
    """Build the encoder ``spec`` names (see `guard.encoders.openclip.load_encoder`)."""
    from guard.encoders.openclip import load_encoder as load

    return load(spec, **options)


def encoder_name(spec: str) -> str:
    """The canonical identity of ``spec`` (see `guard.encoders.openclip.encoder_name`)."""
    from guard.encoders.openclip import encoder_name as name

    return name(spec)


def __getattr__(name: str):
    if name == "OpenClipEncoder":
        from guard.encoders.openclip import OpenClipEncoder

        return OpenClipEncoder
    raise AttributeError(f"module 'guard.encoders' has no attribute {name!r}")


__all__ = ["Encoder", "OpenClipEncoder", "load_encoder", "encoder_name", "encoder_label", "meaningful",
           "parse_spec", "EncoderSpec", "TINY_TEST"]
