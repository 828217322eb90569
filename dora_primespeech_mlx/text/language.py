"""Language modes and splitting mixed text into language runs, as upstream's TextPreprocessor does.

Upstream splits with `LangSegmenter` (split-lang + a fastText language-id model that it downloads,
126 MB). Here the same section and merge rules run on Unicode script classes instead of a model:
Han runs are Chinese, runs with Latin letters (or only symbols) are English, digits and punctuation
attach to their neighbours by upstream's rules, other scripts are "unknown" and take a neighbour's
language. A Han/kana run with kana in it is Japanese, a Hangul run Korean; a Han run without kana is
Chinese, where the model decides per run (it calls some kanji-only words, 東京, Japanese).

`drop_unspeakable` finds what no frontend can read in a mode (letters and digits of other scripts:
Cyrillic, Arabic, Thai; kana and Hangul where the mode has no Japanese or Korean reader), so that the
pipeline reports it instead of synthesising the lone punctuation mark the frontends would leave of it.
"""

from __future__ import annotations

import re
import unicodedata

from ..errors import PrimeSpeechError
from .zh_normalization import SPELLED_SYMBOLS

# upstream's text_lang values: auto detects zh/ja/ko/en runs (auto_yue reads Chinese runs as Cantonese);
# zh/ja/ko/yue read every non-English run in that language; all_* all but full-English runs
SUPPORTED_MODES = ("auto", "auto_yue", "zh", "all_zh", "en", "ja", "all_ja", "ko", "all_ko", "yue", "all_yue")

# split-lang's punctuation set: each such character starts a section of its own.
_PUNCTUATION = frozenset(
    "〜~,.;:!?，。！？；：、·([{<（【《〈「『“‘)]}>）】》〉」』”’\"-_——#$%&……￥'*+<=>?@[\\]^_`{|}~"
)
_HAN_OR_KANA_RE = re.compile(r"[\u4e00-\u9fff\u3040-\u30ff々]")
_KANA_RE = re.compile(r"[\u3040-\u30ff]")
_HANGUL_RE = re.compile(r"[\uac00-\ud7af]")
# what the Japanese and Korean readers take (for drop_unspeakable): kana and half-width katakana; Hangul
# syllables and jamo
_KANA_LETTER_RE = re.compile(r"[\u3040-\u30ff\uff66-\uff9d]")
_HANGUL_LETTER_RE = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
# upstream's "this is English" test: a Latin letter, and only ASCII / general / CJK / full-width marks
_FULL_EN_RE = re.compile(
    r"^(?=.*[A-Za-z])[A-Za-z0-9\s\u0020-\u007E\u2000-\u206F\u3000-\u303F\uFF00-\uFFEF]+$"
)
# characters an unknown-language run keeps when upstream salvages it as Chinese
_CJK_KEEP_RE = re.compile(r"[0-9、-〜。！？.!?… /]")
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DB5), (0x20000, 0x2A6DD), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0x30000, 0x3134A),
               (0x31350, 0x323AF), (0x2EBF0, 0x2EE5D))
_STOPS = (",", ".", "!", "?", "，", "。", "！", "？")


def check_mode(mode: str) -> str:
    """Validate a language mode (upstream's text_lang values)."""
    if mode not in SUPPORTED_MODES:
        raise PrimeSpeechError(
            f"unknown language mode {mode!r}; use one of {', '.join(SUPPORTED_MODES)}"
        )
    return mode


def _is_latin_letter(ch: str) -> bool:
    return ch.isalpha() and "LATIN" in unicodedata.name(ch, "")


