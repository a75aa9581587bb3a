"""Prompt screening: the evasion and benign suites, offsets, keywords, steer, normal form."""

import collections

import pytest

from guard import Action, Bank, Guard, Policy, Signal
from guard.extract.text import compact, fold, fold_with_origin
from guard.match.text import TextMatcher

from .prompt_suites import BENIGN, EVASION


def test_suites_are_large_enough():
    assert len(EVASION) >= 300 and len(BENIGN) >= 1000
    techniques = {t for _, _, t in EVASION}
    assert {"english", "cjk", "pinyin", "leet", "homoglyph", "zero-width", "spacing", "full-width",
            "misspelling", "dilution", "indirect"} <= techniques


def test_evasion_recall_and_benign_false_positive_rate(guard, capsys):
    missed = [(p, c, t) for p, c, t in EVASION
              if not any(f.subject == c and f.action is not Action.ALLOW for f in guard.check_prompt(p).findings)]
    flagged = [p for p in BENIGN if guard.check_prompt(p).action is not Action.ALLOW]
    recall = 1 - len(missed) / len(EVASION)
    fp_rate = len(flagged) / len(BENIGN)
    by_technique = collections.Counter(t for _, _, t in missed)
    with capsys.disabled():
        print(f"\nprompt suites: recall {recall:.2%} on {len(EVASION)} evasion prompts "
              f"(missed by technique: {dict(by_technique) or 'none'}); false-positive rate {fp_rate:.2%} "
              f"on {len(BENIGN)} benign prompts ({flagged})")
    assert recall >= 0.99, missed
    assert fp_rate <= 0.005, flagged


@pytest.mark.parametrize("prompt, matched", [
    ("poster: Ｕｌｔｒａｍａｎ!", "Ｕｌｔｒａｍａｎ"),
    ("a u.l.t.r.a.m.a.n figure", "u.l.t.r.a.m.a.n"),
    ("Ult\u200bra\u200bman toy", "Ult\u200bra\u200bman"),
    ("the ultra-man returns", "ultra-man"),
    ("奧特曼和怪獸", "奧特曼"),
    ("ao te man hero", "ao te man"),
])
def test_offsets_point_at_what_the_user_wrote(guard, prompt, matched):
    f = next(f for f in guard.check_prompt(prompt).findings if f.signal is Signal.ALIAS)
    assert prompt[f.evidence["start"]:f.evidence["end"]] == matched == f.evidence["matched"]


def test_evidence_names_alias_and_route(guard):
    by_pinyin = guard.check_prompt("aoteman poster").findings[0]
    assert by_pinyin.evidence["alias"] == "奥特曼" and by_pinyin.evidence["via"] == "pinyin"
    typo = guard.check_prompt("doraemom plush").findings[0]
    assert typo.evidence["alias"] == "Doraemon" and typo.evidence["edit_distance"] == 1


def test_word_boundaries_for_latin_substrings_for_cjk(guard):
    assert guard.check_prompt("result raman noodles").action is Action.ALLOW
    assert guard.check_prompt("ultramarine").action is Action.ALLOW
    assert guard.check_prompt("我喜欢奥特曼的电影").action is Action.BLOCK


def test_strict_alias_needs_context(guard):
    assert guard.check_prompt("portrait of Mario Rossi, oil painting").action is Action.ALLOW
    v = guard.check_prompt("Mario the plumber jumping")
    assert v.action is Action.BLOCK and v.findings[0].evidence["alias"] == "Mario"


def test_benign_phrase_suppresses_an_alias(guard):
    assert guard.check_prompt("ultra man-made fibre jacket").action is Action.ALLOW
    assert guard.check_prompt("ultra man fighting a kaiju").action is Action.BLOCK


def test_indirect_anchors_flag_with_the_set(guard):
    v = guard.check_prompt("a plumber in a videogame, pixel art")
    assert v.action is Action.FLAG
    f = v.findings[0]
    assert f.signal is Signal.KEYWORDS and f.subject == "mario"
    assert f.evidence["keywords"] == ["plumber", "videogame"] and f.evidence["k"] == 2
    assert guard.check_prompt("a plumber fixing a sink").action is Action.ALLOW


def test_steer_allows_flagged_prompts_with_a_negative_addition(bank_file, encoder):
    g = Guard(Bank.load(bank_file), Policy.from_dict({"text": {"steer": True}}), encoder)
    v = g.check_prompt("a plumber in a videogame", negative="blurry")
    assert v.action is Action.ALLOW and v.findings[0].evidence["steered"]
    assert "Mario" in v.steer and "マリオ" in v.steer and "plumber" in v.steer
    assert v.to_dict()["steer"]["negative_prompt"] == v.steer
    assert g.check_prompt("super mario").action is Action.BLOCK  # steering never softens a block


def test_global_benign_list_from_policy(bank_file, encoder):
    g = Guard(Bank.load(bank_file), Policy.from_dict({"text": {"benign": ["pikachu yellow paint"]}}), encoder)
    assert g.check_prompt("the wall was pikachu yellow paint").action is Action.ALLOW


def test_text_policy_is_validated():
    from guard import ConfigError

    with pytest.raises(ConfigError, match="text.steer"):
        Policy.from_dict({"text": {"steer": "yes"}})
    with pytest.raises(ConfigError, match="text.colour"):
        Policy.from_dict({"text": {"colour": 1}})


def test_fold_is_the_same_for_aliases_and_text():
    assert compact("Ultraman") == compact("ＵＬＴＲＡ-ＭＡＮ") == compact("u1tr4m4n") == compact("Ultrаmаn")
    assert fold("超人力霸王") == "超人力霸王" and fold("瑪利歐") == "玛利欧"
    assert fold("うるとらまん") == fold("ウルトラマン")
    folded, origin = fold_with_origin("Ａ\u200bb")
    assert folded == "ab" and origin == [0, 2]


def test_matcher_without_bank():
    m = TextMatcher([("hero", ["Captain Example"], [], [["shield", "star"]], 2, [])])
    hits = m.find("captain   example with a star shield")
    assert {h.kind for h in hits} == {"alias", "keywords"}
    assert TextMatcher([]).find("anything") == []
