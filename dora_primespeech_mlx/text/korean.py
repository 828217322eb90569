"""Korean text -> GPT-SoVITS phonemes (Hangul jamo), as upstream's text/korean.py (v2) does.

Upstream has no Korean normaliser (the text is its own normalised text) and no word2ph. `g2p`:
Latin letters spelled out in Hangul, g2pK2's pronunciation rules (numbers, liaison, tensing...;
MeCab-ko tags the words), syllables decomposed into compatibility jamo with compound vowels split,
g2pK2's "을/를 ㄹ" slip undone, a "." after a final jamo, and one phone per character: a space is
"空", anything outside the symbol table "停".

Dependencies (the `cjk` extra): g2pk2, jamo, python-mecab-ko and its dictionary package
python-mecab-ko-dic. g2pk2 is imported with a stand-in for nltk, whose import-time
`nltk.download("cmudict")` would reach the network, and its G2p is built without `check_mecab`,
which would pip-install MeCab when missing: a missing package is an error naming the extra instead.
g2pk2 only looks English words up in cmudict, and upstream has spelled every Latin letter out in
Hangul before, so only apostrophe runs could be looked up, and cmudict has none: an empty dictionary
reads the same.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import types

from ..errors import PrimeSpeechError
from .symbols import symbol_to_id

_LATIN_NAMES = (
    ("a", "에이"), ("b", "비"), ("c", "시"), ("d", "디"), ("e", "이"), ("f", "에프"), ("g", "지"),
    ("h", "에이치"), ("i", "아이"), ("j", "제이"), ("k", "케이"), ("l", "엘"), ("m", "엠"), ("n", "엔"),
    ("o", "오"), ("p", "피"), ("q", "큐"), ("r", "아르"), ("s", "에스"), ("t", "티"), ("u", "유"),
    ("v", "브이"), ("w", "더블유"), ("x", "엑스"), ("y", "와이"), ("z", "제트"),
)  # fmt: skip
# One pattern per letter, as upstream: IGNORECASE also matches K (Kelvin sign) and ſ (long s).
_LATIN_RES = tuple((re.compile(letter, re.IGNORECASE), name) for letter, name in _LATIN_NAMES)
# compound vowels -> their two simple vowels (the symbol table has only simple ones)
_SPLIT_VOWELS = str.maketrans({
    "ㅘ": "ㅗㅏ", "ㅙ": "ㅗㅐ", "ㅚ": "ㅗㅣ", "ㅝ": "ㅜㅓ", "ㅞ": "ㅜㅔ", "ㅟ": "ㅜㅣ", "ㅢ": "ㅡㅣ",
    "ㅑ": "ㅣㅏ", "ㅒ": "ㅣㅐ", "ㅕ": "ㅣㅓ", "ㅖ": "ㅣㅔ", "ㅛ": "ㅣㅗ", "ㅠ": "ㅣㅜ",
})  # fmt: skip
_FINAL_JAMO_RE = re.compile(r"([\u3131-\u3163])$")
# upstream's map (its "..." key never applies: phones come one character at a time)
_MARK_MAP = {"：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",", "、": ",", " ": "空"}
_SPACE, _STOP = "空", "停"

_LOCK = threading.Lock()
_G2PK2: list = []


def latin_to_hangul(text: str) -> str:
    """Spell each Latin letter out as its Korean name ("a" -> "에이")."""
    for regex, name in _LATIN_RES:
        text = regex.sub(name, text)
    return text


def divide_hangul(text: str) -> str:
    """Syllables -> compatibility jamo, compound vowels split in two."""
    from jamo import h2j, j2hcj

    return j2hcj(h2j(text)).translate(_SPLIT_VOWELS)


def fix_g2pk2_error(text: str) -> str:
    """Undo g2pK2's nasalisation of "을/를 + ㄹ" across a space (upstream's fix: the ㄹ becomes ㄴ)."""
    out, i = [], 0
    while i < len(text) - 4:
        if text[i:i + 3] in ("ㅇㅡㄹ", "ㄹㅡㄹ") and text[i + 3] == " " and text[i + 4] == "ㄹ":
            out.append(text[i:i + 3] + " ㄴ")
            i += 5
        else:
            out.append(text[i])
            i += 1
    out.append(text[i:])
    return "".join(out)


def _nltk_stand_in() -> dict[str, types.ModuleType]:
    nltk = types.ModuleType("nltk")
    nltk.data = types.SimpleNamespace(find=lambda path: path)

    def download(*args, **kwargs):
        raise PrimeSpeechError("g2pk2 asked nltk to download data; the Korean frontend never does")

    nltk.download = download
    corpus = types.ModuleType("nltk.corpus")
    cmudict = types.ModuleType("nltk.corpus.cmudict")
    cmudict.dict = dict
    corpus.cmudict = cmudict
    nltk.corpus = corpus
    return {"nltk": nltk, "nltk.corpus": corpus, "nltk.corpus.cmudict": cmudict}


def _import_g2pk2():
    """g2pk2's modules, imported with the nltk stand-in in place (then the real nltk, if any, back)."""
    if "g2pk2.g2pk2" in sys.modules:
        import g2pk2.g2pk2 as module

        return module
    stand_in = _nltk_stand_in()
    saved = {name: sys.modules.get(name) for name in stand_in}
    sys.modules.update(stand_in)
    try:
        import g2pk2.g2pk2 as module
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return module


