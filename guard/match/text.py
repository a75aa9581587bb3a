"""Finding characters in text: names, aliases, pinyin, misspellings, indirect anchors.

One Aho-Corasick pass over the *compact* folded text (the folded words joined without
breaks, see `guard.extract.text`) finds every alias, pinyin spelling, keyword and benign
phrase at once. Joining the words is what catches "u l t r a m a n", "ultra-man" and
"u.l.t.r.a.m.a.n"; a Latin-script term must still start and end on word boundaries, so
"result raman" does not contain "ultraman". CJK terms match as substrings.

A distinctive Latin alias (6+ letters, not a strict one) also matches glued to the start or
end of one word: LoRA names and trigger words are written that way (``UltramanFan``,
``pikachuV3``, ``SuperMario64``, ``<lora:ultramanV2:0.8>``). Words are never joined across a
comma, semicolon or line end. Katakana names match whole katakana runs only (``マリオ`` is not
in ``マリオネット``); a benign phrase suppresses only the words it names ("ultra man made"
leaves "Ultraman made of lego" alone).

Misspellings of Latin aliases are found through a delete-neighbourhood index (SymSpell's
idea) over words and adjacent word pairs, verified with rapidfuzz's OSA distance (a swap of
two neighbouring letters is one edit). The tolerance follows how distinctive an alias is:
one edit from 6 letters, two from 10 for a single word, one for a multi-word name, none for
pinyin spellings (they are syllables of ordinary words). Repeated letters
(``ultramaaaan``), English respellings (``pee ka choo``, ``soopa mario``) and dropped vowels
(``ultrmn``) are compared on their own keys. Real words near a name (``Ultramar``,
``supermart``) are data (``[near_names]`` in ``guard/data/text-folds.toml``), never
misspellings.

A phonetic layer reads text with Han or kana characters once more, romanised (toneless
pinyin, Hepburn kana): homophones (``奥特慢``, ``皮卡秋``) and mixed scripts (``Ultraマン``,
``皮卡chu``) then meet the bank's Latin names and pinyin spellings, on syllable boundaries.
The matcher only reports hits with their offsets in the original text; the policy decides.
"""

from __future__ import annotations

import bisect
import functools
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import ahocorasick
from rapidfuzz.distance import OSA

import regex

from guard.extract.text import compact, fold, fold_with_origin, folds, is_cjk, pinyin, prepare, readings, tokens

ALIAS, KEYWORD, BENIGN, CONTEXT = "alias", "keyword", "benign", "context"
#: A Latin alias this long (compact letters) is distinctive enough to match glued to a word.
GLUE_FROM = 6
_KANA_ONLY = regex.compile(r"^[\u30a1-\u30fa\u30fc]+$")
_KATAKANA_CHAR = regex.compile(r"[\u30a1-\u30fa\u30fc\uff66-\uff9f]")
_ROMANISE = regex.compile(r"[\p{Han}]+|[\p{Hiragana}\p{Katakana}\u30fc\uff66-\uff9f]+")
_VOWELS = set("aeiouy")
_HAN_CHAR = regex.compile(r"\p{Han}")
_HARD_SET = frozenset(",;\n，；、")
_HARD = regex.compile("[,;\n，；、]")


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
    words: tuple[str, ...] = ()  # folded words (benign phrases word for word, pinyin by syllable)
    plain: str = ""  # a pinyin spelling's letters as written (no leetspeak folding)

    @property
    def glue(self) -> bool:
        return self.kind == ALIAS and not self.cjk and not self.strict and self.via is None \
            and len(self.key) >= GLUE_FROM

    @property
    def katakana(self) -> bool:
        return self.cjk and bool(_KANA_ONLY.match(self.key))


@dataclass(frozen=True)
class TextHit:
    """One character found in a text, with what matched and where (original offsets)."""

    character: str
    kind: str  # "alias" or "keywords"
    evidence: Mapping[str, Any] = field(default_factory=dict)


