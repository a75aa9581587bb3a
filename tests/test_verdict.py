import json

import pytest

from guard import Action, Finding, Signal, Surface, Verdict


def finding(action: Action, subject: str = "ultraman", signal: Signal = Signal.CLIP_IMAGE) -> Finding:
    return Finding(subject, signal, 0.93, 0.88, action, {"reference": "pose0.png"})


def test_actions_are_ordered():
    assert Action.ALLOW.rank < Action.FLAG.rank < Action.BLOCK.rank
    assert Action.strongest([Action.FLAG, Action.ALLOW]) is Action.FLAG
    assert Action.strongest([]) is Action.ALLOW


def test_verdict_action_is_the_strongest_finding():
    v = Verdict("x.png", Surface.COVER_IMAGE, (finding(Action.FLAG), finding(Action.BLOCK, "mario")))
    assert v.action is Action.BLOCK and v.blocked
    assert Verdict("x.png", Surface.COVER_IMAGE).action is Action.ALLOW


def test_guard_error_is_never_allow_by_default_and_follows_fail_mode():
    assert Verdict("x", Surface.PROMPT, error="boom").action is Action.BLOCK
    assert Verdict("x", Surface.PROMPT, error="boom", error_action=Action.FLAG).action is Action.FLAG


def test_merge_concatenates_findings_and_keeps_the_strongest():
    a = Verdict("bundle", Surface.PUBLICATION, (finding(Action.FLAG),))
    b = Verdict("cover.png", Surface.PUBLICATION, (finding(Action.BLOCK, "mario"),), error="partial")
    merged = a.merge(b)
    assert merged.subject == "bundle"
    assert [f.subject for f in merged.findings] == ["ultraman", "mario"]
    assert merged.action is Action.BLOCK and merged.error == "partial"


def test_json_round_trip_matches_the_contract():
    v = Verdict("m.safetensors", Surface.MODEL_FILE,
                (Finding("ultraman", Signal.METADATA, 1.0, 1.0, Action.BLOCK,
                         {"key": "ss_tag_frequency", "tag": "ultraman", "count": 37}),),
                versions={"guard": "0.1.0", "bank": "abc", "policy": "def", "encoder": "tiny-test"})
    data = json.loads(v.to_json())
    assert list(data) == ["subject", "surface", "action", "findings", "versions", "error"]
    assert data["action"] == "block" and data["findings"][0]["evidence"]["count"] == 37
    assert Verdict.from_json(v.to_json()) == v


def test_round_trip_keeps_a_fail_mode_action():
    v = Verdict("x", Surface.PROMPT, error="encoder crashed", error_action=Action.FLAG)
    back = Verdict.from_json(v.to_json())
    assert back.action is Action.FLAG and back.error == "encoder crashed"


def test_from_dict_refuses_an_action_that_contradicts_findings():
    data = Verdict("x", Surface.PROMPT, (finding(Action.BLOCK),)).to_dict()
    data["action"] = "allow"
    with pytest.raises(ValueError, match="contradicts"):
        Verdict.from_dict(data)


def test_unknown_enum_values_are_named():
    with pytest.raises(ValueError, match="surface='poster'"):
        Verdict.from_dict({"subject": "x", "surface": "poster", "findings": []})
