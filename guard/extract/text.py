"""Text normal form: the one folding applied alike to bank aliases and to screened text.

Folding, in order: Unicode NFKC (full-width and compatibility forms); removal of invisible
and control characters and combining marks; casefold; and ``str.translate`` with one table
that strips diacritics, folds confusable homoglyphs (Cyrillic/Greek look-alikes, from the
Unicode confusables data shipped by ``confusable_homoglyphs``), folds leetspeak, maps
hiragana to katakana (``jaconv``) and turns word-joining punctuation into spaces; finally
Traditional Chinese becomes Simplified (OpenCC ``t2s``) when the text has Han characters.

Because folding is lossy on purpose ("1" and "l" and "i" all become "i"), folded text is
for matching only. `fold_with_origin` maps every folded character back to its position
in the original text, so findings can point at what the user wrote.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import regex

# Leetspeak. "l" folds with "1" and "i" so that either reading matches.
_LEET = {"0": "o", "1": "i", "l": "i", "3": "e", "4": "a", "5": "s", "7": "t"}
# Punctuation read as a letter only when a letter or digit follows ("p!kachu", "$uper",
# "ultr@man"); "Ultraman!" keeps its exclamation mark. Length-preserving, so offsets hold.
_PUNCT_LEET = {"!": "i", "|": "i", "@": "a", "$": "s", "+": "t",
               "！": "i", "｜": "i", "＠": "a", "＄": "s", "＋": "t"}
_PUNCT_BEFORE_WORD = regex.compile(r"[!|@$+！｜＠＄＋](?=[^\W_])")
# Punctuation users put inside words ("u.l.t.r.a", "ultra_man") becomes a word break;
# the matcher then joins adjacent pieces.
_BREAKS = "._-·•*~/\\'\"`^=,:;()[]{}<>#%&?"
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Words: runs of CJK characters, or runs of other letters and digits. Splitting where the
# script changes keeps "Ultraman的壁纸" from being one word.
_CJK_CLASS = r"\p{Han}\p{Hiragana}\p{Katakana}\u30fc\u3005"
_TOKEN = regex.compile(rf"[{_CJK_CLASS}]+|[^\W_{_CJK_CLASS}]+")


# Invisible and control characters, combining marks, private use: removed before anything else.
_INVISIBLE = regex.compile(r"[\p{Cf}\p{Mn}\p{Me}\p{Co}\p{Cs}]|[^\P{Cc}\t\n\r]")


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


def fold(text: str) -> str:
    """The normal form of ``text`` (fast path, no offsets)."""
    table = _table()
    text = _PUNCT_BEFORE_WORD.sub(_punct_leet, text)
    if text.isascii():  # most prompts: NFKC, marks and look-alikes cannot occur
        return text.casefold().translate(table)
    # Before casefold (capital look-alikes such as Greek "Μ" map to "M"), and after it.
    folded = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).translate(table).casefold().translate(table)
    if _HAN.search(folded):
        folded = _t2s().convert(folded)
    return folded


def fold_with_origin(text: str) -> tuple[str, list[int]]:
    """The normal form of ``text`` and, for each of its characters, the index it came from."""
    pieces, origin = [], []
    for i, ch in enumerate(_PUNCT_BEFORE_WORD.sub(_punct_leet, text)):
        piece = fold(ch)
        pieces.append(piece)
        origin.extend([i] * len(piece))
    return "".join(pieces), origin


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
