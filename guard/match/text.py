"""Finding characters in text: names, aliases, pinyin, misspellings, indirect anchors.

One Aho-Corasick pass over the *compact* folded text (the folded words joined without
breaks, see `guard.extract.text`) finds every alias, pinyin spelling, keyword and benign
phrase at once. Joining the words is what catches "u l t r a m a n", "ultra-man" and
"u.l.t.r.a.m.a.n"; a Latin-script term must still start and end on word boundaries, so
"result raman" does not contain "ultraman". CJK terms match as substrings.

Misspellings of Latin aliases (distance 1 from 6 letters, 2 from 10) are found through a
delete-neighbourhood index (SymSpell's idea) over words and adjacent word pairs, verified
with rapidfuzz's OSA distance (a swap of two neighbouring letters is one edit): complete for single words; for two joined words, distance-2 variants are
found when at least one edit is an insertion or deletion.
The matcher only reports hits with their offsets in the original text; the policy decides.
"""

from __future__ import annotations

import bisect
import functools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import ahocorasick
from rapidfuzz.distance import OSA

from guard.extract.text import compact, fold, fold_with_origin, is_cjk, pinyin, tokens

ALIAS, KEYWORD, BENIGN = "alias", "keyword", "benign"


@dataclass(frozen=True)
class Term:
    kind: str  # alias, keyword or benign
    character: str | None
    text: str  # as written in the bank
    key: str  # compact folded form
    cjk: bool = False
    strict: bool = False
    via: str | None = None  # "pinyin" for pinyin spellings of Han names
    group: int = -1  # keyword set index


@dataclass(frozen=True)
class TextHit:
    """One character found in a text, with what matched and where (original offsets)."""

    character: str
    kind: str  # "alias" or "keywords"
    evidence: Mapping[str, Any] = field(default_factory=dict)


def max_distance(key: str) -> int:
    """Edit distance tolerated for a Latin alias of this (compact) length."""
    return 2 if len(key) >= 10 else 1 if len(key) >= 6 else 0