def max_distance(key: str, words: int = 1) -> int:
    """Edit distance tolerated for a Latin alias of this (compact) length and word count."""
    if words > 1:
        return 1 if len(key) >= 8 else 0
    return 2 if len(key) >= 10 else 1 if len(key) >= 6 else 0


def _tolerance(term: Term) -> int:
    """Edits tolerated for ``term``: none for pinyin spellings (syllables of ordinary words)."""
    return 0 if term.via is not None else max_distance(term.key, len(_words(term.text)))


def collapse(word: str) -> str:
    """``word`` with every run of one letter written once ("ultramaaaan" -> "ultraman")."""
    return "".join(ch for i, ch in enumerate(word) if i == 0 or ch != word[i - 1])


@functools.lru_cache(maxsize=1)
def _respellings() -> tuple[tuple[str, str], ...]:
    return tuple((a, b) for a, b in folds()["respelling"]["rules"])


def respell(word: str) -> str:
    """An English sounds-like key ("peekachoo" and "pikachu" -> "pikaku")."""
    for a, b in _respellings():
        word = word.replace(a, b)
    return collapse(word)


def skeleton(word: str) -> str:
    """The consonants of ``word`` ("ultrmn" and "ultraman" -> "ltrmn")."""
    return "".join(ch for ch in word if ch not in _VOWELS)


@functools.lru_cache(maxsize=1)
def _near_names() -> frozenset[str]:
    return frozenset(compact(w) for words in folds()["near_names"].values() for w in words)


