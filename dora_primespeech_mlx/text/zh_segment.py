"""Chinese word segmentation as upstream GPT-SoVITS gets it from jieba_fast, on the `jieba` package.

- `pos_cut` = `jieba_fast.posseg.lcut` = `jieba.posseg.lcut` (both run the same Python algorithm):
  jieba's own `Tokenizer.get_DAG`/`calc` and its posseg HMM tables, our code for the rest.
- `search_cut` = `jieba_fast.lcut_for_search` (tone sandhi's word split). jieba_fast computes the
  route and the unknown-word HMM in C, which breaks score ties the other way from jieba and caps a
  position's dictionary candidates at 12; on text with characters the HMM has never seen the two
  packages cut differently, so this follows jieba_fast's C code.

Start-up takes milliseconds instead of ~2 s (`jieba.initialize()` unmarshals a ~500k-entry prefix
dictionary, importing `jieba.posseg` re-reads dict.txt for the tags): the dictionary is split once
into per-first-character buckets, written to a cache file in the temp directory (as jieba caches
too), and a bucket is parsed only when a sentence touches that character.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import tempfile
import threading
from functools import lru_cache
from pathlib import Path

import jieba
import jieba.finalseg

log = logging.getLogger(__name__)

_CACHE_VERSION = 2
_MIN_FLOAT = -3.14e100
_MIN_INF = float("-inf")

# jieba.posseg's block patterns
_RE_HAN_INTERNAL = re.compile(r"([\u4E00-\u9FD5a-zA-Z0-9+#&\._]+)")
_RE_SKIP_INTERNAL = re.compile(r"(\r\n|\s)")
_RE_HAN_DETAIL = re.compile(r"([\u4E00-\u9FD5]+)")
_RE_SKIP_DETAIL = re.compile(r"([\.0-9]+|[a-zA-Z0-9]+)")
_RE_ENG = re.compile(r"[a-zA-Z0-9]+")
_RE_NUM = re.compile(r"[\.0-9]+")
# jieba_fast's Tokenizer.cut and finalseg patterns
_RE_HAN_FAST = re.compile(r"([\u4E00-\u9FD5a-zA-Z0-9+#&\._%]+)")
_RE_SKIP_FAST = re.compile(r"(\r\n|\s)")
_RE_HAN_HMM = re.compile(r"([\u4E00-\u9FD5]+)")
_RE_SKIP_HMM = re.compile(r"([a-zA-Z0-9]+(?:\.\d+)?%?)")
_HMM_PREVIOUS = {"B": "ES", "M": "MB", "S": "SE", "E": "BM"}
_MAX_CANDIDATES = 12  # jieba_fast keeps at most 12 dictionary words starting at one position


class _Lexicon:
    """jieba's FREQ mapping (words and their prefixes, prefixes at 0) plus the POS tags,
    filled one first-character bucket at a time."""

    def __init__(self, blob: str, index: dict[str, list[int]]):
        self._blob = blob
        self._index = index
        self._freq: dict[str, int] = {}
        self._tags: dict[str, str] = {}
        self._loaded: set[str] = set()
        self._lock = threading.Lock()

    def _load(self, ch: str) -> None:
        with self._lock:
            if ch in self._loaded:
                return
            span = self._index.get(ch)
            if span is not None:
                freq, tags = self._freq, self._tags
                for line in self._blob[span[0] : span[1]].split("\n"):
                    word, count, tag = line.split(" ")
                    freq[word] = int(count)  # a repeated word: the last line wins, as in jieba
                    tags[word] = tag
                    for end in range(1, len(word)):
                        freq.setdefault(word[:end], 0)
            self._loaded.add(ch)

    def __contains__(self, word: str) -> bool:
        if word and word[0] not in self._loaded:
            self._load(word[0])
        return word in self._freq

    def __getitem__(self, word: str) -> int:
        if word and word[0] not in self._loaded:
            self._load(word[0])
        return self._freq[word]

    def get(self, word: str, default: int | None = None) -> int | None:
        if word and word[0] not in self._loaded:
            self._load(word[0])
        return self._freq.get(word, default)

    def tag(self, word: str) -> str:
        if word and word[0] not in self._loaded:
            self._load(word[0])
        return self._tags.get(word, "x")


def _dict_path() -> Path:
    return Path(jieba.__file__).parent / "dict.txt"


def _cache_path(dict_path: Path) -> Path:
    st = dict_path.stat()
    key = f"{_CACHE_VERSION}|{dict_path}|{st.st_size}|{st.st_mtime_ns}|{jieba.__version__}"
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"dora-primespeech-mlx-jieba-{digest}.cache"


def _build_cache(dict_path: Path) -> tuple[str, dict[str, list[int]], int]:
    buckets: dict[str, list[str]] = {}
    total = 0
    with open(dict_path, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if not line:
                continue
            word, count, _tag = line.split(" ")
            total += int(count)
            buckets.setdefault(word[0], []).append(line)
    parts, index, pos = [], {}, 0
    for ch, lines in buckets.items():
        text = "\n".join(lines)
        index[ch] = [pos, pos + len(text)]
        parts.append(text)
        pos += len(text) + 1
    return "\n".join(parts), index, total


def _load_lexicon() -> tuple[_Lexicon, int]:
    dict_path = _dict_path()
    cache = _cache_path(dict_path)
    try:
        header, blob = cache.read_text(encoding="utf-8").split("\n", 1)
        meta = json.loads(header)
        if meta["length"] == len(blob):  # else a truncated file: rebuild it
            return _Lexicon(blob, meta["index"]), int(meta["total"])
    except (OSError, ValueError, KeyError):
        pass
    log.info("building the jieba dictionary cache %s (once)", cache)
    blob, index, total = _build_cache(dict_path)
    try:
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"total": total, "length": len(blob), "index": index}, ensure_ascii=False) + "\n" + blob,
                       encoding="utf-8")
        os.replace(tmp, cache)
    except OSError as exc:  # a read-only temp dir only costs start-up time
        log.warning("could not write the jieba cache %s: %s", cache, exc)
    return _Lexicon(blob, index), total


def _load_table(name: str):
    # the HMM tables that jieba.posseg imports, loaded without running jieba.posseg/__init__
    path = Path(jieba.__file__).parent / "posseg" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_dpm_jieba_posseg_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.P


class Segmenter:
    """`pos_cut` = jieba(_fast).posseg.lcut, `search_cut` = jieba_fast.lcut_for_search, on jieba's
    default dictionary (the same dict.txt as jieba_fast's)."""

    def __init__(self) -> None:
        lexicon, total = _load_lexicon()
        self._lexicon = lexicon
        tok = jieba.Tokenizer()
        tok.FREQ = lexicon
        tok.total = total
        tok.initialized = True
        self._tok = tok
        self._states = _load_table("char_state_tab")
        self._start = _load_table("prob_start")
        self._trans = _load_table("prob_trans")
        self._emit = _load_table("prob_emit")

    # --- jieba_fast's cut_for_search ---------------------------------------------------------

    def search_cut(self, text: str) -> list[str]:
        """Words of `text` plus their 2- and 3-character dictionary sub-words (search-engine cut)."""
        out: list[str] = []
        freq = self._lexicon
        for word in self._fast_cut(text):
            if len(word) > 2:
                out.extend(word[i : i + 2] for i in range(len(word) - 1) if freq.get(word[i : i + 2]))
            if len(word) > 3:
                out.extend(word[i : i + 3] for i in range(len(word) - 2) if freq.get(word[i : i + 3]))
            out.append(word)
        return out

    def _fast_cut(self, text: str) -> list[str]:
        out: list[str] = []
        for block in _RE_HAN_FAST.split(text):
            if not block:
                continue
            if _RE_HAN_FAST.match(block):
                out.extend(self._fast_cut_dag(block))
                continue
            for piece in _RE_SKIP_FAST.split(block):
                if _RE_SKIP_FAST.match(piece):
                    out.append(piece)
                else:
                    out.extend(piece)
        return out

    def _fast_route(self, text: str) -> list[int]:
        """Best word end per position; first candidate wins a tie (C `>`), unlike jieba's max()."""
        freq = self._lexicon
        n = len(text)
        dag: list[list[int]] = []
        for k in range(n):
            ends = []
            i, frag = k, text[k]
            while i < n and frag in freq and len(ends) < _MAX_CANDIDATES:
                if freq[frag]:
                    ends.append(i)
                i += 1
                frag = text[k : i + 1]
            dag.append(ends or [k])
        logtotal = math.log(float(self._tok.total))
        score = [0.0] * (n + 1)
        route = [0] * (n + 1)
        for idx in range(n - 1, -1, -1):
            best, best_end = float(-(2**31)), 0
            for end in dag[idx]:
                value = math.log(float(freq.get(text[idx : end + 1]) or 1)) - logtotal + score[end + 1]
                if value > best:
                    best, best_end = value, end
            score[idx], route[idx] = best, best_end
        return route

    def _fast_cut_dag(self, text: str) -> list[str]:
        route = self._fast_route(text)
        out: list[str] = []
        buf = ""
        x = 0
        while x < len(text):
            y = route[x] + 1
            if y - x == 1:
                buf += text[x]
            else:
                if buf:
                    self._flush_plain(buf, out)
                    buf = ""
                out.append(text[x:y])
            x = y
        if buf:
            self._flush_plain(buf, out)
        return out

    def _flush_plain(self, buf: str, out: list[str]) -> None:
        if len(buf) == 1:
            out.append(buf)
        elif not self._lexicon.get(buf):
            out.extend(self._hmm_words(buf))
        else:
            out.extend(buf)

    def _hmm_words(self, text: str) -> list[str]:
        out: list[str] = []
        for block in _RE_HAN_HMM.split(text):
            if _RE_HAN_HMM.match(block):
                states = self._fast_hmm(block)
                begin = nxt = 0
                for i, state in enumerate(states):
                    if state == "B":
                        begin = i
                    elif state == "E":
                        out.append(block[begin : i + 1])
                        nxt = i + 1
                    elif state == "S":
                        out.append(block[i])
                        nxt = i + 1
                if nxt < len(block):
                    out.append(block[nxt:])
            else:
                out.extend(piece for piece in _RE_SKIP_HMM.split(block) if piece)
        return out

    @staticmethod
    def _fast_hmm(obs: str) -> list[str]:
        """jieba_fast's C Viterbi over B/M/E/S: a state whose every predecessor scores below
        MIN_FLOAT keeps MIN_FLOAT and the later predecessor letter; ties keep the first."""
        start, trans, emit = jieba.finalseg.start_P, jieba.finalseg.trans_P, jieba.finalseg.emit_P
        score = {y: emit[y].get(obs[0], _MIN_FLOAT) + start[y] for y in "BMES"}
        back: list[dict[str, str]] = []
        for ch in obs[1:]:
            new_score, pointers = {}, {}
            for y in "BMES":
                e = emit[y].get(ch, _MIN_FLOAT)
                best, best_prev = _MIN_FLOAT, ""
                for prev in _HMM_PREVIOUS[y]:
                    value = e + score[prev] + trans[prev].get(y, _MIN_FLOAT)
                    if value > best:
                        best, best_prev = value, prev
                new_score[y], pointers[y] = best, best_prev or max(_HMM_PREVIOUS[y])
            score = new_score
            back.append(pointers)
        state = "S" if score["S"] > score["E"] else "E"
        path = [state]
        for pointers in reversed(back):
            state = pointers[state]
            path.append(state)
        return path[::-1]

    # --- jieba.posseg ---------------------------------------------------------------------------

    def pos_cut(self, text: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for block in _RE_HAN_INTERNAL.split(text):
            if _RE_HAN_INTERNAL.match(block):
                out.extend(self._cut_dag(block))
                continue
            for piece in _RE_SKIP_INTERNAL.split(block):
                if _RE_SKIP_INTERNAL.match(piece):
                    out.append((piece, "x"))
                    continue
                for ch in piece:
                    if _RE_NUM.match(ch):
                        out.append((ch, "m"))
                    elif _RE_ENG.match(piece):  # jieba tests the whole piece here
                        out.append((ch, "eng"))
                    else:
                        out.append((ch, "x"))
        return out

    def _flush(self, buf: str, out: list[tuple[str, str]]) -> None:
        tag = self._lexicon.tag
        if len(buf) == 1:
            out.append((buf, tag(buf)))
        elif not self._lexicon.get(buf):
            out.extend(self._cut_unknown(buf))
        else:
            out.extend((ch, tag(ch)) for ch in buf)

    def _cut_dag(self, text: str) -> list[tuple[str, str]]:
        dag = self._tok.get_DAG(text)
        route: dict[int, tuple[float, int]] = {}
        self._tok.calc(text, dag, route)
        out: list[tuple[str, str]] = []
        buf = ""
        x = 0
        while x < len(text):
            y = route[x][1] + 1
            if y - x == 1:
                buf += text[x]
            else:
                if buf:
                    self._flush(buf, out)
                    buf = ""
                out.append((text[x:y], self._lexicon.tag(text[x:y])))
            x = y
        if buf:
            self._flush(buf, out)
        return out

    def _cut_unknown(self, text: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for block in _RE_HAN_DETAIL.split(text):
            if _RE_HAN_DETAIL.match(block):
                out.extend(self._cut_hmm(block))
                continue
            for piece in _RE_SKIP_DETAIL.split(block):
                if piece:
                    flag = "m" if _RE_NUM.match(piece) else "eng" if _RE_ENG.match(piece) else "x"
                    out.append((piece, flag))
        return out

    def _cut_hmm(self, text: str) -> list[tuple[str, str]]:
        states = self._viterbi(text)
        out: list[tuple[str, str]] = []
        begin = nxt = 0
        for i, ch in enumerate(text):
            position, flag = states[i]
            if position == "B":
                begin = i
            elif position == "E":
                out.append((text[begin : i + 1], flag))
                nxt = i + 1
            elif position == "S":
                out.append((ch, flag))
                nxt = i + 1
        if nxt < len(text):
            out.append((text[nxt:], states[nxt][1]))
        return out

    def _viterbi(self, obs: str) -> list[tuple[str, str]]:
        """Most likely (position, tag) state per character. Same candidate sets, the same sums in
        the same order and the same tie-breaks (max over (score, state) tuples) as jieba."""
        start, trans, emit = self._start, self._trans, self._emit
        all_states = trans.keys()
        score = {y: start[y] + emit[y].get(obs[0], _MIN_FLOAT) for y in self._states.get(obs[0], all_states)}
        back: list[dict] = [dict.fromkeys(score, "")]
        for t in range(1, len(obs)):
            prev = [y for y in back[-1] if len(trans[y]) > 0]
            expected = {y for p in prev for y in trans[p]}
            candidates = set(self._states.get(obs[t], all_states)) & expected
            if not candidates:
                candidates = expected if expected else all_states
            new_score, pointers = {}, {}
            ch = obs[t]
            for y in candidates:
                e = emit[y].get(ch, _MIN_FLOAT)
                best = max((score[p] + trans[p].get(y, _MIN_INF) + e, p) for p in prev)
                new_score[y], pointers[y] = best
            score = new_score
            back.append(pointers)
        _, state = max((score[y], y) for y in back[-1])
        path = [None] * len(obs)
        for i in range(len(obs) - 1, -1, -1):
            path[i] = state
            state = back[i][state]
        return path


@lru_cache(maxsize=1)
def default_segmenter() -> Segmenter:
    """The process-wide segmenter (built on first use)."""
    return Segmenter()
