"""Encoder spec strings: which CLIP model and which weights.

Accepted forms::

    ViT-L-14/openai                 open_clip architecture / pretrained tag
    ViT-L-14:/models/clip.safetensors   architecture and a local weights file
    hf-hub:org/repo                 an open_clip model repo on the Hugging Face hub
    local-dir:/models/clip          a folder with open_clip_config.json and weights
    tiny-test                       the shipped tiny encoder (tests and the offline demo only)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from guard.errors import ConfigError

TINY_TEST = "tiny-test"
_HF = "hf-hub:"
_LOCAL_DIR = "local-dir:"


class SpecKind(str, enum.Enum):
    TAG = "tag"
    FILE = "file"
    HF_HUB = "hf-hub"
    LOCAL_DIR = "local-dir"
    TINY_TEST = "tiny-test"


@dataclass(frozen=True)
class EncoderSpec:
    raw: str
    kind: SpecKind
    arch: str | None = None
    tag: str | None = None
    location: str | None = None  # file path, directory or hub id


def parse_spec(spec: str) -> EncoderSpec:
    """Parse ``spec``; raise `ConfigError` naming the accepted forms when it fits none."""
    text = (spec or "").strip()
    if not text:
        raise ConfigError("encoder spec is empty; " + _FORMS)
    if text == TINY_TEST:
        return EncoderSpec(text, SpecKind.TINY_TEST, arch=TINY_TEST)
    if text.startswith(_HF):
        if not text[len(_HF):]:
            raise ConfigError(f"encoder={spec!r}: nothing after 'hf-hub:'; " + _FORMS)
        return EncoderSpec(text, SpecKind.HF_HUB, location=text[len(_HF):])
    if text.startswith(_LOCAL_DIR):
        if not text[len(_LOCAL_DIR):]:
            raise ConfigError(f"encoder={spec!r}: nothing after 'local-dir:'; " + _FORMS)
        return EncoderSpec(text, SpecKind.LOCAL_DIR, location=text[len(_LOCAL_DIR):])
    if ":" in text:
        arch, _, path = text.partition(":")
        if arch and path:
            return EncoderSpec(text, SpecKind.FILE, arch=arch, location=path)
    if "/" in text:
        arch, _, tag = text.partition("/")
        if arch and tag and "/" not in tag:
            return EncoderSpec(text, SpecKind.TAG, arch=arch, tag=tag)
    raise ConfigError(f"encoder={spec!r} is not an encoder spec; " + _FORMS)


_FORMS = (
    "use ARCH/TAG (e.g. ViT-L-14/openai), ARCH:/path/to/weights.safetensors, "
    "hf-hub:ORG/REPO, local-dir:/path/to/folder, or tiny-test (tests only)"
)


def meaningful(name: str) -> bool:
    """Whether an encoder's similarities mean anything: every encoder but the tiny test one."""
    return name != TINY_TEST


def encoder_label(name: str) -> str:
    """How verdicts name an encoder: the tiny test encoder always says it means nothing."""
    return name if meaningful(name) else f"{name} (no semantic meaning: tests and demo only)"