class TextMatcher:
    """The names, aliases and keywords of a bank, compiled once.

    Args:
        characters: ``(id, names, strict names, keyword sets, keyword_k, benign phrases)``
            per character; build with `TextMatcher.from_bank`.
        benign: phrases for every character that are known not to mean one.
        fuzzy: also find misspelt Latin aliases.
    """

    def __init__(self, characters: Iterable[tuple[str, Sequence[str], Sequence[str], Sequence[Sequence[str]],
                                                  int, Sequence[str]]],
                 benign: Sequence[str] = (), fuzzy: bool = True):
        self.terms: list[Term] = []
        self.keyword_k: dict[str, int] = {}
        self.keyword_sets: dict[str, list[list[str]]] = {}
        for cid, names, strict, keyword_sets, k, char_benign in characters:
            self.keyword_k[cid] = k
            self.keyword_sets[cid] = [list(s) for s in keyword_sets]
            for name in names:
                self._add_name(cid, name, strict=False)
            for name in strict:
                self._add_name(cid, name, strict=True)
            for g, words in enumerate(keyword_sets):
                for word in words:
                    self._add(Term(KEYWORD, cid, word, compact(word), is_cjk(word), group=g))
            for phrase in char_benign:
                self._add(Term(BENIGN, cid, phrase, compact(phrase), is_cjk(phrase)))
        for phrase in benign:
            self._add(Term(BENIGN, None, phrase, compact(phrase), is_cjk(phrase)))

        self._automaton = ahocorasick.Automaton()
        by_key: dict[str, list[int]] = defaultdict(list)
        for i, term in enumerate(self.terms):
            by_key[term.key].append(i)
        for key, ids in by_key.items():
            self._automaton.add_word(key, (len(key), tuple(ids)))
        self._empty = not by_key
        if not self._empty:
            self._automaton.make_automaton()

        self._fuzzy: dict[str, list[int]] = defaultdict(list)
        if fuzzy:
            for i, term in enumerate(self.terms):
                if term.kind == ALIAS and not term.cjk and max_distance(term.key):
                    variants = _deletes2(term.key) if max_distance(term.key) == 2 else _deletes(term.key)
                    for variant in variants:
                        self._fuzzy[variant].append(i)
        fuzzy_terms = {i for ids in self._fuzzy.values() for i in ids}
        lengths = [len(self.terms[i].key) for i in fuzzy_terms]
        reach = [len(self.terms[i].key) - max_distance(self.terms[i].key) for i in fuzzy_terms]
        self._fuzzy_len = (min(reach), max(lengths) + 2) if lengths else (0, -1)
        # A misspelt multi-word alias is looked for in word pairs that keep one word intact.
        self._alias_words = {w for i in fuzzy_terms for w in _words(self.terms[i].text)
                             if len(_words(self.terms[i].text)) > 1}
        self._fuzzy_lookup = functools.lru_cache(maxsize=65_536)(self._fuzzy_candidates)

    def _add_name(self, cid: str, name: str, strict: bool) -> None:
        key = compact(name)
        self._add(Term(ALIAS, cid, name, key, is_cjk(name), strict))
        spelled = pinyin(name)
        if spelled and spelled != key:
            self._add(Term(ALIAS, cid, name, spelled, False, strict, via="pinyin"))

    def _add(self, term: Term) -> None:
        if term.key:
            self.terms.append(term)

    @classmethod
    def from_bank(cls, bank, benign: Sequence[str] = (), fuzzy: bool = True) -> "TextMatcher":
        # A name listed as strict (a common first name, a common word) is strict everywhere.
        chars = [(c.id, [n for n in (*c.names.values(), *c.aliases) if n not in c.strict_aliases],
                  c.strict_aliases, c.keywords, c.keyword_k, c.benign) for c in bank.characters]
        return cls(chars, benign, fuzzy)

    # Matching -------------------------------------------------------------------------------
    def find(self, text: str, cache: bool = False) -> list[TextHit]:
        """Characters named or evoked in ``text``: at most one alias and one keyword hit each.

        ``cache``: remember the result for short texts. Meant for metadata, where the same tags
        ("1girl", "solo", "masterpiece") recur across a whole catalog; prompts are not cached.
        """
        if cache and len(text) <= 256:
            return list(self._find_cached(text))
        return self._find(text)

    @functools.lru_cache(maxsize=65_536)  # noqa: B019 (one matcher per Guard, kept for its lifetime)
    def _find_cached(self, text: str) -> tuple[TextHit, ...]:
        return tuple(self._find(text))

    def _find(self, text: str) -> list[TextHit]:
        if self._empty or not text:
            return []
        folded = fold(text)
        spans = tokens(folded)
        if not spans:
            return []
        raw = self._scan(folded, spans)
        if not raw:
            return []
        return self._resolve(text, folded, spans, raw)

    def _scan(self, folded: str, spans: list[tuple[int, int]]) -> list[tuple[Term, int, int, int, int, int]]:
        """Raw hits: (term, first word, last word, edit distance, compact start, compact end)."""
        words = [folded[s:e] for s, e in spans]
        joined = "".join(words)
        word_at_start, word_at_end, pos = {}, {}, 0
        for w, word in enumerate(words):
            word_at_start[pos] = w
            pos += len(word)
            word_at_end[pos] = w
        starts = sorted(word_at_start)
        hits = []
        for end, (length, ids) in self._automaton.iter(joined):
            start = end - length + 1
            for i in ids:
                term = self.terms[i]
                if term.cjk:
                    first = _word_containing(starts, start)
                    last = _word_containing(starts, end)
                elif start in word_at_start and end + 1 in word_at_end:
                    first, last = word_at_start[start], word_at_end[end + 1]
                else:
                    continue
                hits.append((term, first, last, 0, start, end + 1))
        if self._fuzzy:
            exact = {(h[1], h[2]) for h in hits if h[0].kind == ALIAS}
            ends = [s + len(w) for s, w in zip(starts, words)]
            hits += [(t, f, l, d, starts[f], ends[l]) for t, f, l, d in self._scan_fuzzy(words, exact)]
        return hits

    def _scan_fuzzy(self, words: list[str], exact: set[tuple[int, int]]):
        lo, hi = self._fuzzy_len
        found = []
        for first in range(len(words)):
            for last in range(first, min(first + 2, len(words))):
                if last > first and words[first] not in self._alias_words and words[last] not in self._alias_words:
                    continue
                candidate = "".join(words[first:last + 1])
                if not lo <= len(candidate) <= hi or (first, last) in exact or not candidate.isalpha():
                    continue
                for i, d in self._fuzzy_lookup(candidate, first == last):
                    found.append((self.terms[i], first, last, d))
        return found

    def _fuzzy_candidates(self, candidate: str, single_word: bool) -> tuple[tuple[int, int], ...]:
        """Aliases within their tolerated edit distance of ``candidate`` (cached per word:
        prompt vocabulary repeats heavily, so most words are looked up once)."""
        # Deletions on both sides find every edit within the tolerated distance; the second
        # round is only needed for long single words (pairs get one round).
        variants = _deletes2(candidate) if single_word and len(candidate) >= 8 else _deletes(candidate)
        found, seen = [], set()
        for variant in variants:
            for i in self._fuzzy.get(variant, ()):
                if i in seen:
                    continue
                seen.add(i)
                key = self.terms[i].key
                d = OSA.distance(candidate, key, score_cutoff=max_distance(key))
                if 0 < d <= max_distance(key):
                    found.append((i, d))
        return tuple(found)

    def _resolve(self, text: str, folded: str, spans, raw) -> list[TextHit]:
        benign = [(cs, ce, t) for t, _, _, _, cs, ce in raw if t.kind == BENIGN]

        def suppressed(term: Term, cs: int, ce: int) -> bool:
            return any(bs <= cs and ce <= be and t.character in (None, term.character) for bs, be, t in benign)

        aliases = [h for h in raw if h[0].kind == ALIAS and not suppressed(h[0], h[4], h[5])]
        keywords = [h for h in raw if h[0].kind == KEYWORD]
        context = {h[0].character for h in keywords} | {h[0].character for h in aliases if not h[0].strict}
        aliases = [h for h in aliases if not h[0].strict or h[0].character in context]

        locate = _Locator(text, folded, spans)
        hits: dict[tuple[str, str], TextHit] = {}
        # Exact before fuzzy, earliest first, longest first: the most specific evidence wins.
        for term, _, _, dist, cs, ce in sorted(aliases, key=lambda h: (h[3], h[4], h[4] - h[5])):
            if (term.character, "alias") in hits:
                continue
            start, end = locate(cs, ce)
            evidence = {"alias": term.text, "matched": text[start:end], "start": start, "end": end}
            if term.via:
                evidence["via"] = term.via
            if dist:
                evidence["edit_distance"] = dist
            hits[(term.character, "alias")] = TextHit(term.character, "alias", evidence)

        groups: dict[tuple[str, int], dict[str, tuple[int, int]]] = defaultdict(dict)
        for term, _, _, _, cs, ce in keywords:
            groups[(term.character, term.group)].setdefault(term.text, locate(cs, ce))
        for (cid, g), matched in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            if len(matched) < self.keyword_k[cid] or (cid, "keywords") in hits:
                continue
            hits[(cid, "keywords")] = TextHit(cid, "keywords", {
                "keywords": sorted(matched), "set": self.keyword_sets[cid][g], "k": self.keyword_k[cid],
                "positions": [list(matched[w]) for w in sorted(matched)],
            })
        return sorted(hits.values(), key=lambda h: (h.evidence.get("start", len(text)), h.character))


