"""Every settings file the guard reads refuses a bad value with one message naming the file,
the key, the bad value and the fix: policy files, character.toml, bank manifests."""

import json

import pytest

from guard import BankError, ConfigError, Policy
from guard.bank import read_character_dir
from guard.bank.store import MANIFEST_KEY


def one_message(exc: Exception, file, key: str, value: str) -> str:
    message = str(exc)
    assert "\n" not in message and "Traceback" not in message
    assert str(file) in message, message
    assert key in message, message
    assert value in message, message
    assert "fix:" in message, message
    return message


# (TOML text, the key named, the bad value as the message shows it)
POLICIES = [
    ("[text]\nwindow_words = 0\n", "text.window_words", "0"),                     # out of range
    ("[text]\nfuzzy = \"yes\"\n", "text.fuzzy", "'yes'"),                          # wrong type
    ("[text]\nwindow_words = 12.5\n", "text.window_words", "12.5"),
    ("text = 3\n", "text", "3"),                                                   # not a table
    ("encoders = {x = 1}\n", "encoders.x", "1"),
    ("surfaces = 3\n", "surfaces", "surfaces"),                                    # unknown section
    ("[signals.clip_image]\nsurfaces = 3\n", "signals.clip_image.surfaces", "3"),
    ("[signals.clip_image]\nblock = \"high\"\n", "signals.clip_image.block", "'high'"),
    ("[signals.clip_image]\nflag = 1.5\n", "signals.clip_image.flag", "1.5"),
    ("[signals.clip_image]\nflag = 0.9\nblock = 0.8\n", "signals.clip_image", "0.9"),
    ("[signals.clip_image]\ncolour = 1\n", "signals.clip_image.colour", "colour"),
    ("[signals.clip_imgae]\nflag = 0.5\n", "signals.clip_imgae", "clip_imgae"),
    ("[signals.clip_image.surfaces.poster]\nflag = 0.5\n", "signals.clip_image.surfaces.poster", "poster"),
    ("[signals.file_hash]\nblock = 0.9\n", "signals.file_hash.block", "0.9"),     # an exact signal
    ("[signals.alias]\naction = \"ban\"\n", "signals.alias.action", "'ban'"),
    ("[policy]\nfail_mode = \"lenient\"\n", "policy.fail_mode", "'lenient'"),
    ("[policy]\ntop_k = 0\n", "policy.top_k", "0"),
    ("[policy]\ninherit = \"no\"\n", "policy.inherit", "'no'"),
    ("[pdq]\nmax_distance = 300\n", "pdq.max_distance", "300"),
    ("[pdq]\ndihedral = 1\n", "pdq.dihedral", "1"),
    ("[dataset]\nblock_share = -0.1\n", "dataset.block_share", "-0.1"),
    ("[dataset]\nunreadable_images = \"ignore\"\n", "dataset.unreadable_images", "'ignore'"),
    ("[strikes]\nwindow = 30\n", "strikes.window", "window"),
    ("[model]\nhash_mismatch = true\n", "model.hash_mismatch", "True"),
    ("[generation]\nlatent_output = \"keep\"\n", "generation.latent_output", "'keep'"),
    ("[generation]\npreview_edge = 8\n", "generation.preview_edge", "8"),
    ("[characters.mario]\nauthorized_accounts = \"nintendo\"\n", "characters.mario.authorized_accounts",
     "'nintendo'"),
    ("[characters.mario]\nlicence = 1\n", "characters.mario.licence", "licence"),
    ("characters = {mario = 2}\n", "characters.mario", "2"),
]


@pytest.mark.parametrize("text, key, value", POLICIES, ids=[k for _, k, _ in POLICIES])
def test_a_bad_policy_file_gets_one_message(tmp_path, text, key, value):
    path = tmp_path / "platform-policy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        Policy.load(path)
    assert one_message(caught.value, path, key, value).startswith(f"policy {path}: ")


def test_a_policy_that_does_not_inherit_still_gets_every_setting(tmp_path):
    path = tmp_path / "alone.toml"
    path.write_text("[policy]\ninherit = false\n[dataset]\nblock_share = 0.5\n")
    policy = Policy.load(path)
    assert policy.dataset.block_share == 0.5 and policy.dataset.flag_images == Policy.load().dataset.flag_images
    assert policy.layers(*_clip_image_prompt()) == {}  # but no thresholds: it starts from nothing there


