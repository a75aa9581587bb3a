"""Image and text encoders: open_clip behind a small interface."""

from .openclip import OpenClipEncoder, load_encoder
from .spec import TINY_TEST, EncoderSpec, parse_spec

Encoder = OpenClipEncoder

__all__ = ["Encoder", "OpenClipEncoder", "load_encoder", "parse_spec", "EncoderSpec", "TINY_TEST"]
