"""Regenerate the demo's synthetic images (references and sample uploads).

    python examples/make_demo_data.py

Each demo character is a seeded drawing (guard.synthetic); its references are three
poses of it. The sample uploads show each kind of verdict the demo prints.
"""

from __future__ import annotations

import io
from pathlib import Path

from guard.synthetic import character, render

HERE = Path(__file__).resolve().parent
CHARACTERS = {"ultraman": 11, "mario": 12, "pikachu": 13, "doraemon": 14}


def main() -> None:
    for name, seed in CHARACTERS.items():
        for pose in (0, 1, 2):
            render(character(seed), pose, 128).save(HERE / "demo_refs" / name / f"pose{pose}.png")
    uploads = HERE / "demo_uploads"
    uploads.mkdir(exist_ok=True)
    render(character(11), 0, 128).save(uploads / "exact_ultraman_reference.png")
    render(character(12), 42, 160).save(uploads / "new_pose_of_mario.png")
    render(character(13), 7, 128).save(uploads / "pikachu_reencoded.jpg", quality=70)
    for i, seed in enumerate((501, 502, 503)):
        render(character(seed), 0, 128).save(uploads / f"unrelated_{i + 1}.png")
    buf = io.BytesIO()
    render(character(14), 3, 128).save(buf, "JPEG", quality=90)
    (uploads / "truncated_upload.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


if __name__ == "__main__":
    main()
