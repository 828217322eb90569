"""One language run of text to phones, as upstream's `text.cleaner.clean_text`."""

from __future__ import annotations

from ..errors import PrimeSpeechError
from .language import not_supported
from .symbols import symbol_to_id

# Chinese-only marks that upstream turns into pause symbols: every "," phone of such a text is
# replaced by the pause (only the first mark found, in this order, is handled).
_SPECIAL_PAUSES = (("￥", "SP2"), ("^", "SP3"))


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
