"""The project's own red-team suite by category, near-collisions, composed real-world
prompts, and the homophone layer's collisions with a Chinese dictionary."""

import importlib.util
from pathlib import Path

import pytest

from guard import Action, Signal

from .prompt_redteam import EVASIONS, NEAR_COLLISIONS, composed_benign


def _names(guard, prompt: str, character: str) -> bool:
    return any(f.subject == character and f.action is not Action.ALLOW for f in guard.check_prompt(prompt).findings)


def test_recall_by_category(guard, capsys):
    recall, missed = {}, {}
    for category, cases in EVASIONS.items():
        missed[category] = [p for p, c in cases if not _names(guard, p, c)]
        recall[category] = 1 - len(missed[category]) / len(cases)
    total = sum(len(c) for c in EVASIONS.values())
    overall = 1 - sum(len(m) for m in missed.values()) / total
    with capsys.disabled():
        print(f"\nred-team suite ({total} prompts): overall {overall:.1%}; " +
              ", ".join(f"{c} {r:.0%}" for c, r in recall.items()))
    assert len(EVASIONS) >= 13 and total >= 120
    assert overall >= 0.97, missed
    assert min(recall.values()) >= 0.85, missed


def test_near_collisions_are_allowed(guard, capsys):
    assert len(NEAR_COLLISIONS) >= 100 - 15  # the list, less the phrases found not benign
    flagged = [p for p in NEAR_COLLISIONS if guard.check_prompt(p).action is not Action.ALLOW]
    with capsys.disabled():
        print(f"\nnear-collisions: {len(flagged)}/{len(NEAR_COLLISIONS)} not allowed {flagged}")
    assert len(flagged) / len(NEAR_COLLISIONS) <= 0.02, flagged


@pytest.mark.parametrize("prompt, character, route", [
    ("奥特慢打怪兽", "ultraman", "phonetic"),       # a homophone, read as pinyin
    ("Ultraマン", "ultraman", "phonetic"),           # each part in its own script
    ("<lora:ultramanV2:0.8> hero pose", "ultraman", None),
    ("pee ka choo", "pikachu", None),
])
def test_evidence_says_how_the_name_was_read(guard, prompt, character, route):
    [f] = [f for f in guard.check_prompt(prompt).findings if f.signal is Signal.ALIAS and f.subject == character]
    assert f.evidence.get("via") == route
    assert 0 <= f.evidence["start"] < f.evidence["end"] <= len(prompt)


def test_a_benign_phrase_suppresses_only_its_own_words(guard):
    assert guard.check_prompt("ultra man-made fibre jacket").action is Action.ALLOW
    assert guard.check_prompt("Ultraman made of lego bricks").action is Action.BLOCK


def test_katakana_names_match_whole_katakana_words(guard):
    assert guard.check_prompt("マリオネットの人形劇").action is Action.ALLOW
    assert guard.check_prompt("マリオのゲーム").action is Action.BLOCK  # hiragana after it is a particle


def test_phrases_do_not_join_across_commas(guard):
    assert guard.check_prompt("8k, ultra, man walking a dog").action is Action.ALLOW
    assert guard.check_prompt("8k ultra man walking a dog").action is Action.BLOCK


@pytest.mark.slow
def test_composed_real_world_prompts_are_allowed(guard, capsys):
    prompts = composed_benign(16_000)
    flagged = [p for p in prompts if guard.check_prompt(p).action is not Action.ALLOW]
    with capsys.disabled():
        print(f"\ncomposed benign prompts: {len(flagged)}/{len(prompts)} not allowed "
              f"({len(flagged) / len(prompts):.3%}): {flagged[:8]}")
    assert len(prompts) >= 15_000
    assert len(flagged) / len(prompts) <= 0.0005, flagged


@pytest.mark.slow
def test_homophones_do_not_collide_with_chinese_words(guard, capsys):
    """Every word of jieba's dictionary (349,046) through the text matcher: the names it finds
    must be the characters' own names or their transliterations, never an ordinary word."""
    spec = importlib.util.find_spec("jieba")
    words = [line.split()[0] for line in
             (Path(list(spec.submodule_search_locations)[0]) / "dict.txt").read_text(encoding="utf-8").splitlines()
             if line.strip()]
    found = {w: [h.character for h in guard._text.find(w) if h.kind == "alias"] for w in words}
    found = {w: c for w, c in found.items() if c}
    with capsys.disabled():
        print(f"\njieba dictionary: {len(found)} of {len(words)} words name a character: {found}")
    transliterations = {"奥特曼", "皮卡丘", "皮卡秋", "马里奥", "玛丽奥", "玛丽欧", "玛利奥", "叮当猫"}
    assert len(words) > 300_000
    assert set(found) <= transliterations, set(found) - transliterations


def test_an_entity_encoded_homophone_is_read(guard):
    assert _names(guard, "&#x5965;特慢打怪兽", "ultraman")  # 奥 as an HTML entity, then a homophone


def test_with_the_clip_text_stage_off_the_encoder_is_never_loaded(bank_file):
    from guard import Bank, Guard, Policy

    g = Guard(Bank.load(bank_file), Policy.from_dict({"text": {"clip_text": "off"}}))
    assert g.check_prompt("ultraman fighting a kaiju").action is Action.BLOCK
    assert g.check_prompt("a quiet harbor at dawn").action is Action.ALLOW
    assert g._encoder is None