class TextMatcher:
    """The names, aliases and keywords of a bank, compiled once.

    Args:
        characters: ``(id, names, strict names, keyword sets, keyword_k, benign phrases)``
            per character; build with `TextMatcher.from_bank`.
        benign: phrases for every character that are known not to mean one.
        fuzzy: also find misspelt Latin aliases.
    """

    def __init__(self, characters: Iterable[tuple], benign: Sequence[str] = (), fuzzy: bool = True):
        self.terms: list[Term] = []
        self.keyword_k: dict[str, int] = {}
        self.keyword_sets: dict[str, list[list[str]]] = {}
        for cid, names, strict, keyword_sets, k, char_benign, *rest in characters:
            for word in (rest[0] if rest else ()):  # context words, for strict aliases
                self._add(Term(CONTEXT, cid, word, compact(word), is_cjk(word)))
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
                self._add(Term(BENIGN, cid, phrase, compact(phrase), is_cjk(phrase), words=tuple(_words(phrase))))
        for phrase in benign:
            self._add(Term(BENIGN, None, phrase, compact(phrase), is_cjk(phrase), words=tuple(_words(phrase))))

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
        self._tolerated = [_tolerance(term) if term.kind == ALIAS and not term.cjk else 0 for term in self.terms]
        # Keys of the other spelling routes: repeated letters, sounds-like, dropped vowels.
        self._variants: dict[tuple[str, str], list[int]] = defaultdict(list)
        if fuzzy:
            for i, term in enumerate(self.terms):
                if term.kind != ALIAS or term.cjk or term.via is not None:
                    continue
                if self._tolerated[i]:
                    variants = _deletes2(term.key) if self._tolerated[i] == 2 else _deletes(term.key)
                    for variant in variants:
                        self._fuzzy[variant].append(i)
                if len(term.key) >= GLUE_FROM and term.key.isalpha():
                    self._variants[("repeated letters", collapse(term.key))].append(i)
                    self._variants[("sounds like", respell(term.key))].append(i)
                    if len(term.key) >= 7 and len(skeleton(term.key)) >= 4:
                        self._variants[("vowels dropped", skeleton(term.key))].append(i)
        fuzzy_terms = {i for ids in self._fuzzy.values() for i in ids}
        lengths = [len(self.terms[i].key) for i in fuzzy_terms]
        reach = [len(self.terms[i].key) - self._tolerated[i] for i in fuzzy_terms]
        self._fuzzy_len = (min(reach), max(lengths) + 2) if lengths else (0, -1)
        # A misspelt multi-word alias is looked for in word pairs that keep one word intact.
        self._alias_words = {w for i in fuzzy_terms for w in _words(self.terms[i].text)
                             if len(_words(self.terms[i].text)) > 1}
        self._variant_lookup = functools.lru_cache(maxsize=65_536)(self._variant_candidates)
        self._fuzzy_lookup = functools.lru_cache(maxsize=65_536)(self._fuzzy_candidates)

    def _add_name(self, cid: str, name: str, strict: bool) -> None:
        key = compact(name)
        self._add(Term(ALIAS, cid, name, key, is_cjk(name), strict))
        spelled = pinyin(name)
        if spelled and spelled != key:
            syllables = _syllables(name)
            self._add(Term(ALIAS, cid, name, spelled, False, strict, via="pinyin",
                           words=tuple(fold(s) for s in syllables), plain="".join(syllables)))

    def _add(self, term: Term) -> None:
        if term.key:
            self.terms.append(term)

    @classmethod
    def from_bank(cls, bank, benign: Sequence[str] = (), fuzzy: bool = True) -> "TextMatcher":
        # A name listed as strict (a common first name, a common word) is strict everywhere.
        chars = [(c.id, [n for n in (*c.names.values(), *c.aliases) if n not in c.strict_aliases],
                  c.strict_aliases, c.keywords, c.keyword_k, c.benign, c.context) for c in bank.characters]
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
        found: dict[tuple[str, str], TextHit] = {}
        # The text as written, the reading with ambiguous punctuation as separators, and,
        # where it has Han or kana, the romanised reading: the first evidence per character wins.
        passes = [(reading, None, True) for reading in readings(text)]
        prepared, before = prepare(text)  # entities decoded first: "&#x5965;特慢" is read too
        romanised = _romanise(prepared)
        if romanised is not None:
            reading, origin = romanised
            passes.append((reading, origin if before is None else [before[i] for i in origin], False))
        for reading, outer, fuzzy in passes:
            for hit in self._find_in(text, reading, outer, fuzzy):
                found.setdefault((hit.character, hit.kind), hit)
        return sorted(found.values(), key=lambda h: (h.evidence.get("start", len(text)), h.character))

    def _find_in(self, text: str, reading: str, outer: list[int] | None, fuzzy: bool) -> list[TextHit]:
        folded = fold(reading)
        spans = tokens(folded)
        if not spans:
            return []
        raw = self._scan(folded, spans, latin_only=outer is not None, fuzzy=fuzzy)
        if not raw:
            return []
        return self._resolve(text, reading, folded, spans, raw, outer)

    def _scan(self, folded: str, spans: list[tuple[int, int]], latin_only: bool = False, fuzzy: bool = True
              ) -> list[tuple[Term, int, int, int, int, int, str | None]]:
        """Raw hits: (term, first word, last word, edit distance, compact start, compact end, route)."""
        words = [folded[s:e] for s, e in spans]
        joined = "".join(words)
        # A phrase ends at a comma, semicolon or line end: nothing is joined across it.
        hard = [False] * len(spans)
        if _HARD.search(folded):
            hard[1:] = [not _HARD_SET.isdisjoint(folded[spans[w - 1][1]:spans[w][0]]) for w in range(1, len(spans))]
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
                    if latin_only:
                        continue
                    first = _word_containing(starts, start)
                    last = _word_containing(starts, end)
                elif start in word_at_start and end + 1 in word_at_end:
                    first, last = word_at_start[start], word_at_end[end + 1]
                elif term.glue and (start in word_at_start or end + 1 in word_at_end) and \
                        (w := _word_containing(starts, start)) == _word_containing(starts, end) and \
                        words[w] not in _near_names():
                    first = last = w  # glued to one word: "UltramanFan"
                else:
                    continue
                if any(hard[first + 1:last + 1]):
                    continue
                hits.append((term, first, last, 0, start, end + 1, None))
        if fuzzy and (self._fuzzy or self._variants):
            exact = {(h[1], h[2]) for h in hits if h[0].kind == ALIAS}
            ends = [s + len(w) for s, w in zip(starts, words)]
            hits += [(t, f, l, d, starts[f], ends[l], route)
                     for t, f, l, d, route in self._scan_fuzzy(words, hard, exact)]
        return hits

    def _scan_fuzzy(self, words: list[str], hard: list[bool], exact: set[tuple[int, int]]):
        lo, hi = self._fuzzy_len
        near = _near_names()
        found = []
        # A window holding a word with digits or symbols is never a misspelling: such a word
        # ends every window that reaches it (checked once per word, not per window).
        alpha = [w.isalpha() for w in words]
        shortest_variant = GLUE_FROM - 2  # `_variant_candidates` looks at nothing shorter
        for first in range(len(words)):
            if not alpha[first]:
                continue
            for last in range(first, min(first + 3, len(words))):
                if last > first and (hard[last] or not alpha[last]):
                    break
                if last - first == 2 and len(words[first]) + len(words[first + 1]) + len(words[last]) > 12:
                    break  # three words are joined only when short: "pee ka choo"
                candidate = words[first] if last == first else "".join(words[first:last + 1])
                if (first, last) in exact or candidate in near:
                    continue
                if last - first < 2 and lo <= len(candidate) <= hi and (
                        last == first or words[first] in self._alias_words or words[last] in self._alias_words):
                    for i, d in self._fuzzy_lookup(candidate, first == last):
                        found.append((self.terms[i], first, last, d, None))
                if len(candidate) >= shortest_variant:
                    for i, d, route in self._variant_lookup(candidate, first == last):
                        found.append((self.terms[i], first, last, d, route))
        return found

    def _variant_candidates(self, candidate: str, single_word: bool) -> tuple[tuple[int, int, str], ...]:
        """Aliases ``candidate`` spells with repeated letters, by sound, or without vowels."""
        if len(candidate) < GLUE_FROM - 2:
            return ()
        keys = [("repeated letters", collapse(candidate)), ("sounds like", respell(candidate))]
        # Vowels dropped: at most one vowel left ("i" aside: "l" folds to it), so that "Dorman"
        # (o, a kept) is not "Doraemon" while "ultrmn" is "Ultraman".
        if single_word and len(candidate) >= 5 and sum(ch in _VOWELS and ch != "i" for ch in candidate) <= 1 \
                and len(skeleton(candidate)) >= 4:
            keys.append(("vowels dropped", skeleton(candidate)))
        found = []
        for route, key in keys:
            for i in self._variants.get((route, key), ()):
                if self.terms[i].key != candidate:
                    found.append((i, 1, route))
        return tuple(found)

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
                tolerated = self._tolerated[i]
                d = OSA.distance(candidate, self.terms[i].key, score_cutoff=tolerated)
                if 0 < d <= tolerated:
                    found.append((i, d))
        return tuple(found)

    @staticmethod
    def _syllables_align(text: str, words: list[str], first: int, last: int, syllables: tuple[str, ...],
                         locate) -> bool:
        starts = [0]
        for word in words:
            starts.append(starts[-1] + len(word))
        pieces = []
        for w in range(first, last + 1):
            at = locate(starts[w], starts[w] + 1)[0]
            pieces.append((words[w], bool(_HAN_CHAR.match(text[at:at + 1]))))
        return _aligned(pieces, syllables)

    def _resolve(self, text: str, reading: str, folded: str, spans, raw, outer: list[int] | None) -> list[TextHit]:
        words = [folded[s:e] for s, e in spans]
        # A benign phrase counts only where the text has its words, word for word.
        benign = [(cs, ce, t) for t, first, last, _, cs, ce, _ in raw
                  if t.kind == BENIGN and (t.cjk or tuple(words[first:last + 1]) == t.words)]

        def suppressed(term: Term, cs: int, ce: int) -> bool:
            return any(bs <= cs and ce <= be and t.character in (None, term.character) for bs, be, t in benign)

        locate = _Locator(reading, folded, spans, outer, len(text))
        aliases = []
        for h in raw:
            term, _, _, _, cs, ce, _ = h
            if term.kind != ALIAS or suppressed(term, cs, ce):
                continue
            start, end = locate(cs, ce)
            if term.katakana and outer is None and (_KATAKANA_CHAR.match(text[start - 1:start] or " ")
                                                   or _KATAKANA_CHAR.match(text[end:end + 1] or " ")):
                continue  # inside a longer katakana word: マリオネット is not マリオ
            if term.via == "pinyin":
                # Pinyin is compared letter for letter ("Mailou" is not "maliou"), and a Han
                # reading syllable for syllable (马料 "ma liao" is not 马里奥 "ma li ao").
                if outer is None and _letters(text[start:end]) != term.plain:
                    continue
                if outer is not None and not self._syllables_align(text, words, h[1], h[2], term.words, locate):
                    continue
            aliases.append((h, start, end))
        keywords = [h for h in raw if h[0].kind == KEYWORD]
        context = {h[0].character for h in raw if h[0].kind in (KEYWORD, CONTEXT)} | \
            {h[0].character for h, _, _ in aliases if not h[0].strict}
        # "by Mario Sironi" names an artist: a strict alias right after "by" is a person's name.
        aliases = [a for a in aliases if not a[0][0].strict or (
            a[0][0].character in context and not (a[0][1] > 0 and words[a[0][1] - 1] == "by"))]

        hits: dict[tuple[str, str], TextHit] = {}
        # Exact before fuzzy, earliest first, longest first: the most specific evidence wins.
        for (term, _, _, dist, cs, ce, route), start, end in sorted(aliases, key=lambda a: (a[0][3], a[0][4],
                                                                                            a[0][4] - a[0][5])):
            if (term.character, "alias") in hits:
                continue
            evidence = {"alias": term.text, "matched": text[start:end], "start": start, "end": end}
            if term.via or outer is not None:
                evidence["via"] = "phonetic" if outer is not None else term.via
            if dist:
                evidence["edit_distance"] = dist
            if route:
                evidence["spelling"] = route
            hits[(term.character, "alias")] = TextHit(term.character, "alias", evidence)

        groups: dict[tuple[str, int], dict[str, tuple[int, int]]] = defaultdict(dict)
        for term, _, _, _, cs, ce, _ in keywords:
            groups[(term.character, term.group)].setdefault(term.text, locate(cs, ce))
        for (cid, g), matched in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            if len(matched) < self.keyword_k[cid] or (cid, "keywords") in hits:
                continue
            hits[(cid, "keywords")] = TextHit(cid, "keywords", {
                "keywords": sorted(matched), "set": self.keyword_sets[cid][g], "k": self.keyword_k[cid],
                "positions": [list(matched[w]) for w in sorted(matched)],
            })
        return list(hits.values())


