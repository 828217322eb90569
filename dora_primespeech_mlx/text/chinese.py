"""Chinese text -> GPT-SoVITS phonemes, as upstream's text/chinese2.py (v2+) and chinese.py (v1) do.

`text_normalize(text)` spells out numbers and symbols and maps punctuation onto `, . ! ? … -`;
`g2p(norm_text, version, g2pw)` returns (phones, word2ph): 2 phones per syllable ("initial",
"final+tone" from the opencpop-strict table), 1 per punctuation mark. v2 differs from v1 only by
erhua merging and, when a g2pW model is given, by g2pW's polyphone readings.

Importing this module is cheap; the first `g2p` call loads jieba's dictionary index and pypinyin
(about 0.3-0.4 s on a 2-core x86 machine once the segmenter cache exists, ~1 s the very first
time it is built); `warmup()` does that ahead of time.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

from ..errors import PrimeSpeechError
from . import zh_normalization
from .tone_sandhi import ToneSandhi

if TYPE_CHECKING:
    from .g2pw import G2PW

PUNCTUATION = ("!", "?", "…", ",", ".", "-")
_PUNCT_CLASS = "".join(re.escape(p) for p in PUNCTUATION)

# Upstream's rep_map, applied left to right at each position ("..." is one key).
_PUNCT_MAP = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",", "、": ",",
    "...": "…", "$": ".", "/": ",", "—": "-", "~": "…", "～": "…",
}  # fmt: skip
_RE_PUNCT_MAP = re.compile("|".join(re.escape(k) for k in _PUNCT_MAP))
_RE_UNSPEAKABLE = re.compile(rf"[^\u4e00-\u9fa5{_PUNCT_CLASS}]+")
_RE_REPEATED_PUNCT = re.compile(rf"([{_PUNCT_CLASS}])([{_PUNCT_CLASS}])+")
_RE_SEGMENT_END = re.compile(rf"(?<=[{_PUNCT_CLASS}])\s*")
_RE_LATIN = re.compile("[a-zA-Z]+")

# pinyin finals spelled differently after an initial, and zero-initial syllables
_FINAL_AFTER_INITIAL = {"uei": "ui", "iou": "iu", "uen": "un"}
_ZERO_INITIAL_WHOLE = {"ing": "ying", "i": "yi", "in": "yin", "u": "wu"}
_ZERO_INITIAL_FIRST = {"v": "yu", "e": "e", "i": "y", "u": "w"}


def map_punctuation(text: str) -> str:
    """Map punctuation onto `, . ! ? … -` and drop everything but CJK ideographs and those marks."""
    text = text.replace("嗯", "恩").replace("呣", "母")
    text = _RE_PUNCT_MAP.sub(lambda m: _PUNCT_MAP[m.group()], text)
    return _RE_UNSPEAKABLE.sub("", text)


def collapse_punctuation(text: str) -> str:
    """Keep only the first of consecutive punctuation marks."""
    return _RE_REPEATED_PUNCT.sub(r"\1", text)


def text_normalize(text: str) -> str:
    """Upstream's zh text_normalize: TextNormalizer sentences, punctuation mapping, collapse."""
    return collapse_punctuation("".join(map_punctuation(s) for s in zh_normalization.normalize(text)))


# --- tables and shared state ------------------------------------------------------------------


def _data_lines(name: str) -> list[str]:
    text = resources.files(__package__).joinpath(f"data/{name}").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line and not line.startswith("#")]


@lru_cache(maxsize=1)
def _pinyin_table() -> dict[str, tuple[str, str]]:
    table = {}
    for line in _data_lines("opencpop-strict.txt"):
        pinyin, phones = line.split("\t")
        initial, final = phones.split(" ")
        table[pinyin] = (initial, final)
    return table


@lru_cache(maxsize=1)
def _erhua_words() -> tuple[frozenset[str], frozenset[str]]:
    lines = _data_lines("zh_erhua_words.txt")
    return (frozenset(x[1:] for x in lines if x[0] == "+"), frozenset(x[1:] for x in lines if x[0] == "-"))


@lru_cache(maxsize=1)
def _pypinyin():
    from pypinyin import Style, lazy_pinyin

    return lazy_pinyin, Style


