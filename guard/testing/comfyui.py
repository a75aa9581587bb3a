"""Where ComfyUI's source is, for tests and benchmarks that check the guard against it.

``GUARD_COMFYUI_SRC`` names an unpacked checkout; otherwise the copy in ``../shared/vendor``
is unpacked once into ``.cache/`` beside the project. Nothing is downloaded.
"""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARBALL = ROOT.parent / "shared" / "vendor" / "comfyui-a125cd84.tar.gz"


def comfyui_source() -> Path | None:
    """The folder holding ComfyUI's ``main.py`` and ``comfy/``, or ``None`` when there is none."""
    named = os.environ.get("GUARD_COMFYUI_SRC")
    if named:
        return Path(named) if (Path(named) / "comfy").is_dir() else None
    target = ROOT / ".cache" / "comfyui-src"
    if (target / "comfy").is_dir():
        return target
    if not TARBALL.is_file():
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(TARBALL) as tar:
        tar.extractall(target.parent, filter="data")
    return target if (target / "comfy").is_dir() else None


def comfy_utils():
    """ComfyUI's ``comfy.utils`` (its key maps between layouts), or ``None`` without ComfyUI."""
    source = comfyui_source()
    if source is None:
        return None
    if str(source) not in sys.path:
        sys.path.insert(0, str(source))
    try:
        import comfy.utils
    except ImportError:  # a dependency of ComfyUI's (einops) is missing
        return None
    return comfy.utils