def _clip_image_prompt():
    from guard import Signal, Surface

    return Signal.CLIP_IMAGE, Surface.GENERATED_IMAGE


CHARACTERS = [
    ("[thresholds.clip_image]\nblock = \"high\"\n", "thresholds.clip_image.block", "'high'"),
    ("[thresholds.clip_image]\nblock = 2\n", "thresholds.clip_image.block", "2"),
    ("[thresholds.clip_imgae]\nflag = 0.5\n", "thresholds.clip_imgae", "clip_imgae"),
    ("[thresholds]\nclip_image = 3\n", "thresholds.clip_image", "3"),
    ("thresholds = 0.9\n", "thresholds", "0.9"),
    ("keyword_k = 0\n", "keyword_k", "0"),
    ("names = [\"Ultraman\"]\n", "names", "['Ultraman']"),
    ("aliases = [\"\"]\n", "aliases", "['']"),
    ("holder = 3\n", "holder", "3"),
    ("colour = \"red\"\n", "colour", "colour"),
]


@pytest.mark.parametrize("text, key, value", CHARACTERS, ids=[k for _, k, _ in CHARACTERS])
def test_a_bad_character_toml_gets_one_message(tmp_path, text, key, value):
    folder = tmp_path / "ultraman"
    folder.mkdir()
    (folder / "character.toml").write_text(text)
    with pytest.raises(BankError) as caught:
        read_character_dir(folder)
    one_message(caught.value, folder / "character.toml", key, value)


def test_a_character_folder_whose_name_is_no_id_is_named(tmp_path):
    folder = tmp_path / "Ultra Man"
    folder.mkdir()
    (folder / "character.toml").write_text("")
    with pytest.raises(BankError) as caught:
        read_character_dir(folder)
    one_message(caught.value, folder / "character.toml", "id", "'Ultra Man'")


MANIFESTS = [
    (lambda m: m.pop("characters"), "'characters'", "missing"),
    (lambda m: m.pop("encoder"), "'encoder'", "missing"),
    (lambda m: m.update(dim="768"), "'dim'", "'768'"),
    (lambda m: m.update(dim=True), "'dim'", "True"),
    (lambda m: m.update(characters={"id": "x"}), "'characters'", "{'id': 'x'}"),
    (lambda m: m.update(characters=[3]), "'characters'[0]", "3"),
    (lambda m: m["characters"][0].update(keyword_k="two"), "keyword_k", "'two'"),
    (lambda m: m["characters"][0].update(thresholds={"clip_image": {"block": "high"}}),
     "thresholds.clip_image.block", "'high'"),
]


@pytest.mark.parametrize("change, key, value", MANIFESTS, ids=[f"{k}={v}" for _, k, v in MANIFESTS])
def test_a_bad_bank_manifest_gets_one_message(bank_file, tmp_path, change, key, value):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from guard import Bank

    with safe_open(str(bank_file), framework="pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    manifest = json.loads(meta[MANIFEST_KEY])
    change(manifest)
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata={MANIFEST_KEY: json.dumps(manifest)})
    with pytest.raises(BankError) as caught:
        Bank.load(broken)
    one_message(caught.value, broken, key, value)


def test_the_command_prints_the_message_whole(bank_file, tmp_path, capsys):
    """TOML table names in a message ([encoders."x"...]) are printed, not read as markup."""
    from guard.adapters.cli import main

    path = tmp_path / "p.toml"
    path.write_text("[text]\nwindow_words = 0\n")
    assert main(["check", "prompt", "hi", "--bank", str(bank_file), "--policy", str(path)]) == 2
    assert "text.window_words = 0: must be an integer from 1; fix: e.g. window_words = 12 (the shipped default)" \
        in capsys.readouterr().err.replace("\n", "")
    path.write_text("encoders = {x = 1}\n")
    assert main(["check", "prompt", "hi", "--bank", str(bank_file), "--policy", str(path)]) == 2
    assert '[encoders."x".signals.clip_image]' in capsys.readouterr().err.replace("\n", "")
