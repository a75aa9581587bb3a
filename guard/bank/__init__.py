"""The bank of protected characters: who they are, and what they look like to the encoder."""

from guard.bank.build import add_characters, build_bank
from guard.bank.character import Character, Reference, read_character_dir
from guard.bank.store import Bank, Entry

__all__ = ["Bank", "Entry", "Character", "Reference", "build_bank", "add_characters", "read_character_dir"]
