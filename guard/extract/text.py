"""Text normal form: the one folding applied alike to bank aliases and to screened text.

Before folding, what a prompt's syntax hides is undone, each step length-preserving or
tracked so offsets still point at what the user wrote: HTML entities are decoded twice
(open_clip's tokenizer does, so the model reads ``ultr&#97;man`` as the name); prompt
weights and LoRA-tag strengths (``(mario:1.1)``, ``<lora:NAME:0.8>``) become blanks;
pinyin tone digits (``ao4 te4 man4``) are dropped; kanji that look like katakana
(``ウル卜ラマン``) are read as katakana next to katakana.

Folding, in order: Unicode NFKC (full-width and compatibility forms); removal of invisible
and control characters and combining marks; casefold; and ``str.translate`` with one table
that strips diacritics, folds confusable homoglyphs (Cyrillic/Greek look-alikes, from the
Unicode confusables data shipped by ``confusable_homoglyphs``), styled alphabets (small
capitals, negative circled and squared letters, regional indicators: ``guard/data/
text-folds.toml``), folds leetspeak, maps hiragana to katakana (``jaconv``) and small kana to
large, and turns word-joining punctuation into spaces; finally Traditional Chinese becomes
Simplified (OpenCC ``t2s``) when the text has Han characters.

Because folding is lossy on purpose ("1" and "l" and "i" all become "i"), folded text is
for matching only. `fold_with_origin` maps every folded character back to its position
in the original text, so findings can point at what the user wrote.
"""

from __future__ import annotations

import functools
import html
import re
import tomllib
import unicodedata
from pathlib import Path

import regex

_FOLDS = Path(__file__).resolve().parent.parent / "data" / "text-folds.toml"

# Leetspeak. "l" folds with "1" and "i" so that either reading matches.
_LEET = {"0": "o", "1": "i", "l": "i", "3": "e", "4": "a", "5": "s", "7": "t"}
# Punctuation read as a letter only when a letter or digit follows ("p!kachu", "$uper",
# "ultr@man"); "Ultraman!" keeps its exclamation mark. Length-preserving, so offsets hold.
_PUNCT_LEET = {"!": "i", "|": "i", "@": "a", "$": "s", "+": "t",
               "！": "i", "｜": "i", "＠": "a", "＄": "s", "＋": "t"}
_PUNCT_BEFORE_WORD = regex.compile(r"[!|@$+！｜＠＄＋](?=[^\W_])")
# Punctuation users put inside words ("u.l.t.r.a", "ultra_man") becomes a word break;
# the matcher then joins adjacent pieces.
# Commas, semicolons and line ends stay: they end a phrase, and the matcher never joins
# words across them ("8k, ultra, man walking" holds no "ultraman").
_BREAKS = "._-·•*~/\\'\"`^=:()[]{}<>#%&?"
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Words: runs of CJK characters, or runs of other letters and digits. Splitting where the
# script changes keeps "Ultraman的壁纸" from being one word.
_CJK_CLASS = r"\p{Han}\p{Hiragana}\p{Katakana}\u30fc\u3005"
_TOKEN = regex.compile(rf"[{_CJK_CLASS}]+|[^\W_{_CJK_CLASS}]+")


# Invisible and control characters, combining marks, private use: removed before anything else.
_INVISIBLE = regex.compile(r"[\p{Cf}\p{Mn}\p{Me}\p{Co}\p{Cs}]|[^\P{Cc}\t\n\r]")


@functools.lru_cache(maxsize=1)
def folds() -> dict:
    """The folding data (``guard/data/text-folds.toml``)."""
    return tomllib.loads(_FOLDS.read_text(encoding="utf-8"))


def _styled_letters() -> dict[int, str]:
    table = {}
    for pattern in folds()["styled"]["names"]:
        for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
            try:
                table[ord(unicodedata.lookup(pattern.format(letter)))] = letter.lower()
            except KeyError:  # not every style has every letter
                pass
    return table


@functools.lru_cache(maxsize=1)
def _table() -> dict[int, str]:
    from confusable_homoglyphs import confusables
    import jaconv

    table: dict[int, str] = {}
    for char, glyphs in confusables.confusables_data.items():
        if len(char) != 1 or char.isascii():
            continue
        ascii_glyphs = [g["c"] for g in glyphs if len(g["c"]) == 1 and g["c"].isascii() and g["c"].isalnum()]
        if ascii_glyphs:
            table[ord(char)] = ascii_glyphs[0]
    for cp in [*range(0x00C0, 0x0250), *range(0x1E00, 0x1F00)]:  # Latin letters with diacritics
        base = unicodedata.normalize("NFKD", chr(cp))[:1]
        if base.isascii() and base.isalpha():
            table[cp] = base
    for cp in range(0x3041, 0x3097):  # hiragana -> katakana, as jaconv does it
        table[cp] = jaconv.hira2kata(chr(cp))
    data = folds()
    table.update(_styled_letters())
    table.update({ord(k): v for k, v in data["letters"].items()})
    table.update({cp: "" for cp in data["invisible"]["codepoints"]})
    kana = data["kana"]
    for small, large in [*zip(kana["small"], kana["large"]), *zip(kana["confusable"], kana["confusable_as"])]:
        table[ord(small)] = large
        table[ord(jaconv.kata2hira(small))] = large  # the hiragana small forms too
    for src, dst in _LEET.items():
        table[ord(src)] = dst
    for ch in _BREAKS:
        table[ord(ch)] = " "
    for cp in [*range(0x00, 0x20), 0x7F]:
        if chr(cp) not in "\t\n\r":
            table[cp] = ""  # ASCII control characters (the fast path skips _INVISIBLE)
    return table


@functools.lru_cache(maxsize=1)
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


