"""Regenerate the demo's synthetic images (references and sample uploads).

    python examples/make_demo_data.py

Each demo character is a seeded drawing (guard.testing.synthetic); its references are three
poses of it. The sample uploads and model files show each kind of verdict the demo prints.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from guard.testing.synthetic import character, render

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
    make_models(HERE / "demo_models")


def lora(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, (name, out, inp) in enumerate([("attn1_to_q", 320, 320), ("attn2_to_k", 320, 768),
                                          ("ff_net_2", 320, 1280), ("attn1_to_out_0", 320, 320)]):
        key = f"lora_unet_down_blocks_0_attentions_{i % 2}_transformer_blocks_0_{name}"
        tensors[f"{key}.lora_down.weight"] = (torch.randn(4, inp, generator=g) * 0.1).half()
        tensors[f"{key}.lora_up.weight"] = (torch.randn(out, 4, generator=g) * 0.01).half()
        tensors[f"{key}.alpha"] = torch.tensor(2.0).half()
    return tensors


def make_models(folder: Path) -> None:
    """Three uploads for `guard scan`: a LoRA trained on a protected character (its kohya
    metadata says so), a clean LoRA, and a pickle whose payload would run code if loaded
    (it only prints, so the demo file is harmless even if someone loads it)."""
    folder.mkdir(exist_ok=True)
    tags = {"10_ultraman": {"ultraman": 37, "1boy": 20, "silver giant": 6, "kaiju": 4}}
    save_file(lora(1), str(folder / "hero_style_v2.safetensors"), metadata={
        "ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1", "ss_output_name": "hero_style_v2",
        "ss_tag_frequency": json.dumps(tags),
        "ss_dataset_dirs": json.dumps({"10_ultraman": {"n_repeats": 10, "img_count": 40}})})
    save_file(lora(2), str(folder / "watercolor_landscapes.safetensors"), metadata={
        "ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1",
        "ss_tag_frequency": json.dumps({"5_scenery": {"landscape": 30, "watercolor": 30, "no humans": 28}})})

    class Payload:
        def __reduce__(self):
            return print, ("this model file would have run code when loaded",)

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"state_dict": Payload()}, protocol=2))
        z.writestr("archive/version", "3\n")
    (folder / "totally_safe_model.ckpt").write_bytes(buf.getvalue())


if __name__ == "__main__":
    main()