@lru_cache(maxsize=65536)
def _initials_finals(word: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    lazy_pinyin, style = _pypinyin()
    initials = lazy_pinyin(word, neutral_tone_with_five=True, style=style.INITIALS)
    finals = lazy_pinyin(word, neutral_tone_with_five=True, style=style.FINALS_TONE3)
    n = min(len(initials), len(finals))
    return tuple(initials[:n]), tuple(finals[:n])


def _finals(word: str) -> list[str]:
    return list(_initials_finals(word)[1])


@lru_cache(maxsize=1)
def _frontend() -> tuple[object, ToneSandhi]:
    from .zh_segment import default_segmenter

    segmenter = default_segmenter()
    return segmenter, ToneSandhi(finals_of=_finals, search_cut=segmenter.search_cut)


def warmup() -> None:
    """Load the segmenter, pypinyin and the tables now rather than on the first `g2p` call."""
    _frontend()
    _pinyin_table()
    _erhua_words()
    _initials_finals("你好")


# --- g2p ---------------------------------------------------------------------------------------


def _merge_erhua(initials: list[str], finals: list[str], word: str, pos: str) -> tuple[list[str], list[str]]:
    """v2: a final 儿 takes the tone of the syllable before it ("玩儿" -> er2 after wan2)."""
    must, never = _erhua_words()
    last = len(finals) - 1
    if last >= 0 and word[last] == "儿" and finals[last] == "er1":
        finals[last] = "er2"
    if word not in must and (word in never or pos in ("a", "j", "nr")):
        return initials, finals
    if len(finals) != len(word):
        return initials, finals
    if last >= 1 and word[last] == "儿" and finals[last] in ("er2", "er5") and word[-2:] not in never:
        finals[last] = "er" + finals[last - 1][-1]
    return initials, finals


def _to_phones(initial: str, final: str, segment: str) -> list[str]:
    # upstream fails (AssertionError) on the same inputs: the ~14 CJK characters pypinyin cannot read
    if initial == final:
        if initial not in PUNCTUATION:
            raise PrimeSpeechError(f"a character of {segment!r} has no pinyin: it cannot be spoken")
        return [initial]
    body, tone = final[:-1], final[-1:]
    if tone not in ("1", "2", "3", "4", "5"):
        raise PrimeSpeechError(f"no toned pinyin for {initial + final!r} in {segment!r}")
    if initial:
        pinyin = initial + _FINAL_AFTER_INITIAL.get(body, body)
    else:
        pinyin = _ZERO_INITIAL_WHOLE.get(body)
        if pinyin is None:
            pinyin = _ZERO_INITIAL_FIRST[body[0]] + body[1:] if body[:1] in _ZERO_INITIAL_FIRST else body
    phones = _pinyin_table().get(pinyin)
    if phones is None:
        raise PrimeSpeechError(f"pinyin {pinyin!r} (from {initial + final!r} in {segment!r}) has no phonemes")
    return [phones[0], phones[1] + tone]


def _word_pinyin_g2pw(word: str, pinyins: list[str]) -> tuple[list[str], list[str]]:
    from pypinyin.contrib.tone_convert import to_finals_tone3, to_initials

    from .g2pw import correct_pronunciation

    initials, finals = [], []
    for py in correct_pronunciation(word, pinyins):
        if py[0].isalpha():
            initials.append(to_initials(py))
            finals.append(to_finals_tone3(py, neutral_tone_with_five=True))
        else:
            initials.append(py)
            finals.append(py)
    return initials, finals


def g2p(norm_text: str, version: str = "v2", g2pw: G2PW | None = None) -> tuple[list[str], list[int]]:
    """Phones and word2ph of normalised Chinese text (`text_normalize` output).

    version "v1" follows upstream chinese.py (no erhua, never g2pW); any other version follows
    chinese2.py. With `g2pw` (see `load_g2pw`) polyphones are read by the g2pW model, otherwise
    by pypinyin. Latin letters are dropped, as upstream does.
    """
    segmenter, sandhi = _frontend()
    v2 = version != "v1"
    use_g2pw = v2 and g2pw is not None
    segments = [_RE_LATIN.sub("", s) for s in _RE_SEGMENT_END.split(norm_text) if s.strip() != ""]
    readings = iter(g2pw([s for s in segments if s]) if use_g2pw and any(segments) else [])

    phones: list[str] = []
    word2ph: list[int] = []
    for segment in segments:
        words = sandhi.pre_merge(segmenter.pos_cut(segment))
        pinyins = next(readings) if use_g2pw and segment else []
        start = 0
        for word, pos in words:
            end = start + len(word)
            if pos == "eng":
                start = end
                continue
            if use_g2pw:
                initials, finals = _word_pinyin_g2pw(word, pinyins[start:end])
            else:
                cached = _initials_finals(word)
                initials, finals = list(cached[0]), list(cached[1])
            start = end
            finals = sandhi.modify_tones(word, pos, finals)
            if v2:
                initials, finals = _merge_erhua(initials, finals, word, pos)
            for initial, final in zip(initials, finals, strict=False):  # upstream zips, too
                syllable = _to_phones(initial, final, segment)
                phones.extend(syllable)
                word2ph.append(len(syllable))
    return phones, word2ph