def _punct_leet(m) -> str:
    return _PUNCT_LEET[m.group()]


# Prompt weights, prompt-editing steps and LoRA-tag strengths: "(mario:1.1)", "[a:b:0.5]",
# "<lora:NAME:0.8>". The number would otherwise read as leetspeak glued to the name.
_WEIGHT = regex.compile(r":\s*-?\d+(?:\.\d+)?\s*(?=[)\]>])")
_ENTITY = regex.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_KATAKANA = "\u30a1-\u30fa\u30fc\uff66-\uff9f"


@functools.lru_cache(maxsize=1)
def _pinyin_syllables() -> frozenset[str]:
    from pypinyin.pinyin_dict import pinyin_dict

    syllables = set()
    for readings in pinyin_dict.values():
        for reading in readings.split(","):
            plain = "".join(c for c in unicodedata.normalize("NFKD", reading) if not unicodedata.combining(c))
            syllables.add(plain.replace("ü", "v").lower())
    return frozenset(s for s in syllables if s.isascii() and s.isalpha())


_TONE_DIGIT = regex.compile(r"[1-5]")
_TONED = regex.compile(r"(?<![^\W\d_])([a-zA-Z]{1,6})([1-5])(?![^\W_])")


@functools.lru_cache(maxsize=1)
def _lookalikes():
    kana = folds()["kana"]
    table = dict(zip(kana["lookalike_kanji"], kana["lookalike_kana"]))
    chars = "".join(table)
    pattern = regex.compile(rf"(?<=[{_KATAKANA}])[{chars}]|[{chars}](?=[{_KATAKANA}])")
    return table, pattern


def prepare(text: str) -> tuple[str, list[int] | None]:
    """Undo what prompt syntax hides (see the module doc): the text to fold and, when its
    length changed (HTML entities), the original index of each of its characters."""
    origin = None
    if "&" in text:
        for _ in range(2):  # "&amp;#97;" is "a" after two rounds, as open_clip's tokenizer reads it
            pieces, where, last = [], [], 0
            for m in _ENTITY.finditer(text):
                pieces.append(text[last:m.start()])
                where.extend(range(last, m.start()))
                decoded = html.unescape(m.group())
                pieces.append(decoded)
                where.extend([m.start()] * len(decoded))
                last = m.end()
            if not pieces:
                break
            pieces.append(text[last:])
            where.extend(range(last, len(text)))
            origin = [origin[i] for i in where] if origin is not None else where
            text = "".join(pieces)
    if ":" in text:
        text = _WEIGHT.sub(lambda m: " " * len(m.group()), text)
    if _TONE_DIGIT.search(text):
        syllables = _pinyin_syllables()
        toned = [m for m in _TONED.finditer(text) if m.group(1).lower() in syllables]
        if len(toned) >= 2:  # one toned word is as likely leetspeak ("pikachu1")
            chars = list(text)
            for m in toned:
                chars[m.start(2)] = " "
            text = "".join(chars)
    if not text.isascii():
        table, pattern = _lookalikes()
        text = pattern.sub(lambda m: table[m.group()], text)
    return text, origin


def fold(text: str) -> str:
    """The normal form of ``text`` (fast path, no offsets)."""
    return _fold_prepared(_PUNCT_BEFORE_WORD.sub(_punct_leet, prepare(text)[0]))


def _fold_prepared(text: str) -> str:
    """Folding proper, on a text whose prompt syntax is already undone."""
    table = _table()
    if text.isascii():  # most prompts: NFKC, marks and look-alikes cannot occur
        return text.casefold().translate(table)
    # Before casefold (capital look-alikes such as Greek "Μ" map to "M"), and after it.
    folded = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).translate(table).casefold().translate(table)
    if _HAN.search(folded):
        folded = _t2s().convert(folded)
    return folded


def fold_with_origin(text: str) -> tuple[str, list[int]]:
    """The normal form of ``text`` and, for each of its characters, the index it came from."""
    prepared, before = prepare(text)
    pieces, origin = [], []
    for i, ch in enumerate(_PUNCT_BEFORE_WORD.sub(_punct_leet, prepared)):
        piece = _fold_prepared(ch)
        pieces.append(piece)
        origin.extend([i if before is None else before[i]] * len(piece))
    return "".join(pieces), origin


#: Punctuation that is leetspeak before a letter ("p|kachu") but a separator between single
#: letters or words ("U|l|t|r|a|m|a|n", "[ultraman|doraemon]", "P+i+k+a"): read both ways.
_AMBIGUOUS = regex.compile(r"(?<=[^\W_])[|+!](?=[^\W_])")


def readings(text: str) -> list[str]:
    """``text``, and (same length, same offsets) the reading where ambiguous punctuation
    between letters is a separator rather than a letter."""
    if not _AMBIGUOUS.search(text):
        return [text]
    return [text, _AMBIGUOUS.sub(" ", text)]


def tokens(folded: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each word (run of letters and digits) in a folded text."""
    return [m.span() for m in _TOKEN.finditer(folded)]


def is_han(text: str) -> bool:
    return bool(_HAN.search(text))


def is_cjk(text: str) -> bool:
    """True when ``text`` has CJK characters: such aliases match as substrings, not words."""
    return any(unicodedata.east_asian_width(ch) in ("W", "F") for ch in text)


def compact(text: str) -> str:
    """Folded words joined without breaks: the form aliases are stored and matched in."""
    folded = fold(text)
    return "".join(folded[s:e] for s, e in tokens(folded))


def pinyin(text: str) -> str | None:
    """Toneless pinyin of the Han characters in ``text`` (e.g. 奥特曼 -> aoteman), if any."""
    if not is_han(text):
        return None
    from pypinyin import lazy_pinyin

    return compact("".join(lazy_pinyin(text)))