def _aligned(pieces: list[tuple[str, bool]], syllables: tuple[str, ...]) -> bool:
    """Whether text words cover a name's syllables one to one where they are Han characters
    (one syllable each) and whole syllables where they are Latin ("pika" = "pi" + "ka")."""
    i = 0
    for word, han in pieces:
        if han:
            if i >= len(syllables) or syllables[i] != word:
                return False
            i += 1
            continue
        joined = ""
        while i < len(syllables) and len(joined) < len(word):
            joined += syllables[i]
            i += 1
        if joined != word:
            return False
    return i == len(syllables)


class _Locator:
    """Maps positions in the compact text back to offsets in the original text."""

    def __init__(self, text: str, folded: str, spans, outer: list[int] | None = None, length: int | None = None):
        self.text, self.folded, self.spans = text, folded, spans
        self.outer = outer  # a romanised reading's own positions -> the original text's
        self.length = len(text) if length is None else length
        self.origin: list[int] | None = None
        self._made = False

    def _make(self) -> None:
        # Compact position -> folded position, for every character of every word.
        self.folded_at = [i for s, e in self.spans for i in range(s, e)]
        refolded, origin = fold_with_origin(self.text)
        # Per-character folding equals whole-text folding except around rare compositions
        # (combining sequences, OpenCC phrases); then offsets cover the whole text.
        self.origin = origin if refolded == self.folded else None
        self._made = True

    def __call__(self, start: int, end: int) -> tuple[int, int]:
        """Original ``[start, end)`` of compact ``[start, end)`` (made when first asked)."""
        if not self._made:
            self._make()
        if self.origin is None:
            return 0, self.length
        first, last = self.origin[self.folded_at[start]], self.origin[self.folded_at[end - 1]]
        if self.outer is not None:
            first, last = self.outer[first], self.outer[last]
        return first, last + 1


