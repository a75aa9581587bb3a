"""Turning untrusted image inputs into RGB pictures, or a reason they can't be.

Every failure here is an `UnreadableImage` carrying a human reason; callers make it a
``format`` finding. Nothing in this module lets a PIL exception escape.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]

#: Largest image (in pixels) we decode: 8192 x 8192. PIL's own guard only warns below 2x its limit.
MAX_PIXELS = 8192 * 8192
#: Largest encoded file we read into memory.
MAX_FILE_BYTES = 256 * 1024 * 1024
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (and below it, if ``recursive``), sorted."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and is_image(p))


class UnreadableImage(ValueError):
    """An input that cannot be turned into a picture; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def describe(item: ImageInput, index: int) -> str:
    """A subject name for verdicts: the path for files, a position otherwise."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    return f"image[{index}]"


def open_rgb(item: ImageInput, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, str]:
    """Decode ``item`` into an RGB image (EXIF orientation applied) and its SHA-256.

    Args:
        item: a path, encoded bytes, a PIL image or an HxWxC uint8 array.
        max_pixels: refuse images with more pixels than this (decompression bombs).

    Returns:
        ``(image, sha256_hex)``; the digest is of the encoded bytes for files and bytes,
        of the decoded pixels otherwise.

    Raises:
        UnreadableImage: missing file, not an image, truncated, too large, odd mode.
    """
    if isinstance(item, Image.Image):
        return _to_rgb(item), _pixel_digest(item)
    if isinstance(item, np.ndarray):
        return _from_array(item)
    if isinstance(item, (str, os.PathLike)):
        data = _read_file(Path(item))
    elif isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
    else:
        raise UnreadableImage(f"unsupported image input of type {type(item).__name__}")
    digest = hashlib.sha256(data).hexdigest()
    return _decode(data, max_pixels), digest


def _read_file(path: Path) -> bytes:
    try:
        if not path.is_file():
            raise UnreadableImage(f"not a regular file: {path}")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise UnreadableImage(f"file is {size} bytes, more than the {MAX_FILE_BYTES} byte limit")
        return path.read_bytes()
    except OSError as exc:
        raise UnreadableImage(f"cannot read {path}: {exc.strerror or exc}") from None


def _decode(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise UnreadableImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            # Checked before decoding: the header alone says how big the bitmap would be.
            if width * height > max_pixels:
                raise UnreadableImage(
                    f"image is {width}x{height} = {width * height} pixels, more than the "
                    f"{max_pixels} pixel limit (possible decompression bomb)"
                )
            _load_strictly(img)
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(f"decompression bomb refused: {exc}") from None
    except UnidentifiedImageError:
        raise UnreadableImage("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        # PIL reports truncation as OSError("image file is truncated ...").
        raise UnreadableImage(f"corrupt or truncated image: {exc}") from None
    return _to_rgb(img)


_STRICT = threading.Lock()


def _load_strictly(img: Image.Image) -> None:
    """Decode, refusing truncated data even when something in the host process set Pillow's
    global ``ImageFile.LOAD_TRUNCATED_IMAGES`` (WeasyPrint does at import): a truncated
    upload would otherwise be padded with grey and checked as if it were the image."""
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        img.load()
        return
    with _STRICT:
        previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        try:
            img.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _to_rgb(img: Image.Image) -> Image.Image:
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # a broken EXIF block is not a reason to refuse the pixels
        pass
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        # Transparent areas are judged as they are usually shown: over white.
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    try:
        return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    except (ValueError, OSError) as exc:
        raise UnreadableImage(f"cannot convert image mode {mode} to RGB: {exc}") from None


def _from_array(arr: np.ndarray) -> tuple[Image.Image, str]:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise UnreadableImage(f"array of shape {arr.shape} is not HxW, HxWx1, HxWx3 or HxWx4")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            if not np.isfinite(arr).all():
                raise UnreadableImage("array contains NaN or infinite values")
            arr = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        else:
            raise UnreadableImage(f"array dtype {arr.dtype} is neither uint8 nor float in [0, 1]")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    mode = "RGBA" if arr.shape[2] == 4 else "RGB"
    img = Image.fromarray(np.ascontiguousarray(arr), mode)
    return _to_rgb(img), hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _pixel_digest(img: Image.Image) -> str:
    h = hashlib.sha256(f"{img.mode}:{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()
