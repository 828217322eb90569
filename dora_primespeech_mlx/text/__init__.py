"""Text frontend: text -> GPT-SoVITS phones, offline, as upstream GPT-SoVITS produces them.

Public surface:
- `clean_text(text, language, version="v2", g2pw=None) -> (phones, word2ph, norm_text)`:
  one language run ("zh", "en", "ja", "ko" or "yue") to phones; word2ph (phones per character of
  norm_text) for Chinese and Cantonese, None for the others. Japanese, Korean and Cantonese need
  the `cjk` extra.
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

from .cleaner import clean_text
from .cut import cut, cut_text, split_long
from .language import SUPPORTED_MODES, check_mode, drop_unspeakable, split_by_language
from .preprocess import PhonePiece, fit_segment, piece_length, prepare_segments, segment_phones
from .symbols import phones_to_ids, symbols

__all__ = [
    "SUPPORTED_MODES", "PhonePiece", "check_mode", "clean_text", "cut", "cut_text", "drop_unspeakable",
    "fit_segment", "load_g2pw", "phones_to_ids", "piece_length", "prepare_segments", "segment_phones",
    "split_by_language", "split_long", "symbols",
]

def load_g2pw(model_root):
    """The g2pW polyphone reader of `<model_root>/G2PWModel/`, or None to use pypinyin
    (see `text.g2pw.load_g2pw`)."""
    from .g2pw import load_g2pw as _load

    return _load(model_root)
