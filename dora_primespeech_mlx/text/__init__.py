"""Text frontend: text -> GPT-SoVITS phones, offline, as upstream GPT-SoVITS produces them.

Public surface:
- `clean_text(text, language, version="v2", g2pw=None) -> (phones, word2ph, norm_text)`:
  one language run ("zh" or "en") to phones; word2ph (phones per character of norm_text) for
  Chinese, None for English.
- `cut(text, method) -> list[str]`: upstream's cut0..cut5.
- `prepare_segments(text, lang, method)`: the segments upstream synthesises one by one.
- `split_by_language(text, mode)`: (language, text) runs of a segment for a language mode.
- `drop_unspeakable(text, mode)`: the text without what no frontend reads in that mode, and what was cut.
- `fit_segment(segment, lang)`: a segment too long for the models cut between words.
- `segment_phones(segment, mode, version, g2pw)`: all of the above for one segment.
- `phones_to_ids(phones, version)`, `symbols(version)`.
- `load_g2pw(model_root)`: the optional g2pW polyphone model for Chinese v2.

Nothing heavy is imported here: each language loads its data on first use.
"""

from __future__ import annotations

from ..errors import PrimeSpeechError
from .cut import cut, cut_text, split_long
from .language import SUPPORTED_MODES, check_mode, drop_unspeakable, not_supported, split_by_language
from .preprocess import PhonePiece, fit_segment, piece_length, prepare_segments, segment_phones
from .symbols import phones_to_ids, symbol_to_id, symbols

__all__ = [
    "SUPPORTED_MODES", "PhonePiece", "check_mode", "clean_text", "cut", "cut_text", "drop_unspeakable",
    "fit_segment", "load_g2pw", "phones_to_ids", "piece_length", "prepare_segments", "segment_phones",
    "split_by_language", "split_long", "symbols",
]

# Chinese-only marks that upstream turns into pause symbols: every "," phone of such a text is
# replaced by the pause (only the first mark found, in this order, is handled).
_SPECIAL_PAUSES = (("￥", "SP2"), ("^", "SP3"))


def load_g2pw(model_root):
    """The g2pW polyphone reader of `<model_root>/G2PWModel/`, or None to use pypinyin
    (see `text.g2pw.load_g2pw`)."""
    from .g2pw import load_g2pw as _load

    return _load(model_root)


def clean_text(text: str, language: str, version: str = "v2", g2pw=None) -> tuple[list[str], list[int] | None, str]:
    """Phones, word2ph and normalised text of `text` in `language` ("zh" or "en"; an "all_"
    prefix is ignored), as upstream's `text.cleaner.clean_text`. Phones outside the version's
    symbol table become "UNK"; English results shorter than 4 phones get a leading ",".
    `g2pw` (from `load_g2pw`) lets Chinese v2 read polyphones with g2pW."""
    table = symbol_to_id(version)  # validates the version too
    language = language.replace("all_", "")
    if language in ("ja", "ko", "yue"):
        raise not_supported({"ja": "Japanese", "ko": "Korean", "yue": "Cantonese"}[language] + " text")
    if language == "zh":
        from . import chinese

        for mark, pause in _SPECIAL_PAUSES:
            if mark in text:
                norm_text = chinese.text_normalize(text.replace(mark, ","))
                phones, word2ph = chinese.g2p(norm_text, version=version, g2pw=g2pw)
                return [pause if p == "," else p for p in phones], word2ph, norm_text
        norm_text = chinese.text_normalize(text)
        phones, word2ph = chinese.g2p(norm_text, version=version, g2pw=g2pw)
        if len(phones) != sum(word2ph) or len(norm_text) != len(word2ph):
            raise PrimeSpeechError(f"Chinese g2p is inconsistent for {text!r}; please report this text")
    elif language == "en":
        from . import english

        norm_text = english.text_normalize(text)
        phones = english.g2p(norm_text)
        if len(phones) < 4:
            phones = [","] + phones
        word2ph = None
    else:
        raise PrimeSpeechError(f"unknown text language {language!r}; use 'zh' or 'en'")
    return ["UNK" if p not in table else p for p in phones], word2ph, norm_text
