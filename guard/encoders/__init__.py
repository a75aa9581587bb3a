"""Image and text encoders: open_clip behind a small interface."""

from .openclip import OpenClipEncoder, encoder_name, load_encoder
from .spec import TINY_TEST, EncoderSpec, parse_spec

Encoder = OpenClipEncoder


def encoder_label(name: str) -> str:
    """How verdicts name an encoder: the tiny test encoder always says it means nothing."""
    return f"{name} (no semantic meaning: tests and demo only)" if name == TINY_TEST else name

__all__ = ["Encoder", "OpenClipEncoder", "load_encoder", "encoder_name", "encoder_label", "parse_spec", "EncoderSpec", "TINY_TEST"]