def _sections(text: str) -> list[list[str]]:
    """Cut into [kind, text] sections the way split-lang's pre-split does: Han/kana, Hangul, digits,
    one section per punctuation mark, and everything else; spaces join the current section and an
    apostrophe right after a non-space stays inside its word."""
    sections: list[list[str]] = []
    kind, buf = "other", []
    for i, ch in enumerate(text):
        if _HAN_OR_KANA_RE.match(ch):
            new = "cjk"
        elif _HANGUL_RE.match(ch):
            new = "ko"
        elif ch.isdigit():
            new = "digit"
        elif ch in _PUNCTUATION:
            new = "keep" if ch == "'" and i > 0 and not text[i - 1].isspace() else "punct"
        elif ch.isspace():
            new = "keep"
        else:
            new = "other"
        if new != "keep" and (new != kind or new == "punct"):
            if buf:
                sections.append([kind, "".join(buf)])
            kind, buf = new, []
        buf.append(ch)
    if buf:
        sections.append([kind, "".join(buf)])
    return sections


def _section_lang(kind: str, text: str) -> str:
    if kind == "cjk":
        return "ja" if _KANA_RE.search(text) else "zh"
    if kind == "other":
        # Stands in for the language-id model: Latin-script words are English, and so are runs of
        # symbols (the model's usual answer for them); other scripts are unknown ("x").
        letters = [c for c in text if c.isalpha()]
        return "en" if not letters or any(_is_latin_letter(c) for c in letters) else "x"
    return {"ko": "ko", "digit": "digit", "punct": "punctuation"}[kind]


def _merge_punctuation(sections: list[list[str]]) -> list[tuple[str, str]]:
    """Attach each punctuation section to the section before it (or, at the start, after it)
    and join neighbours of one kind; returns (language, text) runs."""
    merged: list[list] = []  # [kind, [[lang, text], ...]]
    for kind, text in sections:
        lang = _section_lang(kind, text)
        if merged and merged[-1][0] == "punct":
            prev = merged[-1]
            prev[0] = kind
            prev[1][-1] = [lang, prev[1][-1][1] + text]
        elif merged and kind == "punct":
            merged[-1][1][-1][1] += text
        elif merged and merged[-1][0] == kind:
            merged[-1][1].append([lang, text])
        else:
            merged.append([kind, [[lang, text]]])
    runs: list[tuple[str, str]] = []
    for _, subs in merged:
        joined: list[list[str]] = []
        last = ""
        for lang, text in subs:
            if joined and (lang == "punctuation" or lang == last or last == ""):
                if lang != "punctuation" and joined[-1][0] == "punctuation":
                    joined[-1][0] = lang
                joined[-1][1] += text
            else:
                joined.append([lang, text])
            last = lang
        runs.extend((lang, text) for lang, text in joined)
    return runs


def _merge_same(items: list[list[str]], item: list[str]) -> None:
    if items and items[-1][0] == item[0]:
        items[-1][1] += item[1]
    else:
        items.append(item)


def _keep_cjk(text: str) -> str:
    return "".join(
        c for c in text
        if any(a <= ord(c) <= b for a, b in _CJK_RANGES) or _CJK_KEEP_RE.match(c)
    )


def lang_segments(text: str, default_lang: str = "") -> list[tuple[str, str]]:
    """Upstream's `LangSegmenter.getTexts(text, default_lang)` with script classes in place of the
    language-id model. Languages: "zh", "en", and "ja"/"ko"/"punctuation" where upstream has them."""
    runs = _merge_punctuation(_sections(text.strip()))
    items: list[list[str]] = []
    has_digits = False
    for lang, chunk in runs:
        if lang == "digit":
            if default_lang:
                lang = default_lang
            else:
                has_digits = True
        elif _FULL_EN_RE.match(chunk):
            lang = "en"
        elif default_lang:
            lang = default_lang
        elif lang == "x":
            kept = _keep_cjk(chunk)
            if kept:
                lang, chunk = "zh", kept
        _merge_same(items, [lang, chunk])

    if has_digits:  # digits take the language of a neighbour
        pending, items = items, []
        for i, item in enumerate(pending):
            if item[0] == "digit":
                nxt = pending[i + 1] if i + 1 < len(pending) else None
                if default_lang:
                    item[0] = default_lang
                elif items and nxt is None:
                    item[0] = items[-1][0]
                elif not items and nxt is not None:
                    item[0] = pending[1][0]
                elif items and nxt is not None:
                    prev = items[-1]
                    if prev[0] == nxt[0]:
                        item[0] = prev[0]
                    elif prev[1][-1] in _STOPS:
                        item[0] = nxt[0]
                    elif nxt[1][0] in _STOPS:
                        item[0] = prev[0]
                    elif item[1][-1] in ("。", "."):
                        item[0] = prev[0]
                    elif len(prev[1]) >= len(nxt[1]):
                        item[0] = prev[0]
                    else:
                        item[0] = nxt[0]
                else:
                    item[0] = "zh"
            _merge_same(items, item)

    pending, items = items, []
    for item in pending:  # unknown runs take the language before them (or after, at the start)
        if item[0] == "x":
            item[0] = items[-1][0] if items else pending[1][0] if len(pending) > 1 else "zh"
        _merge_same(items, item)
    return [(lang, chunk) for lang, chunk in items]