def _load_g2pk2():
    """g2pK2's G2p on MeCab-ko, built once per process without its pip-installing `check_mecab`."""
    with _LOCK:
        if _G2PK2:
            return _G2PK2[0]
        try:
            import jamo  # noqa: F401
            import mecab

            module = _import_g2pk2()
        except ImportError as exc:
            raise PrimeSpeechError(
                f"Korean text needs g2pk2, jamo and python-mecab-ko ({exc.name} is missing): "
                "pip install 'dora-primespeech-mlx[cjk]'"
            ) from exc
        from g2pk2.utils import get_rule_id2text, parse_table

        g2p = module.G2p.__new__(module.G2p)
        g2p.use_konlpy, g2p.mecab_path = False, None
        try:
            g2p.mecab = mecab.MeCab()  # finds python-mecab-ko-dic's dictionary by itself
        except Exception as exc:  # noqa: BLE001 - mecab raises its own error types
            raise PrimeSpeechError(
                f"MeCab-ko could not start ({exc}): pip install 'dora-primespeech-mlx[cjk]' "
                "(python-mecab-ko and python-mecab-ko-dic)"
            ) from exc
        # precompiled: the ~450 rules and the other patterns of a call overflow re's 512-entry cache,
        # which then recompiles every pattern on every call (~90% of the time)
        g2p.table = [(re.compile(pattern), repl, rules) for pattern, repl, rules in parse_table()]
        g2p.cmu = {}
        g2p.rule2text = get_rule_id2text()
        g2p.idioms_path = os.path.join(os.path.dirname(module.__file__), "idioms.txt")
        _G2PK2.append(g2p)
        return g2p


def warmup() -> None:
    """Load g2pK2 and MeCab-ko ahead of the first `g2p` call."""
    _load_g2pk2()


def text_normalize(text: str) -> str:
    """Korean text is its own normalised text (upstream has no Korean normaliser)."""
    return text


def pronounce(text: str) -> str:
    """The jamo string upstream reads phones from: one character per phone."""
    text = _load_g2pk2()(latin_to_hangul(text))
    text = fix_g2pk2_error(divide_hangul(text))
    return _FINAL_JAMO_RE.sub(r"\1.", text)


def g2p(text: str) -> list[str]:
    """Phones of Korean text: one per character of `pronounce(text)`."""
    table = symbol_to_id("v2")
    phones = []
    for ch in pronounce(text):
        ch = _MARK_MAP.get(ch, ch)
        phones.append(ch if ch in table else _STOP)
    return phones