class _Locator:
    """Maps positions in the compact text back to offsets in the original text."""

    def __init__(self, text: str, folded: str, spans):
        # Compact position -> folded position, for every character of every word.
        self.folded_at = [i for s, e in spans for i in range(s, e)]
        refolded, origin = fold_with_origin(text)
        # Per-character folding equals whole-text folding except around rare compositions
        # (combining sequences, OpenCC phrases); then offsets cover the whole text.
        self.origin = origin if refolded == folded else None
        self.length = len(text)

    def __call__(self, start: int, end: int) -> tuple[int, int]:
        """Original ``[start, end)`` of compact ``[start, end)``."""
        if self.origin is None:
            return 0, self.length
        return self.origin[self.folded_at[start]], self.origin[self.folded_at[end - 1]] + 1


def _word_containing(starts: list[int], pos: int) -> int:
    return bisect.bisect_right(starts, pos) - 1


def _words(text: str) -> list[str]:
    folded = fold(text)
    return [folded[s:e] for s, e in tokens(folded)]


def _deletes(word: str) -> set[str]:
    """The word and every string one deletion away from it."""
    return {word, *(word[:i] + word[i + 1:] for i in range(len(word)))}


def _deletes2(word: str) -> set[str]:
    """The word and every string up to two deletions away from it."""
    return set().union(*(_deletes(w) for w in _deletes(word)))
