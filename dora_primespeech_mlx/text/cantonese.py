"""Cantonese text -> GPT-SoVITS phonemes, as upstream's text/cantonese.py (v2) does.

`text_normalize`: the Chinese TextNormalizer (numbers, dates, units..., traditional characters read
as simplified), then Cantonese punctuation mapping (quotes and brackets become "'", then go with
everything else that is not an ideograph or one of `!?…,.-`). `g2p`: ToJyutping's reading of each
character, split into an initial and a toned final, each prefixed "Y" (so they never clash with
Mandarin phones); word2ph is 2 per syllable and 1 per punctuation mark.

ToJyutping (the `cjk` extra) ships its dictionary in the wheel; nothing is downloaded.
"""

from __future__ import annotations

import re

from ..errors import PrimeSpeechError
from . import zh_normalization
from .symbols import PUNCTUATION

# Upstream's list, in its order: the first one a syllable starts with is its initial (so "aa" and
# the other vowel-initial entries take a syllable whole; the final is then the initial's last letter).
INITIALS = (
    "aa aai aak aap aat aau ai au ap at ak a p b e ts t dz d kw k gw g f h l m ng n s y w c z j "
    "ong on ou oi ok o uk ung sp spl spn sil"
).split()
_PUNCT_MAP = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",", "、": ",",
    "...": "…", "$": ".", "“": "'", "”": "'", '"': "'", "‘": "'", "’": "'", "（": "'", "）": "'",
    "(": "'", ")": "'", "《": "'", "》": "'", "【": "'", "】": "'", "[": "'", "]": "'", "—": "-",
    "～": "-", "~": "-", "「": "'", "」": "'",
}  # fmt: skip
_PUNCT_MAP_RE = re.compile("|".join(re.escape(k) for k in _PUNCT_MAP))
_PUNCT_CLASS = "".join(re.escape(p) for p in PUNCTUATION)
_UNSPEAKABLE_RE = re.compile(rf"[^\u4e00-\u9fa5{_PUNCT_CLASS}]+")
_PUNCT_WORD_RE = re.compile(rf"^[{_PUNCT_CLASS}]+$")
_JYUTPING_RE = re.compile(r"^([a-z]+[1-6]+[ ]?)+$")


def map_punctuation(text: str) -> str:
    """Map punctuation onto `!?…,.-` (quotes and brackets onto "'") and drop what is not an
    ideograph or one of those marks."""
    text = _PUNCT_MAP_RE.sub(lambda m: _PUNCT_MAP[m.group()], text)
    return _UNSPEAKABLE_RE.sub("", text)


def text_normalize(text: str) -> str:
    """Upstream's Cantonese text_normalize (no collapsing of repeated marks, unlike Mandarin)."""
    return "".join(map_punctuation(s) for s in zh_normalization.normalize(text))


def _to_jyutping(text: str):
    try:
        import ToJyutping
    except ImportError as exc:
        raise PrimeSpeechError(
            "Cantonese text needs ToJyutping: pip install 'dora-primespeech-mlx[cjk]'"
        ) from exc
    return ToJyutping.get_jyutping_list(text)


def warmup() -> None:
    """Load ToJyutping's dictionary ahead of the first `g2p` call."""
    _to_jyutping("")


def jyutping(text: str) -> list[str]:
    """One entry per punctuation mark and per reading ToJyutping gives (one per character)."""
    out: list[str] = []
    for word, reading in _to_jyutping(text):
        if _PUNCT_WORD_RE.match(word):
            out.extend(word)
            continue
        if reading is None or not _JYUTPING_RE.search(reading):
            raise PrimeSpeechError(f"no Cantonese reading for {word!r} in {text!r}")
        out.append(reading)
    return out


def g2p(norm_text: str) -> tuple[list[str], list[int]]:
    """Phones and word2ph of normalised Cantonese text."""
    pairs: list[tuple[str, int]] = []  # (initial or final or mark, tone; -1 for an initial)
    word2ph: list[int] = []
    for syllable in jyutping(norm_text):
        if syllable in PUNCTUATION:
            pairs.append((syllable, 0))
            word2ph.append(1)
            continue
        try:
            tone, bare = int(syllable[-1]), syllable[:-1]
        except ValueError:
            tone, bare = 0, syllable
        for initial in INITIALS:
            if bare.startswith(initial):
                if bare.startswith("nga"):
                    pairs += [(bare[:2], -1), (bare[2:] or bare[-1], tone)]
                else:
                    pairs += [(initial, -1), (bare[len(initial):] or initial[-1], tone)]
                word2ph.append(2)
                break
    phones = []
    for part, tone in pairs:
        phone = part if tone in (-1, 0) else f"{part}{tone}"
        phones.append(phone if phone in PUNCTUATION else "Y" + phone)
    return phones, word2ph
