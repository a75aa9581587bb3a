import pytest

from guard import Action, Bank, Guard, Policy, Signal, Surface
from guard.testing.synthetic import character, render

from .conftest import DEMO_REFS, DEMO_UPLOADS


def test_reference_image_blocks_with_score_one(guard):
    [v] = guard.check_images([DEMO_REFS / "ultraman" / "pose1.png"])
    assert v.action is Action.BLOCK
    top = v.findings[0]
    assert (top.subject, top.signal) == ("ultraman", Signal.CLIP_IMAGE)
    assert top.score == pytest.approx(1.0, abs=2e-3)
    assert top.evidence["reference"] == "pose1.png" and len(top.evidence["input_sha256"]) == 64
    assert v.versions["encoder"].startswith("tiny-test (no semantic meaning")
    assert v.versions["bank"] == guard.bank.digest and v.versions["policy"] == guard.policy.digest


def test_new_poses_are_caught_and_unrelated_drawings_pass(guard):
    poses = [render(character(seed), pose, 150) for seed in (11, 12, 13, 14) for pose in (20, 21)]
    unrelated = [render(character(seed), 0, 128) for seed in range(3000, 3040)]
    verdicts = guard.check_images(poses + unrelated)
    caught = [v.findings[0].subject for v in verdicts[:8] if v.action is not Action.ALLOW]
    assert caught == ["ultraman"] * 2 + ["mario"] * 2 + ["pikachu"] * 2 + ["doraemon"] * 2
    false_positives = [v for v in verdicts[8:] if v.action is not Action.ALLOW]
    assert len(false_positives) <= 1  # the tiny encoder is discriminative, not perfect
    assert all(v.subject.startswith("image[") for v in verdicts)


def test_authorized_account_is_allowed_and_says_so(guard):
    ref = DEMO_REFS / "ultraman" / "pose0.png"
    [v] = guard.check_images([ref], surface="cover_image", account="tsuburaya-official")
    assert v.action is Action.ALLOW
    f = v.findings[0]
    assert f.evidence["authorized_account"] == "tsuburaya-official" and f.evidence["would_be"] == "block"
    [other] = guard.check_images([ref], surface="cover_image", account="nintendo-official")
    assert other.action is Action.BLOCK


def test_policy_allowlist_and_character_threshold(bank_file, encoder):
    policy = Policy.from_dict({
        "encoders": {"tiny-test": {"signals": {"clip_image": {"flag": 0.6, "block": 0.75}}}},
        "characters": {"mario": {"authorized_accounts": ["licensee-1"],
                                 "signals": {"clip_image": {"block": 1.0, "flag": 0.99}}}},
    })
    g = Guard(Bank.load(bank_file), policy, encoder)
    [licensed] = g.check_images([DEMO_REFS / "mario" / "pose0.png"], account="licensee-1")
    assert licensed.action is Action.ALLOW
    [v] = g.check_images([render(character(12), 33, 128)])
    assert v.action is Action.ALLOW  # mario now needs a near-exact copy


def test_surface_is_validated(guard):
    with pytest.raises(ValueError, match="surface='prompt' does not apply"):
        guard.check_images([DEMO_REFS / "mario" / "pose0.png"], surface="prompt")
    with pytest.raises(ValueError, match="not a surface"):
        guard.check_images([], surface="poster")


def test_guard_failure_follows_the_fail_mode(bank_file, encoder):
    class BrokenForward:
        """The real encoder whose forward pass fails, as an out-of-memory GPU would."""

        def __init__(self, inner):
            self.inner, self.name, self.label, self.dim = inner, inner.name, inner.label, inner.dim

        def iter_image_batches(self, images, **options):
            for item in self.inner.iter_image_batches(images, **options):
                raise RuntimeError("CUDA out of memory (simulated)")
                yield item

    for mode, action in (("closed", Action.BLOCK), ("review", Action.FLAG), ("open", Action.ALLOW)):
        g = Guard(Bank.load(bank_file), Policy.from_dict({"policy": {"fail_mode": mode}}), BrokenForward(encoder))
        [v] = g.check_images([DEMO_UPLOADS / "unrelated_1.png"])
        assert v.error and "out of memory" in v.error and v.action is action


