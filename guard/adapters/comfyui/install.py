"""``guard comfyui install``: the node-pack folder ComfyUI loads, and its configuration."""

from __future__ import annotations

import json
import os
from pathlib import Path

from guard.adapters.comfyui.runtime import CONFIG_NAME, KEYS
from guard.errors import ConfigError

PACK = "diffusion_guard"

# If the guard cannot even be imported (not installed in ComfyUI's Python, say), ComfyUI
# would log the failure and run unguarded: the shim then refuses every workflow itself.
SHIM = '''"""diffusion-guard node pack (written by `guard comfyui install`; settings in diffusion_guard.toml)."""
try:
    from guard.adapters.comfyui import setup

    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = setup(__file__)
except Exception as exc:  # noqa: BLE001
    import logging

    from server import PromptServer

    REASON = f"diffusion-guard could not start, so every workflow is refused: {type(exc).__name__}: {exc}"
    logging.error(REASON)

    class DiffusionGuardRefusal:
        RETURN_TYPES = ()
        FUNCTION = "refuse"
        OUTPUT_NODE = True
        CATEGORY = "diffusion-guard"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"reason": ("STRING", {"default": ""})}}

        @classmethod
        def VALIDATE_INPUTS(cls, reason):
            return reason or REASON

        def refuse(self, reason):
            raise RuntimeError(reason or REASON)

    def _refuse(body):
        data = dict(body) if isinstance(body, dict) else {}
        data["prompt"] = {"diffusion_guard": {"class_type": "DiffusionGuardRefusal", "inputs": {"reason": REASON}}}
        data.pop("partial_execution_targets", None)
        return data

    PromptServer.instance.add_on_prompt_handler(_refuse)
    NODE_CLASS_MAPPINGS = {"DiffusionGuardRefusal": DiffusionGuardRefusal}
    NODE_DISPLAY_NAME_MAPPINGS = {"DiffusionGuardRefusal": "Refused by diffusion-guard"}
'''


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON's string escapes are TOML's basic-string ones


def install(comfyui: str | os.PathLike, **settings: str | None) -> Path:
    """Write ``custom_nodes/diffusion_guard/`` into a ComfyUI folder; returns the pack folder."""
    root = Path(comfyui)
    if not (root / "custom_nodes").is_dir():
        raise ConfigError(f"{root}: not a ComfyUI folder (no custom_nodes/ in it); give the folder holding main.py "
                          "or --base-directory")
    pack = root / "custom_nodes" / PACK
    pack.mkdir(exist_ok=True)
    (pack / "__init__.py").write_text(SHIM, encoding="utf-8")
    lines = ["# diffusion-guard in ComfyUI: GUARD_<KEY> variables override these.",
             "# account_key: the extra_data field of POST /prompt that names the account."]
    for key in KEYS:
        value = settings.get(key)
        if value:
            value = os.path.abspath(value) if key in ("bank", "policy", "state") else value
            lines.append(f"{key} = {_toml_string(value)}")
    (pack / CONFIG_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return pack
