import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from guard import Bank, BankError
from guard.bank import add_characters, build_bank
from guard.testing.synthetic import character, render

from .conftest import DEMO_REFS


class CountingEncoder:
    """The real encoder, counting what it is asked to encode."""

    def __init__(self, inner):
        self.inner, self.images, self.texts = inner, 0, 0
        self.name, self.dim = inner.name, inner.dim

    def encode_images(self, items):
        self.images += len(items)
        return self.inner.encode_images(items)

    def encode_texts(self, texts):
        self.texts += len(texts)
        return self.inner.encode_texts(texts)


def test_bank_file_layout(bank_file):
    with safe_open(str(bank_file), framework="pt") as fh:
        keys = set(fh.keys())
        manifest = json.loads(fh.metadata()["guard.bank"])
        emb = fh.get_tensor("image_embeddings")
        owner = fh.get_tensor("image_owner")
    assert keys == {"image_embeddings", "image_owner", "image_ref", "text_embeddings", "text_owner"}
    assert emb.dtype == torch.float16 and emb.shape == (12, 64)
    assert owner.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert manifest["encoder"] == "tiny-test" and manifest["format"] == "diffusion-guard-bank"
    ultraman = next(c for c in manifest["characters"] if c["id"] == "ultraman")
    assert ultraman["names"]["zh-Hans"] == "奥特曼" and ultraman["holder"] == "Tsuburaya Productions"
    assert [r["file"] for r in ultraman["references"]] == ["pose0.png", "pose1.png", "pose2.png"]
    assert all(len(r["sha256"]) == 64 for r in ultraman["references"])
    assert "ウルトラマン" in ultraman["texts"]


def test_round_trip_and_digest(bank_file, tmp_path):
    bank = Bank.load(bank_file)
    assert bank.digest == __import__("hashlib").sha256(bank_file.read_bytes()).hexdigest()
    again = tmp_path / "again.safetensors"
    bank.save(again)
    copy = Bank.load(again)
    assert [c.id for c in copy.characters] == [c.id for c in bank.characters]
    assert torch.equal(copy.image_matrix()[0], bank.image_matrix()[0])


def test_encoder_mismatch_is_a_clear_error(bank_file):
    with pytest.raises(BankError, match=r"built with encoder 'tiny-test'.*--encoder tiny-test"):
        Bank.load(bank_file).require_encoder("ViT-L-14-quickgelu/openai")


def test_adding_and_removing_does_not_reencode_others(bank_file, encoder, tmp_path):
    counting = CountingEncoder(encoder)
    bank = Bank.load(bank_file)
    before = bank.entry("ultraman").image_embeddings.clone()
    new = tmp_path / "astroboy"
    new.mkdir()
    (new / "character.toml").write_text('id = "astroboy"\naliases = ["Astro Boy", "鉄腕アトム"]\n')
    for pose in (0, 1):
        render(character(77), pose, 128).save(new / f"p{pose}.png")
    add_characters(bank, [new], counting)
    assert counting.images == 2 and counting.texts == 2
    assert torch.equal(bank.entry("ultraman").image_embeddings, before)
    bank.remove("mario")
    bank.save(tmp_path / "b.safetensors")
    loaded = Bank.load(tmp_path / "b.safetensors")
    assert "astroboy" in loaded and "mario" not in loaded and len(loaded) == 4


def test_rebuild_reuses_unchanged_embeddings(bank_file, encoder, refs_copy):
    counting = CountingEncoder(encoder)
    render(character(11), 9, 128).save(refs_copy / "ultraman" / "pose9.png")
    bank = build_bank(refs_copy, counting, previous=Bank.load(bank_file))
    assert counting.images == 1 and counting.texts == 0
    assert len(bank.character("ultraman").references) == 4


@pytest.mark.parametrize("toml, message", [
    ('id = "Bad Id"\n', "id = 'Bad Id': must be 1-64 lowercase"),
    ('aliases = "Ultraman"\n', "aliases = 'Ultraman': must be a list"),
    ('keywords = ["giant"]\n', r"keywords = \['giant'\]: must be a list of word lists"),
    ('colour = "red"\n', "unknown key"),
    ('[names\n', "not valid TOML"),
])
def test_bad_character_files_name_the_field(refs_copy, encoder, toml, message):
    (refs_copy / "ultraman" / "character.toml").write_text(toml)
    with pytest.raises(BankError, match=message):
        build_bank(refs_copy, encoder)


def test_unreadable_reference_image_is_named(refs_copy, encoder):
    (refs_copy / "mario" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    with pytest.raises(BankError, match="reference image cannot be read"):
        build_bank(refs_copy, encoder)


def test_malformed_bank_files(tmp_path):
    not_st = tmp_path / "x.safetensors"
    not_st.write_bytes(b"\xff" * 64)
    with pytest.raises(BankError, match="not a readable safetensors"):
        Bank.load(not_st)
    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(plain))
    with pytest.raises(BankError, match="not a guard bank"):
        Bank.load(plain)
    with pytest.raises(BankError, match="does not exist"):
        Bank.load(tmp_path / "missing.safetensors")


def test_empty_references_folder(tmp_path, encoder):
    with pytest.raises(BankError, match="no character folders"):
        build_bank(tmp_path, encoder)
    shutil.copytree(DEMO_REFS / "mario", tmp_path / "a")
    shutil.copytree(DEMO_REFS / "mario", tmp_path / "b")
    with pytest.raises(BankError, match="appears twice"):
        build_bank(tmp_path, encoder)


def test_shipped_demo_bank_matches_a_fresh_build(bank_file):
    """embeddings/demo-bank.safetensors is what `guard bank build examples/demo_refs` makes."""
    from .conftest import ROOT

    shipped, fresh = Bank.load(ROOT / "embeddings" / "demo-bank.safetensors"), Bank.load(bank_file)
    assert [c.to_dict() for c in shipped.characters] == [c.to_dict() for c in fresh.characters]
    assert torch.allclose(shipped.image_matrix()[0].float(), fresh.image_matrix()[0].float(), atol=2e-3)
    assert torch.allclose(shipped.text_matrix()[0].float(), fresh.text_matrix()[0].float(), atol=2e-3)


def test_a_loaded_bank_turns_into_tensors_once_whatever_the_threads(bank_file):
    """Threads that first touch a loaded bank together all see every character."""
    import threading

    bank = Bank.load(bank_file)
    ids = [c.id for c in bank.characters]
    seen, errors = [], []

    def touch():
        try:
            seen.append(sorted(bank.entry(cid).character.id for cid in ids))
        except Exception as exc:  # noqa: BLE001 (the test reports it)
            errors.append(exc)

    threads = [threading.Thread(target=touch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and seen == [sorted(ids)] * 8
    assert "ultraman" in bank and len(bank) == len(ids)
