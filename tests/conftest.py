"""Shared fixtures: the real tiny encoder, a bank built from the shipped demo references."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Tests must never reach a model hub: fail fast instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("GUARD_ALLOW_DOWNLOAD", None)

from guard import Guard, Policy  # noqa: E402
from guard.bank import build_bank  # noqa: E402
from guard.encoders import load_encoder  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO_REFS = ROOT / "examples" / "demo_refs"
DEMO_UPLOADS = ROOT / "examples" / "demo_uploads"


@pytest.fixture(scope="session")
def encoder():
    return load_encoder("tiny-test", device="cpu")


@pytest.fixture(scope="session")
def bank_file(tmp_path_factory, encoder) -> Path:
    path = tmp_path_factory.mktemp("bank") / "demo.safetensors"
    build_bank(DEMO_REFS, encoder).save(path)
    return path


@pytest.fixture(scope="session")
def guard(bank_file, encoder) -> Guard:
    from guard import Bank

    return Guard(Bank.load(bank_file), Policy.load(), encoder)


@pytest.fixture()
def refs_copy(tmp_path) -> Path:
    """A writable copy of the demo references."""
    dest = tmp_path / "refs"
    shutil.copytree(DEMO_REFS, dest)
    return dest
