"""The policy's typed sections: one frozen dataclass per TOML table.

Fields carry the rule their value must follow and no default: every value comes from the
policy file, layered over the shipped ``default-policy.toml`` (where each is documented).
"""

from __future__ import annotations

from dataclasses import dataclass

from guard.policy.schema import ACTIONS, boolean, choice, integer, number, setting, strings, text


@dataclass(frozen=True)
class PolicySettings:
    """``[policy]``"""

    name: str = setting(text())
    fail_mode: str = setting(choice("closed", "review", "open"))
    top_k: int = setting(integer(1))
    inherit: bool = setting(boolean())


@dataclass(frozen=True)
class TextSettings:
    """``[text]``: prompt and metadata screening."""

    benign: tuple[str, ...] = setting(strings())
    fuzzy: bool = setting(boolean())
    #: A misspelt name scores 1.0 less this per edit.
    fuzzy_penalty: float = setting(number(0.0, 0.5))
    #: Longer prompts are not screened: a format verdict (real prompts are under 2,000).
    max_prompt_chars: int = setting(integer(1))
    window_words: int = setting(integer(1))
    window_stride: int = setting(integer(1))
    steer: bool = setting(boolean())
    #: When prompts are embedded against the bank's names: "always", "unmatched" (not when the
    #: names already block), "off".
    clip_text: str = setting(choice("unmatched", "always", "off"))


@dataclass(frozen=True)
class ModelSettings:
    """``[model]``: model files."""

    hash_mismatch: str = setting(choice(*ACTIONS))
    blake3: bool = setting(boolean())
    substantial_share: float = setting(number(0.05, 1.0))


@dataclass(frozen=True)
class PdqSettings:
    """``[pdq]``: re-uploads of taken-down images."""

    max_distance: int = setting(integer(0, 256))
    min_quality: int = setting(integer(0, 100))
    dihedral: bool = setting(boolean())


@dataclass(frozen=True)
class DatasetSettings:
    """``[dataset]``: training sets."""

    flag_images: int = setting(integer(1))
    block_share: float = setting(number(0.0, 1.0))
    unreadable_images: str = setting(choice(*ACTIONS))


@dataclass(frozen=True)
class StrikesSettings:
    """``[strikes]``: blocked attempts per account."""

    enabled: bool = setting(boolean())
    window_days: float = setting(number(0.0))
    warn: int = setting(integer(1))
    notify: int = setting(integer(1))
    suspend: int = setting(integer(1))


@dataclass(frozen=True)
class GenerationSettings:
    """``[generation]``: what the generation hooks do where no score decides."""

    latent_output: str = setting(choice("refuse", "pass"))
    unscreened_prompt: str = setting(choice("allow", "block"))
    early_abort_every: int = setting(integer(0))
    preview_edge: int = setting(integer(16))


#: Section name -> its type, in the order the shipped file documents them.
@dataclass(frozen=True)
class RetentionSettings:
    """``[retention]``: how long the audit log keeps personal data in the clear."""

    prompt_days: float = setting(number(0.0))
    account_days: float = setting(number(0.0))


SECTIONS = {"policy": PolicySettings, "text": TextSettings, "model": ModelSettings, "pdq": PdqSettings,
            "dataset": DatasetSettings, "strikes": StrikesSettings, "generation": GenerationSettings,
            "retention": RetentionSettings}
