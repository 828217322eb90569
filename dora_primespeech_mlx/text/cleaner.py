"""One language run of text to phones, as upstream's `text.cleaner.clean_text`."""

from __future__ import annotations

from ..errors import PrimeSpeechError
from .symbols import symbol_to_id

# Chinese-only marks that upstream turns into pause symbols: every "," phone of such a text is
# replaced by the pause (only the first mark found, in this order, is handled).
_SPECIAL_PAUSES = (("￥", "SP2"), ("^", "SP3"))
LANGUAGES = ("zh", "en", "ja", "ko", "yue")
# Upstream's v1 cleaner has no Korean or Cantonese: it reads such a run as an English " ".
_V1_LANGUAGES = ("zh", "en", "ja")


def clean_text(text: str, language: str, version: str = "v2", g2pw=None) -> tuple[list[str], list[int] | None, str]:
    """Phones, word2ph and normalised text of `text` in `language` ("zh", "en", "ja", "ko" or
    "yue"; an "all_" prefix is ignored), as upstream's `text.cleaner.clean_text`. word2ph (phones
    per character of the normalised text) is given for Chinese and Cantonese, None otherwise. Phones
    outside the version's symbol table become "UNK"; English results shorter than 4 phones get a
    leading ",". `g2pw` (from `load_g2pw`) lets Chinese v2 read polyphones with g2pW."""
    table = symbol_to_id(version)  # validates the version too
    language = language.replace("all_", "")
    if language not in LANGUAGES:
        raise PrimeSpeechError(f"unknown text language {language!r}; use one of {', '.join(LANGUAGES)}")
    if version == "v1" and language not in _V1_LANGUAGES:
        language, text = "en", " "
    if language == "zh":
        from . import chinese

        for mark, pause in _SPECIAL_PAUSES:
            if mark in text:
                norm_text = chinese.text_normalize(text.replace(mark, ","))
                phones, word2ph = chinese.g2p(norm_text, version=version, g2pw=g2pw)
                return [pause if p == "," else p for p in phones], word2ph, norm_text
        norm_text = chinese.text_normalize(text)
        phones, word2ph = chinese.g2p(norm_text, version=version, g2pw=g2pw)
        _check_word2ph("Chinese", text, norm_text, phones, word2ph)
    elif language == "yue":
        from . import cantonese

        norm_text = cantonese.text_normalize(text)
        phones, word2ph = cantonese.g2p(norm_text)
        _check_word2ph("Cantonese", text, norm_text, phones, word2ph)
    elif language == "en":
        from . import english

        norm_text = english.text_normalize(text)
        phones = english.g2p(norm_text)
        if len(phones) < 4:
            phones = [","] + phones
        word2ph = None
    else:
        from . import japanese, korean

        module = japanese if language == "ja" else korean
        norm_text = module.text_normalize(text)
        phones = module.g2p(norm_text)
        word2ph = None
    return ["UNK" if p not in table else p for p in phones], word2ph, norm_text


def _check_word2ph(name: str, text: str, norm_text: str, phones: list[str], word2ph: list[int]) -> None:
    if len(phones) != sum(word2ph) or len(norm_text) != len(word2ph):
        raise PrimeSpeechError(f"{name} g2p is inconsistent for {text!r}; please report this text")
