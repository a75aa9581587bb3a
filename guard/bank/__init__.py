"""The bank of protected characters: who they are, and what they look like to the encoder."""

from .build import add_characters, build_bank
from .character import Character, Reference, read_character_dir
from .store import Bank, Entry

__all__ = ["Bank", "Entry", "Character", "Reference", "build_bank", "add_characters", "read_character_dir"]
