"""GPT-SoVITS phone symbol tables and phone -> id mapping.

v1 has 322 symbols: the sorted union of pad, Mandarin initials and toned finals, Japanese phones,
punctuation/pause marks and ARPAbet. v2 (732) keeps those ids and appends the two Japanese pitch
marks, the sorted Korean jamo and the sorted Cantonese phones. The ids are what the models'
embedding tables were trained with, so the order here must never change.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from ..errors import PrimeSpeechError

PAD = "_"
# Marks a phone list may carry besides phonemes; "-" is a hyphen/apostrophe, the SPs are pauses.
PUNCTUATION = ("!", "?", "…", ",", ".", "-")
PAUSES = ("SP", "SP2", "SP3", "UNK")

_MANDARIN_INITIALS = (
    "AA EE OO b c ch d f g h j k l m n p q r s sh t w x y z zh"
).split()
_MANDARIN_FINALS = (
    "E En a ai an ang ao e ei en eng er i i0 ia ian iang iao ie in ing iong ir iu o ong ou u ua uai "
    "uan uang ui un uo v van ve vn"
).split()
_JAPANESE = (
    "I N U a b by ch cl d dy e f g gy h hy i j k ky m my n ny o p py r ry s sh t ts u v w y z"
).split()
# ARPAbet as used by GPT-SoVITS: the 69 stressed/unstressed CMU phones plus bare "ER" and "IH".
ARPABET = frozenset(
    "AA0 AA1 AA2 AE0 AE1 AE2 AH0 AH1 AH2 AO0 AO1 AO2 AW0 AW1 AW2 AY0 AY1 AY2 B CH D DH EH0 EH1 EH2 "
    "ER ER0 ER1 ER2 EY0 EY1 EY2 F G HH IH IH0 IH1 IH2 IY0 IY1 IY2 JH K L M N NG OW0 OW1 OW2 OY0 OY1 "
    "OY2 P R S SH T TH UH0 UH1 UH2 UW0 UW1 UW2 V W Y Z ZH".split()
)
_KOREAN = "ㄱㄴㄷㄹㅁㅂㅅㅇㅈㅊㅋㅌㅍㅎㄲㄸㅃㅆㅉㅏㅓㅗㅜㅡㅣㅐㅔ空停"

SUPPORTED_VERSIONS = ("v1", "v2", "v3", "v4", "v2Pro", "v2ProPlus")


def _cantonese() -> list[str]:
    text = resources.files(__package__).joinpath("data/symbols_yue.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line and not line.startswith("#")]


@cache
def symbols(version: str = "v2") -> tuple[str, ...]:
    """The ordered symbol table of a model version (v1: 322 entries; every later version: 732)."""
    toned = [final + str(tone) for tone in range(1, 6) for final in _MANDARIN_FINALS]
    base = sorted(
        {PAD, *_MANDARIN_INITIALS, *toned, *_JAPANESE, *PUNCTUATION, *PAUSES, *ARPABET}
    )
    if _table_family(version) == "v1":
        return tuple(base)
    return tuple(base + ["[", "]"] + sorted(_KOREAN) + _cantonese())


@cache
def symbol_to_id(version: str = "v2") -> dict[str, int]:
    """Symbol -> id for a model version."""
    return {s: i for i, s in enumerate(symbols(version))}


def _table_family(version: str) -> str:
    if version not in SUPPORTED_VERSIONS:
        raise PrimeSpeechError(
            f"unknown GPT-SoVITS version {version!r}; use one of {', '.join(SUPPORTED_VERSIONS)}"
        )
    return "v1" if version == "v1" else "v2"


def phones_to_ids(phones: list[str], version: str = "v2") -> list[int]:
    """Map phones to model ids (upstream's cleaned_text_to_sequence); unknown phones are an error."""
    table = symbol_to_id(_table_family(version))
    try:
        return [table[p] for p in phones]
    except KeyError as exc:
        raise PrimeSpeechError(
            f"phone {exc.args[0]!r} is not in the {version} symbol table; the text frontend should "
            "have mapped it to UNK — please report the input text"
        ) from None
