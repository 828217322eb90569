"""From a request's text to speakable segments and their phones (upstream TextPreprocessor rules).

`prepare_segments` is upstream's preprocess text path: collapse repeated punctuation, put a stop in
front when the first clause is shorter than 4 characters, cut, drop empty and symbol-only pieces,
merge pieces shorter than 5 characters, end each with a stop, re-split pieces over 510 characters.
`segment_phones` turns one segment into per-language phone pieces, retrying once with "." in front
when the whole segment has fewer than 6 phones (upstream's rule for very short text).
`fit_segment` (ours) cuts a segment too long for the models between words (`cut.split_long`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .cleaner import clean_text
from .cut import MAX_SEGMENT, SPLITS, cut_text, split_big_text, split_long
from .language import split_by_language
from .symbols import phones_to_ids

_REPEATS_RE = re.compile(r"([!?…,.\-])([!?…,.\-])+")
_FIRST_CLAUSE_RE = re.compile("[" + re.escape("".join(sorted(SPLITS))) + "]")
_NON_WORD_RE = re.compile(r"\W+")
MIN_SEGMENT_CHARS = 5
MIN_PHONES = 6
_HAN_RE = re.compile(r"[\u4e00-\u9fff]")
# The longest segment `fit_segment` leaves whole, in `piece_length` units: 150 Chinese characters or
# 450 others. A Chinese character is a syllable, ~0.2-0.25 s of speech and 2 phones; a Latin
# character ~0.07 s. So a segment speaks for ~30-38 s at most: under 1000 of the 1500 codes T2S may
# generate (25 a second, the engine's max_tokens), and its Chinese pieces have ~150 of RoBERTa's 512
# tokens (one per character; more only where numbers are spelled out). Upstream's 510-character
# split (split_big_text) guards BERT only: 510 Chinese characters are two minutes of speech, which T2S
# cuts off at one. A segment that fits is left as upstream cut it: with cut5 only an unpunctuated run
# reaches the limit; the groups of cut0-cut4 may, and are then cut at their clause marks first.
MAX_PIECE_LENGTH = 450


def collapse_punctuation(text: str) -> str:
    """Keep only the first of a run of `!?…,.-` marks."""
    return _REPEATS_RE.sub(r"\1", text)


def first_clause(text: str) -> str:
    """The text before the first clause mark, stripped."""
    return _FIRST_CLAUSE_RE.split(text)[0].strip()


def merge_short(pieces: list[str], threshold: int = MIN_SEGMENT_CHARS) -> list[str]:
    """Join consecutive pieces until each reaches `threshold` characters; a short tail joins the last."""
    if len(pieces) < 2:
        return pieces
    out, current = [], ""
    for piece in pieces:
        current += piece
        if len(current) >= threshold:
            out.append(current)
            current = ""
    if current:
        if out:
            out[-1] += current
        else:
            out.append(current)
    return out


def _stop(lang: str) -> str:
    return "." if lang == "en" else "。"


def pre_segment(text: str, lang: str, method: str) -> list[str]:
    """Upstream's pre_seg_text: cut `text` with `method` into speakable segments.

    Returns [] where upstream raises "please enter valid text" (nothing but blanks after cutting).
    """
    text = text.strip("\n")
    if not text:
        return []
    if text[0] not in SPLITS and len(first_clause(text)) < 4:
        text = _stop(lang) + text
    cut = cut_text(text, method)
    while "\n\n" in cut:
        cut = cut.replace("\n\n", "\n")
    pieces = cut.split("\n")
    if all(p in (" ", "\n", "") for p in pieces):
        return []
    pieces = merge_short([p for p in pieces if p not in (" ", "")])
    segments = []
    for piece in pieces:
        if not piece.strip() or not _NON_WORD_RE.sub("", piece):
            continue
        if piece[-1] not in SPLITS:
            piece += _stop(lang)
        if len(piece) > MAX_SEGMENT:
            segments.extend(split_big_text(piece))
        else:
            segments.append(piece)
    return segments


def prepare_segments(text: str, lang: str, method: str = "cut5") -> list[str]:
    """Request text -> the segments upstream synthesises one by one (collapse + pre_segment)."""
    return pre_segment(collapse_punctuation(text), lang, method)


def piece_length(text: str) -> int:
    """A text's length for `fit_segment`: characters, a Chinese one counting three (see MAX_PIECE_LENGTH)."""
    return len(text) + 2 * len(_HAN_RE.findall(text))


def fit_segment(segment: str, lang: str, max_length: int = MAX_PIECE_LENGTH) -> list[str]:
    """`segment` if its `piece_length` is at most `max_length`, else pieces that fit, cut after clause
    marks or between words (`cut.split_long`), each ending with a stop as `pre_segment`'s segments do."""
    pieces = split_long(segment, max_length, piece_length)
    if len(pieces) == 1:
        return pieces
    return [piece if piece[-1] in SPLITS else piece + _stop(lang) for piece in pieces]


@dataclass
class PhonePiece:
    """One language run of a segment: its phones (and ids), word2ph for Chinese, normalised text."""

    lang: str
    text: str
    phones: list[str]
    ids: list[int]
    word2ph: list[int] | None
    norm_text: str


def segment_phones(segment: str, mode: str, version: str = "v2", g2pw=None) -> list[PhonePiece]:
    """Phones of one segment, split by language as upstream's get_phones_and_bert does.

    The pipeline concatenates the pieces' ids; BERT features are computed for "zh" pieces
    (from norm_text and word2ph) and are zeros for the others.
    """

    def run(text: str) -> list[PhonePiece]:
        pieces = []
        for lang, chunk in split_by_language(text, mode):
            phones, word2ph, norm = clean_text(chunk, lang, version, g2pw=g2pw)
            pieces.append(PhonePiece(lang, chunk, phones, phones_to_ids(phones, version), word2ph, norm))
        return pieces

    pieces = run(segment)
    if sum(len(p.phones) for p in pieces) < MIN_PHONES:
        pieces = run("." + segment)
    return pieces