# Character classes of `drop_unspeakable`.
_SPEAK, _DROP, _LONE, _NEUTRAL = range(4)
_HAN_FIRST, _HAN_LAST = "\u4e00", "\u9fa5"  # the ideographs the Chinese g2p keeps


def _char_class(ch: str, mode: str) -> int:
    """_SPEAK: a frontend reads it in `mode`; _DROP: a letter or digit that no frontend reads; _LONE: a
    Greek letter that the Chinese normaliser reads as a symbol name ("α" -> 阿尔法); _NEUTRAL: marks,
    spaces, punctuation, symbols (read or dropped by the frontends, never decisive)."""
    category = unicodedata.category(ch)
    if category[0] not in "LN":
        return _NEUTRAL
    reader = _reader(mode)
    chinese = reader in ("zh", "auto")  # the Chinese (and Cantonese) normaliser reads the text
    if "0" <= ch <= "9":
        return _SPEAK
    if _HAN_FIRST <= ch <= _HAN_LAST:
        return _DROP if reader in ("en", "ko") else _SPEAK
    if category == "Lo" and _KANA_LETTER_RE.match(ch):
        return _SPEAK if reader in ("ja", "auto") else _DROP
    if category == "Lo" and _HANGUL_LETTER_RE.match(ch):
        return _SPEAK if reader in ("ko", "auto") else _DROP
    if category == "Nd":  # the Chinese normaliser reads full-width digits; other scripts' digits are theirs
        return _SPEAK if reader in ("zh", "auto", "ja") and "０" <= ch <= "９" else _DROP
    if category[0] == "N" or category == "Lm":  # ①, ², Ⅻ, 々, ー: read as symbols or dropped
        return _SPEAK if chinese and ch in SPELLED_SYMBOLS else _NEUTRAL
    if _is_latin_letter(ch):
        # English reads a letter whose base (accents stripped) is ASCII: "café" -> "cafe", "ß" is dropped.
        base = ch if mode in _ALL_CHINESE else unicodedata.normalize("NFD", ch)[0]
        return _SPEAK if base.isascii() else _DROP
    if ch in SPELLED_SYMBOLS and chinese:
        return _LONE
    return _DROP


_ALL_CHINESE = ("all_zh", "all_yue")  # modes that send every non-English run to the Chinese normaliser


def _reader(mode: str) -> str:
    """Which frontend reads a mode's non-English runs: en, zh (Mandarin or Cantonese), ja, ko, or auto."""
    mode = mode.replace("all_", "")
    return {"auto_yue": "auto", "yue": "zh"}.get(mode, mode)


