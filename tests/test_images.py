"""Hostile and unusual images become verdicts, never tracebacks."""

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from guard import Action, Signal, Surface
from guard.extract.images import UnreadableImage, open_rgb
from guard.testing.synthetic import character, render


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny PNG whose header promises a 400-megapixel bitmap."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    row = b"\x00" + b"\x00" * width
    idat = zlib.compress(row * 64, 9)  # only 64 rows present: decoding would also be truncated
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture()
def drawing():
    return render(character(11), 0, 128)


def test_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb())
    start = time.monotonic()
    with pytest.raises(UnreadableImage, match="decompression bomb"):
        open_rgb(path)
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("host_allows_truncated", [False, True])
def test_truncated_jpeg_is_unreadable(drawing, monkeypatch, host_allows_truncated):
    """Also when the host process told Pillow to pad truncated images (WeasyPrint does)."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", host_allows_truncated)
    data = encoded(drawing, "JPEG", quality=90)
    with pytest.raises(UnreadableImage, match="truncated"):
        open_rgb(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is host_allows_truncated  # the host's setting is left as it was


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"definitely not an image", "not a recognised image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image"),
])
def test_garbage_is_unreadable(data, reason):
    with pytest.raises(UnreadableImage, match=reason):
        open_rgb(data)


def test_cmyk_sixteen_bit_palette_and_la_become_rgb(drawing):
    cmyk = encoded(drawing.convert("CMYK"), "JPEG")
    sixteen = Image.fromarray(np.asarray(drawing.convert("L"), dtype=np.uint16) * 257)
    assert sixteen.mode.startswith("I;16")
    palette = drawing.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    la = drawing.convert("LA")
    for item in (cmyk, encoded(sixteen, "PNG"), encoded(palette, "PNG", transparency=0), la,
                 encoded(drawing.convert("1"), "PNG")):
        img, digest = open_rgb(item)
        assert img.mode == "RGB" and img.size == (128, 128) and len(digest) == 64


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    img, _ = open_rgb(encoded(rgba, "PNG"))
    assert img.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    wide = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    img, _ = open_rgb(encoded(wide, "JPEG", exif=exif.tobytes()))
    assert img.size == (20, 40)


def test_arrays_of_each_kind(drawing):
    arr = np.asarray(drawing)
    assert open_rgb(arr)[0].size == (128, 128)
    assert open_rgb(arr.astype(np.float32) / 255.0)[0].size == (128, 128)
    assert open_rgb(arr[:, :, 0])[0].mode == "RGB"
    with pytest.raises(UnreadableImage, match="NaN"):
        open_rgb(np.full((4, 4, 3), np.nan, dtype=np.float32))
    with pytest.raises(UnreadableImage, match="shape"):
        open_rgb(np.zeros((4, 4, 5), dtype=np.uint8))


def test_guard_turns_every_bad_input_into_a_format_verdict(guard, tmp_path, drawing):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb())
    truncated = tmp_path / "cut.jpg"
    full = encoded(drawing, "JPEG")
    truncated.write_bytes(full[: len(full) // 3])
    cmyk = tmp_path / "cmyk.jpg"
    cmyk.write_bytes(encoded(render(character(501), 0, 128).convert("CMYK"), "JPEG"))
    folder = tmp_path / "a_folder.png"
    folder.mkdir()
    inputs = [str(bomb), str(truncated), str(tmp_path / "missing.png"), str(folder), b"\x00\x01", str(cmyk)]
    verdicts = guard.check_images(inputs, surface=Surface.COVER_IMAGE)
    assert [v.subject for v in verdicts[:4]] == inputs[:4]
    for v in verdicts[:5]:
        assert v.action is Action.BLOCK and v.error is None
        assert v.findings[0].signal is Signal.FORMAT and v.findings[0].evidence["reason"]
    assert verdicts[5].action is Action.ALLOW  # the CMYK picture of an unrelated drawing is fine