def _letters(text: str) -> str:
    """The Latin letters of ``text`` as written (prompt syntax undone, no leetspeak)."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", prepare(text)[0]).casefold()
                   if ch.isascii() and ch.isalpha())


def _syllables(name: str) -> list[str]:
    """The toneless pinyin syllables of a name's Han characters and its other letters."""
    from pypinyin import lazy_pinyin

    out = []
    for piece in lazy_pinyin(name):
        out += ["".join(ch for ch in word.lower() if ch.isalpha()) for word in piece.split()]
    return [s for s in out if s]


@functools.lru_cache(maxsize=1)
def _romaji_units() -> tuple[dict[str, str], "regex.Pattern"]:
    """Hepburn romaji of every hiragana and hiragana digraph (jaconv's readings, computed once:
    its converter walks a table per call)."""
    import jaconv

    singles = [chr(cp) for cp in range(0x3041, 0x3097) if chr(cp) != "っ"]
    units = {s: jaconv.kana2alphabet(s) for s in singles}
    for s in singles:
        for small in "ゃゅょぁぃぅぇぉ":
            units[s + small] = jaconv.kana2alphabet(s + small)
    pattern = regex.compile("|".join(sorted(map(regex.escape, units), key=len, reverse=True)))
    return units, pattern


def _kana_to_romaji(hiragana: str) -> str:
    units, pattern = _romaji_units()
    out = pattern.sub(lambda m: units[m.group()], hiragana)
    # The small tsu doubles the consonant after it ("ねっと" -> "netto"); "ー" lengthens.
    return regex.sub(r"っ([a-z])", r"\1\1", out).replace("っ", "").replace("ー", "")