def _char_classes(text: str, mode: str) -> list[int]:
    classes: list[int] = []
    for i, ch in enumerate(text):
        if unicodedata.category(ch)[0] == "M":  # a combining mark belongs to its base character
            classes.append(classes[-1] if classes else _NEUTRAL)
            continue
        kind = _char_class(ch, mode)
        if kind == _LONE:
            # a Greek word is Greek text, not a symbol; a letter alone is a symbol, which only all_zh
            # sends to the Chinese normaliser intact (auto and zh may lose it with the marks around it)
            beside = (text[j] for j in (i - 1, i + 1) if 0 <= j < len(text))
            if any(c.isalpha() and not _HAN_FIRST <= c <= _HAN_LAST for c in beside):
                kind = _DROP
            elif mode in _ALL_CHINESE:
                kind = _SPEAK
        classes.append(kind)
    if mode in _ALL_CHINESE:  # these send a word with an accented letter to the Chinese frontend: all of it is lost
        start = 0
        for i in range(len(text) + 1):
            if i < len(text) and _is_latin_letter(text[i]):
                continue
            if _DROP in classes[start:i]:
                classes[start:i] = [_DROP] * (i - start)
            start = i + 1
    return classes


def drop_unspeakable(text: str, mode: str) -> tuple[str, tuple[str, ...]]:
    """`text` without the runs of characters that no frontend speaks in language `mode`, and those runs.

    A run starts and ends with a letter or digit of a script no frontend reads (and takes the
    punctuation, spaces and marks between), e.g. "Привет, мир" in "你好 Привет, мир world". Returns
    ("", runs) when nothing speakable is left (no runs for text of marks or symbols alone); text that
    is speakable throughout comes back unchanged with no runs.
    Kana are speakable in the ja and auto modes, Hangul in the ko and auto modes.
    """
    check_mode(mode)
    classes = _char_classes(text, mode)
    speaks = _SPEAK in classes
    dropped_kinds = (_DROP,) if speaks else (_DROP, _LONE)
    runs: list[tuple[int, int]] = []
    start = end = -1
    for i, kind in enumerate(classes):
        if kind in dropped_kinds:
            start, end = (i if start < 0 else start), i + 1
        elif kind == _SPEAK and start >= 0:
            runs.append((start, end))
            start = -1
    if start >= 0:
        runs.append((start, end))
    dropped = tuple(text[a:b].strip() for a, b in runs)
    if not speaks:
        return "", dropped
    kept, last = [], 0
    for a, b in runs:
        kept.append(text[last:a])
        last = b
    kept.append(text[last:])
    return "".join(kept), dropped


def split_by_language(text: str, mode: str) -> list[tuple[str, str]]:
    """(language, text) pieces of one segment, as upstream's get_phones_and_bert splits it.

    `mode` is upstream's text_lang: "en" (one English piece); "all_zh", "all_ja", "all_ko",
    "all_yue" (every run but a full-English one in that language); "zh", "ja", "ko", "yue" (English
    runs vs the rest, labelled with the mode); "auto" (per-run language); "auto_yue" (as auto, with
    Chinese runs read as Cantonese).
    Languages returned: "zh", "en", "ja", "ko", "yue". BERT features are computed for "zh" pieces only.
    """
    check_mode(mode)
    text = re.sub(r" {2,}", " ", text)
    if mode == "en":
        return [("en", text)]
    if mode.startswith("all_"):
        lang = mode[4:]
        pieces = lang_segments(text, "zh" if lang == "yue" else lang)
        return _finish([(lang if run == "zh" else run, chunk) for run, chunk in pieces])
    if mode in ("zh", "ja", "ko", "yue"):
        out: list[list[str]] = []
        for lang, chunk in lang_segments(text):
            lang = "en" if lang == "en" else mode  # Han cannot tell zh from ja: the mode decides
            _merge_same(out, [lang, chunk])
        return [(lang, chunk) for lang, chunk in out]
    pieces = lang_segments(text)
    if mode == "auto_yue":
        pieces = [("yue" if lang == "zh" else lang, chunk) for lang, chunk in pieces]
    return _finish(pieces)


def _finish(pieces: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # A segment of marks only keeps upstream's label "punctuation", which its cleaner reads as
    # English with the text replaced by a space.
    return [("en", " ") if lang == "punctuation" else (lang, chunk) for lang, chunk in pieces]
