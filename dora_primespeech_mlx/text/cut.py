"""Upstream's sentence-cutting methods cut0..cut5 (GPT-SoVITS `text_segmentation_method.py`).

Each method returns the text with "\\n" between pieces, exactly as upstream does (quirks included:
cut0 answers the literal "/n" for punctuation-only text; cut1 puts the last group of sentences into
the group before it). `cut(text, method)` gives the pieces as a list.

`split_long` (ours) cuts what upstream cannot: a run too long for the models with no clause mark in
it is cut between words (jieba's words where there is Chinese, else at spaces).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from ..errors import PrimeSpeechError

# Marks that end a clause for cut1/cut2, split_big_text and the segment rules.
SPLITS = frozenset("，。？！,.?!~:：—…")
# What counts as "nothing to say" in cut0..cut4 (a space included).
_SILENT = frozenset("!?…,.- ")
# cut5 cuts after each of these (a "." between two digits is a decimal point and stays).
_CUT5_MARKS = frozenset(",.;?!、，。？！;：…")
_SPLITS_RE = re.compile("([" + re.escape("".join(sorted(SPLITS))) + "])")
_PERIOD_RE = re.compile(r"(?<!\d)\.(?!\d)")
MAX_SEGMENT = 510


def split_big_text(text: str, max_len: int = MAX_SEGMENT) -> list[str]:
    """Pack clauses (split after SPLITS marks) into pieces of at most `max_len` characters."""
    pieces: list[str] = []
    current = ""
    for part in _SPLITS_RE.split(text):
        if len(current + part) > max_len:
            pieces.append(current)
            current = part
        else:
            current += part
    if current:
        pieces.append(current)
    return pieces


_CLAUSE_END_RE = re.compile("(?<=[" + re.escape("".join(sorted(SPLITS))) + "])")
_HAN_RE = re.compile(r"[\u4e00-\u9fff]")
_WORD_RE = re.compile(r"\s*\S+|\s+")
_WORD_CHAR_RE = re.compile(r"\w")


def words(text: str) -> list[str]:
    """`text` cut into words, concatenating back to `text`: jieba's words (posseg, as the Chinese g2p
    cuts) when there is Chinese, else runs of non-space characters. Spaces go with the word after
    them and marks with the word before them, so that a cut between words falls at a space."""
    if _HAN_RE.search(text):
        from .zh_segment import default_segmenter

        tokens = [word for word, _ in default_segmenter().pos_cut(text)]
    else:
        tokens = _WORD_RE.findall(text)
    out: list[str] = []
    pending = ""  # spaces waiting for the next word
    for token in tokens:
        if token.isspace():
            pending += token
        elif out and not pending and not _WORD_CHAR_RE.search(token):
            out[-1] += token
        else:
            out.append(pending + token)
            pending = ""
    if pending:
        if out:
            out[-1] += pending
        else:
            out.append(pending)
    return out


def split_long(text: str, max_length: int, length: Callable[[str], int] = len) -> list[str]:
    """`text` if it measures at most `max_length`, else pieces that do, concatenating back to `text`.

    Cuts after clause marks (SPLITS) where a clause fits, else between `words`, else (a word longer
    than the limit) between characters; the pieces are packed to about the same size. `length` must
    be additive (the sum over the characters, like `len`)."""
    total = length(text)
    if total <= max_length:
        return [text]
    atoms: list[str] = []
    for clause in filter(None, _CLAUSE_END_RE.split(text)):
        if length(clause) <= max_length:
            atoms.append(clause)
            continue
        for word in words(clause):
            if length(word) <= max_length:
                atoms.append(word)
            else:
                atoms.extend(_pack(list(word), max_length, length, math.ceil(length(word) / max_length)))
    # pieces of even size, with 10% of the limit left for the words to round to
    return _pack(atoms, max_length, length, math.ceil(1.1 * total / max_length))


def _pack(atoms: list[str], max_length: int, length: Callable[[str], int], count: int) -> list[str]:
    """Atoms joined into about `count` pieces of even size, none over `max_length`: a piece is closed
    at the atom that brings it nearest to an even share of what is left."""
    sizes = [length(atom) for atom in atoms]
    left = sum(sizes)
    pieces, current, size = [], "", 0
    for atom, n in zip(atoms, sizes, strict=True):
        target = left / max(1, count - len(pieces))
        if current and (size + n > max_length or size + n / 2 > target):
            pieces.append(current)
            left -= size
            current, size = "", 0
        current += atom
        size += n
    if current:
        pieces.append(current)
    return pieces


def _sentences(text: str) -> list[str]:
    """Split after every SPLITS mark (a final 。 is added when the text lacks one)."""
    text = text.replace("……", "。").replace("——", "，")
    if text[-1] not in SPLITS:
        text += "。"
    out, start = [], 0
    for i, ch in enumerate(text):
        if ch in SPLITS:
            out.append(text[start:i + 1])
            start = i + 1
    return out


def _speakable(pieces: list[str], silent: frozenset[str] = _SILENT) -> list[str]:
    return [p for p in pieces if not set(p) <= silent]


def cut0(text: str) -> str:
    """No cutting."""
    return text if not set(text) <= _SILENT else "/n"


def cut1(text: str) -> str:
    """Groups of four sentences (the last, shorter group joins the one before)."""
    text = text.strip("\n")
    sentences = _sentences(text)
    starts: list[int | None] = list(range(0, len(sentences), 4))
    starts[-1] = None
    if len(starts) > 1:
        groups = ["".join(sentences[a:b]) for a, b in zip(starts[:-1], starts[1:], strict=True)]
    else:
        groups = [text]
    return "\n".join(_speakable(groups))


def cut2(text: str) -> str:
    """Pieces of just over 50 characters, whole sentences each; a short tail joins the last piece."""
    text = text.strip("\n")
    sentences = _sentences(text)
    if len(sentences) < 2:
        return text
    pieces, current, length = [], "", 0
    for sentence in sentences:
        length += len(sentence)
        current += sentence
        if length > 50:
            pieces.append(current)
            current, length = "", 0
    if current:
        pieces.append(current)
    if len(pieces) > 1 and len(pieces[-1]) < 50:
        tail = pieces.pop()
        pieces[-1] += tail
    return "\n".join(_speakable(pieces))


def cut3(text: str) -> str:
    """Cut at each Chinese full stop 。 (which is dropped)."""
    text = text.strip("\n")
    return "\n".join(_speakable(text.strip("。").split("。")))


def cut4(text: str) -> str:
    """Cut at each English full stop "." that is not a decimal point (the stop is dropped)."""
    text = text.strip("\n")
    return "\n".join(_speakable(_PERIOD_RE.split(text.strip("."))))


def cut5(text: str) -> str:
    """Cut after every punctuation mark, keeping it (decimal points excepted)."""
    text = text.strip("\n")
    pieces, current = [], []
    for i, ch in enumerate(text):
        current.append(ch)
        if ch not in _CUT5_MARKS:
            continue
        decimal = ch == "." and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()
        if not decimal:
            pieces.append("".join(current))
            current = []
    if current:
        pieces.append("".join(current))
    return "\n".join(_speakable(pieces, _CUT5_MARKS))


METHODS: dict[str, Callable[[str], str]] = {
    "cut0": cut0, "cut1": cut1, "cut2": cut2, "cut3": cut3, "cut4": cut4, "cut5": cut5,
}


def get_method(name: str) -> Callable[[str], str]:
    """The cut method called `name` (cut0..cut5)."""
    try:
        return METHODS[name]
    except KeyError:
        raise PrimeSpeechError(
            f"unknown text split method {name!r}; use one of {', '.join(METHODS)}"
        ) from None


def cut_text(text: str, method: str) -> str:
    """Apply a cut method: pieces joined by newlines, byte-for-byte as upstream returns them."""
    return get_method(method)(text)


def cut(text: str, method: str) -> list[str]:
    """Apply a cut method and return its pieces (the newline-separated parts of `cut_text`)."""
    return cut_text(text, method).split("\n")