def test_an_image_the_encoder_overflows_on_follows_the_fail_mode(bank_file, encoder):
    class OverflowingForward:
        """The real encoder, but the second image of a batch comes out as NaN (fp16 overflow)."""

        def __init__(self, inner):
            self.inner, self.name, self.label, self.dim = inner, inner.name, inner.label, inner.dim

        def iter_image_batches(self, images, **options):
            for idx, emb, failures, infos in self.inner.iter_image_batches(images, **options):
                emb = emb.clone()
                emb[1] = float("nan")
                yield idx, emb, failures, infos

    g = Guard(Bank.load(bank_file), Policy.load(), OverflowingForward(encoder))
    ref, other = DEMO_REFS / "ultraman" / "pose1.png", DEMO_UPLOADS / "unrelated_1.png"
    checked, nan, last = g.check_images([ref, other, ref])
    assert checked.action is last.action is Action.BLOCK and checked.findings[0].subject == "ultraman"
    assert nan.action is Action.BLOCK and "NaN" in nan.error  # fail closed, not "no match"


@pytest.mark.parametrize("prompt, character, alias", [
    ("ultraman fighting a kaiju at night", "ultraman", "Ultraman"),
    ("Poster of ULTRAMAN TIGA, dramatic light", "ultraman", "Ultraman Tiga"),
    ("奥特曼大战怪兽", "ultraman", "奥特曼"),
    ("超人力霸王在城市裡", "ultraman", "超人力霸王"),
    ("ウルトラマンのフィギュア", "ultraman", "ウルトラマン"),
    ("super mario jumping", "mario", "Super Mario"),
    ("ｐｉｋａｃｈｕ plush", "pikachu", "Pikachu"),
])
def test_prompt_aliases_in_several_languages(guard, prompt, character, alias):
    v = guard.check_prompt(prompt)
    assert v.action is Action.BLOCK and v.surface is Surface.PROMPT
    f = v.findings[0]
    assert f.subject == character and f.signal is Signal.ALIAS
    assert f.evidence["alias"] == alias
    assert 0 <= f.evidence["start"] < f.evidence["end"] <= len(prompt)


def test_prompt_offsets_point_into_the_original_text(guard):
    text = "A photo, ultraman, 4k"
    f = guard.check_prompt(text).findings[0]
    assert text[f.evidence["start"]:f.evidence["end"]] == "ultraman"


@pytest.mark.parametrize("prompt", [
    "a red silver robot on a beach", "ultramarine sky over the sea", "a cat in a hat", "",
])
def test_ordinary_prompts_pass(guard, prompt):
    assert guard.check_prompt(prompt).action is Action.ALLOW


def test_negative_prompt_is_never_a_finding(guard):
    v = guard.check_prompt("a superhero in a city", negative="ultraman, pikachu")
    assert v.action is Action.ALLOW and not v.findings


def test_authorized_account_prompt(guard):
    v = guard.check_prompt("ultraman key visual", account="tsuburaya-official")
    assert v.action is Action.ALLOW and v.findings[0].evidence["authorized_account"] == "tsuburaya-official"


def test_a_workflow_text_over_the_length_limit_is_refused_before_any_screening(guard):
    from guard.facade import WorkflowText

    huge = "a quiet lake " * 100_000
    verdict = guard.check_workflow("wf", [WorkflowText("node 6 (CLIPTextEncode) text", huge),
                                          WorkflowText("node 7 (CLIPTextEncode) text", huge, negative=True)], [])
    [finding] = verdict.findings
    assert verdict.action.value == "block" and finding.signal.value == "format"
    assert "max_prompt_chars = 4,000" in finding.evidence["reason"] and finding.evidence["part"].startswith("node 6")
