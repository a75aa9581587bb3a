"""The one guard of a ComfyUI process: its configuration, and the request being executed.

Configuration comes from ``diffusion_guard.toml`` in the node pack's folder (written by
``guard comfyui install``), each key overridable by a ``GUARD_*`` variable. A guard that
cannot be loaded (no bank, a broken policy) leaves a `Runtime` with a ``problem``: every
workflow is then refused with it, so ComfyUI never runs unguarded.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import os
import tomllib
from pathlib import Path

from guard.facade import Guard

log = logging.getLogger("guard.comfyui")
CONFIG_NAME = "diffusion_guard.toml"
KEYS = ("bank", "policy", "state", "encoder", "device", "account_key")


@dataclasses.dataclass(frozen=True)
class Request:
    prompt_id: str | None
    account: str | None


#: The workflow ComfyUI is executing (set around its executor; tasks inherit it).
current = contextvars.ContextVar("diffusion_guard_request", default=Request(None, None))


def read_config(folder: Path) -> dict[str, str]:
    """The node pack's settings: the TOML file, then ``GUARD_<KEY>`` variables over it."""
    path = folder / CONFIG_NAME
    config: dict[str, str] = {}
    if path.is_file():
        with path.open("rb") as fh:
            loaded = tomllib.load(fh)
        unknown = sorted(set(loaded) - set(KEYS))
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(KEYS)}")
        config.update({k: str(v) for k, v in loaded.items()})
    for key in KEYS:
        if os.environ.get(f"GUARD_{key.upper()}"):
            config[key] = os.environ[f"GUARD_{key.upper()}"]
    return config


class Runtime:
    """The loaded guard, or why there is none."""

    def __init__(self, guard: Guard | None, problem: str | None, account_key: str = "guard_account"):
        self.guard, self.problem, self.account_key = guard, problem, account_key

    @classmethod
    def load(cls, folder: Path, device: str | None = None) -> "Runtime":
        config: dict[str, str] = {}
        try:
            config = read_config(folder)
            if not config.get("bank"):
                raise ValueError(f"no bank configured: set bank = \"…\" in {folder / CONFIG_NAME} "
                                 f"(guard comfyui install) or GUARD_BANK")
            options = {"device": config.get("device") or device}
            guard = Guard.open(config["bank"], config.get("policy"), config.get("encoder"), config.get("state"),
                               **options)
            log.info("diffusion-guard: bank %s, %d characters", config["bank"], len(guard.bank.characters))
            return cls(guard, None, config.get("account_key", "guard_account"))
        except Exception as exc:  # noqa: BLE001 (any reason at all: refuse every workflow with it)
            problem = f"diffusion-guard is not working, so every workflow is refused: {type(exc).__name__}: {exc}"
            log.error(problem)
            return cls(None, problem, config.get("account_key", "guard_account"))
