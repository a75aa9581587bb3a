import pytest

from guard import Action, ConfigError, Policy, Signal, Surface
from guard.policy import DEFAULT_POLICY


def test_default_policy_is_documented_and_fails_closed():
    policy = Policy.load()
    text = DEFAULT_POLICY.read_text()
    assert policy.fail_mode == "closed" and policy.error_action is Action.BLOCK
    assert text.count("#") > 20  # the shipped policy explains itself
    assert len(policy.digest) == 64


def test_layers_override_from_general_to_specific():
    policy = Policy.from_dict({
        "signals": {"clip_image": {"flag": 0.8, "block": 0.9,
                                   "surfaces": {"cover_image": {"flag": 0.7}}}},
        "encoders": {"enc": {"signals": {"clip_image": {"block": 0.85}}}},
        "characters": {"mario": {"signals": {"clip_image": {"block": 0.95}}}},
    })
    decide = policy.decide
    assert decide(Signal.CLIP_IMAGE, 0.75, Surface.GENERATED_IMAGE) is None
    assert decide(Signal.CLIP_IMAGE, 0.75, Surface.COVER_IMAGE).action is Action.FLAG
    assert decide(Signal.CLIP_IMAGE, 0.87, Surface.GENERATED_IMAGE).action is Action.FLAG
    assert decide(Signal.CLIP_IMAGE, 0.87, Surface.GENERATED_IMAGE, encoder="enc").action is Action.BLOCK
    # The bank's own per-character threshold sits below the platform's per-character one.
    bank = {"clip_image": {"block": 0.86}}
    assert decide(Signal.CLIP_IMAGE, 0.87, Surface.GENERATED_IMAGE, encoder="enc", character="ultraman",
                  bank_thresholds=bank).threshold == 0.86
    assert decide(Signal.CLIP_IMAGE, 0.9, Surface.GENERATED_IMAGE, encoder="enc", character="mario",
                  bank_thresholds=bank).action is Action.FLAG


def test_exact_signals_use_a_fixed_action():
    policy = Policy.from_dict({"signals": {"alias": {"action": "flag",
                                                     "surfaces": {"prompt": {"action": "block"}}}}})
    assert policy.decide(Signal.ALIAS, 1.0, Surface.PROMPT).action is Action.BLOCK
    assert policy.decide(Signal.ALIAS, 1.0, Surface.MODEL_FILE).action is Action.FLAG


def test_lowest_threshold_covers_character_overrides():
    policy = Policy.from_dict({"signals": {"clip_image": {"flag": 0.8}},
                               "characters": {"mario": {"signals": {"clip_image": {"flag": 0.6}}}}})
    assert policy.lowest_threshold(Signal.CLIP_IMAGE, Surface.GENERATED_IMAGE, None) == 0.8
    assert policy.lowest_threshold(Signal.CLIP_IMAGE, Surface.GENERATED_IMAGE, None,
                                   [("mario", None), ("ultraman", {"clip_image": {"flag": 0.7}})]) == 0.6


@pytest.mark.parametrize("data, message", [
    ({"polcy": {}}, "unknown section"),
    ({"policy": {"fail_mode": "lenient"}}, "fail_mode"),
    ({"signals": {"clip_imgae": {"flag": 0.5}}}, "unknown signal"),
    ({"signals": {"clip_image": {"flag": 0.9, "block": 0.8}}}, "flag must be the lower"),
    ({"signals": {"clip_image": {"flag": 3}}}, r"\[-1, 1\]"),
    ({"signals": {"clip_image": {"surfaces": {"poster": {"flag": 0.5}}}}}, "unknown surface"),
    ({"signals": {"alias": {"action": "ban"}}}, "allow, flag or block"),
    ({"characters": {"mario": {"authorized_accounts": "nintendo"}}}, "list of account names"),
])
def test_invalid_policies_name_the_problem(data, message):
    with pytest.raises(ConfigError, match=message):
        Policy.from_dict(data)


def test_a_platform_policy_is_layered_over_the_default(tmp_path):
    own = tmp_path / "own.toml"
    own.write_text('[policy]\nfail_mode = "review"\n[signals.clip_image]\nblock = 0.9\n')
    policy = Policy.load(own)
    assert policy.fail_mode == "review"
    assert policy.layers(Signal.CLIP_IMAGE, Surface.GENERATED_IMAGE) == {"flag": 0.80, "block": 0.9}
    assert policy.decide(Signal.ALIAS, 1.0, Surface.PROMPT).action is Action.BLOCK  # from the default
    alone = Policy.from_dict({"policy": {"inherit": False}})
    assert alone.decide(Signal.ALIAS, 1.0, Surface.PROMPT) is None


def test_digest_follows_content_not_comments(tmp_path):
    a, b, c = tmp_path / "a.toml", tmp_path / "b.toml", tmp_path / "c.toml"
    a.write_text("[signals.clip_image]\nflag = 0.8\n")
    b.write_text("# a comment\n[signals.clip_image]\nflag = 0.80  # same value\n")
    c.write_text("[signals.clip_image]\nflag = 0.7\n")
    assert Policy.load(a).digest == Policy.load(b).digest != Policy.load(c).digest


def test_unreadable_policy_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        Policy.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[signals\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Policy.load(bad)


@pytest.mark.parametrize("data, message", [
    ({"pdq": {"max_distance": 300}}, "pdq.max_distance"),
    ({"pdq": {"dihedral": 1}}, "true or false"),
    ({"dataset": {"block_share": 1.5}}, "dataset.block_share"),
    ({"strikes": {"warn": 0}}, "strikes.warn"),
    ({"strikes": {"window": 30}}, "unknown key"),
    ({"model": {"blake3": "yes"}}, "model.blake3"),
])
def test_settings_tables_are_validated(data, message):
    with pytest.raises(ConfigError, match=message):
        Policy.from_dict(data)
