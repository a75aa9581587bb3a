import json
import time

import pytest
import torch
from PIL import Image

from guard import ConfigError, EncoderUnavailable
from guard.encoders import load_encoder, parse_spec
from guard.encoders.openclip import TINY_CONFIG, TINY_WEIGHTS
from guard.encoders.spec import SpecKind
from guard.testing.synthetic import character, render


@pytest.mark.parametrize("spec, kind, arch, rest", [
    ("ViT-L-14/openai", SpecKind.TAG, "ViT-L-14", "openai"),
    ("ViT-L-14:/models/clip.safetensors", SpecKind.FILE, "ViT-L-14", "/models/clip.safetensors"),
    ("hf-hub:laion/CLIP-ViT-H-14-laion2B-s32B-b79K", SpecKind.HF_HUB, None, "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    ("local-dir:/models/clip", SpecKind.LOCAL_DIR, None, "/models/clip"),
    ("tiny-test", SpecKind.TINY_TEST, "tiny-test", None),
])
def test_spec_forms(spec, kind, arch, rest):
    parsed = parse_spec(spec)
    assert parsed.kind is kind and parsed.arch == arch
    assert rest in (parsed.tag, parsed.location)


@pytest.mark.parametrize("spec", ["", "ViT-L-14", "hf-hub:", "a/b/c"])
def test_bad_specs_name_the_accepted_forms(spec):
    with pytest.raises(ConfigError, match="ARCH/TAG"):
        parse_spec(spec)


def test_tiny_encoder_is_labelled_and_normalised(encoder):
    assert encoder.name == "tiny-test" and not encoder.meaningful
    assert "no semantic meaning" in encoder.label
    imgs = [render(character(s), 0, 96) for s in (1, 2, 3)]
    emb = encoder.encode_images(imgs)
    assert emb.shape == (3, encoder.dim) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-4)
    txt = encoder.encode_texts(["Ultraman", "奥特曼"])
    assert txt.shape == (2, encoder.dim)
    assert torch.allclose(txt.norm(dim=1), torch.ones(2), atol=1e-4)


def test_tiny_encoder_tells_characters_apart(encoder):
    """The shipped tiny weights are trained: another pose is close, another character is not."""
    chars = [character(900 + i) for i in range(40)]
    a = encoder.encode_images([render(c, 0, 128) for c in chars])
    b = encoder.encode_images([render(c, 3, 128) for c in chars])
    sim = a @ b.T
    same = sim.diag()
    other = sim[~torch.eye(40, dtype=torch.bool)]
    assert same.mean() > 0.85 and other.mean() < 0.2
    assert (same > 0.6).float().mean() > 0.95


def test_production_spec_offline_says_how_to_supply_weights():
    start = time.monotonic()
    with pytest.raises(EncoderUnavailable) as info:
        load_encoder("ViT-B-32/laion2b_s34b_b79k", allow_download=False)
    message = str(info.value)
    assert "GUARD_ALLOW_DOWNLOAD" in message and "local-dir:" in message and "random weights" in message
    assert time.monotonic() - start < 10  # resolved from the local cache, no network retries


def test_openai_tags_are_paired_with_quickgelu():
    with pytest.raises(EncoderUnavailable, match="ViT-B-32-quickgelu/openai"):
        load_encoder("ViT-B-32/openai", allow_download=False)


def test_unknown_architecture_and_tag_are_config_errors():
    with pytest.raises(ConfigError, match="unknown open_clip architecture"):
        load_encoder("ViT-Q-99/openai")
    with pytest.raises(ConfigError, match="known tags"):
        load_encoder("ViT-B-32/not-a-tag")


def test_missing_weights_file_is_refused(tmp_path):
    with pytest.raises(EncoderUnavailable, match="does not exist"):
        load_encoder(f"ViT-B-32:{tmp_path / 'nope.safetensors'}")


def test_weights_file_that_does_not_fit_is_refused_not_randomised(tmp_path):
    bogus = tmp_path / "bogus.safetensors"
    from safetensors.torch import save_file
    save_file({"not_a_clip_weight": torch.zeros(3)}, str(bogus))
    with pytest.raises(EncoderUnavailable, match="could not be loaded"):
        load_encoder(f"tiny-test:{bogus}")


def test_file_and_local_dir_specs_load_real_weights(tmp_path, encoder):
    """The production loading paths, exercised with the tiny config and its weights."""
    img = render(character(5), 0, 96)
    ref = encoder.encode_images([img])

    via_file = load_encoder(f"tiny-test:{TINY_WEIGHTS}")
    assert via_file.name.startswith("tiny-test:sha256-") and via_file.meaningful
    assert torch.allclose(via_file.encode_images([img]), ref, atol=1e-5)

    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": json.loads(TINY_CONFIG.read_text())}))
    (folder / "open_clip_model.safetensors").write_bytes(TINY_WEIGHTS.read_bytes())
    via_dir = load_encoder(f"local-dir:{folder}")
    assert via_dir.name.startswith("local-dir:sha256-")
    assert torch.allclose(via_dir.encode_images([img]), ref, atol=1e-5)


def test_encode_images_accepts_paths_and_arrays(encoder, tmp_path):
    import numpy as np

    img = render(character(8), 0, 64)
    path = tmp_path / "a.png"
    img.save(path)
    by_path = encoder.encode_images([str(path)])
    by_array = encoder.encode_images([np.asarray(img)])
    by_pil = encoder.encode_images([Image.open(path)])
    assert torch.allclose(by_path, by_array, atol=1e-5) and torch.allclose(by_path, by_pil, atol=1e-5)