@functools.lru_cache(maxsize=65_536)
def _syllable(han: str) -> str:
    """One Han character's toneless pinyin (its first reading: homophones, not phrases)."""
    from pypinyin import lazy_pinyin

    return lazy_pinyin(han)[0]


def _romanise(text: str) -> tuple[str, list[int]] | None:
    """``text`` with Han characters as toneless pinyin syllables and kana as Hepburn romaji,
    each a word of its own, and for each character of it the original index (a kana run's
    letters point at the run's first and last characters)."""
    if not _ROMANISE.search(text):
        return None
    import jaconv

    out: list[str] = []
    origin: list[int] = []
    last = 0
    for m in _ROMANISE.finditer(text):
        out.append(text[last:m.start()])
        origin.extend(range(last, m.start()))
        run = m.group()
        if regex.match(r"\p{Han}", run):
            for k, ch in enumerate(run):
                piece = f" {_syllable(ch)} "
                out.append(piece)
                origin.extend([m.start() + k] * len(piece))
        else:
            romaji = _kana_to_romaji(jaconv.kata2hira(jaconv.h2z(run)))
            romaji = regex.sub(r"([aeiou])\1+", r"\1", romaji)  # long vowels: "pikachuu" is "pikachu"
            piece = f" {romaji} "
            out.append(piece)
            origin.extend([m.start()] + [m.end() - 1] * (len(piece) - 1))
        last = m.end()
    out.append(text[last:])
    origin.extend(range(last, len(text)))
    return "".join(out), origin


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
