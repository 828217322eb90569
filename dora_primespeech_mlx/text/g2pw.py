"""g2pW polyphone disambiguation as GPT-SoVITS v2 uses it (optional: `pip install "...[g2pw]"`).

The g2pW model (a BERT-base ONNX graph, `<model_root>/G2PWModel/g2pW.onnx`) reads each polyphonic
character in its sentence context and picks one of that character's readings. Upstream feeds it
the sentence converted to Taiwan traditional characters (OpenCC s2tw), at most 16 characters of
context either side of the polyphones, BERT word pieces from the Chinese RoBERTa tokenizer; the
other characters keep pypinyin's reading (or the table reading of monophonic characters). The
chosen readings then go through `correct_pronunciation` (upstream's polyphonic.rep tables).

`load_g2pw(model_root)` returns a ready `G2PW`, or None (pypinyin is used) when the model folder,
a tokenizer, onnxruntime or OpenCC is missing; it logs which reader is in use.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PrimeSpeechError
from ..voices import ModelRoot
from .zh_normalization import to_simplified

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "dora-primespeech-mlx[g2pw]"'
MAX_TOKENS = 512
CONTEXT_CHARS = 16
# characters upstream never sends to the model although they are listed as polyphonic
_NOT_POLYPHONIC = frozenset("一不和咋嗲剖差攢倒難奔勁拗肖瘙誒泊听噢")
_NOT_MONOPHONIC = frozenset("似攢")
# config.py keys this module reads, with g2pW's defaults
_CONFIG_DEFAULTS = {"use_mask": True, "use_char_phoneme": False}
_RE_SPACES = re.compile(r" +")
_RE_ALNUM = re.compile(r"[a-zA-Z0-9]+")
_RE_QUOTED = re.compile(r"'([^']*)'")


# --- pronunciation corrections -----------------------------------------------------------------


def _read_rep(text: str, table: dict[str, list[str]]) -> None:
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        word, readings = line.split(":")
        table[word.strip()] = _RE_QUOTED.findall(readings)


@lru_cache(maxsize=1)
def _corrections() -> dict[str, list[str]]:
    data = resources.files(__package__).joinpath("data")
    table: dict[str, list[str]] = {}
    _read_rep(data.joinpath("polyphonic.rep").read_text(encoding="utf-8"), table)
    _read_rep(gzip.decompress(data.joinpath("polyphonic-fix.rep.gz").read_bytes()).decode("utf-8"), table)
    return table


def correct_pronunciation(word: str, pinyins: list[str]) -> list[str]:
    """Upstream's fix-ups of g2pW readings: a listed word takes its listed readings, otherwise
    each listed single character takes its first listed reading."""
    table = _corrections()
    fixed = table.get(word)
    if fixed is not None:
        return list(fixed)
    pinyins = list(pinyins)
    for i, ch in enumerate(word):
        if ch in table:
            pinyins[i] = table[ch][0]
    return pinyins


# --- model folder ------------------------------------------------------------------------------


def read_config(path: Path) -> dict[str, Any]:
    """The literal assignments of g2pW's config.py, read without executing it."""
    config = dict(_CONFIG_DEFAULTS)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                config[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return config


def _char_table(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").strip().split("\n")]


class _WordPiece:
    """The two tokenizer calls g2pW makes, on a `tokenizers` tokenizer.json."""

    def __init__(self, tokenizer_file: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_file))
        self._unk = self._tok.token_to_id("[UNK]")

    def tokenize(self, text: str) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens

    def ids(self, tokens: Sequence[str]) -> list[int]:
        out = []
        for token in tokens:
            idx = self._tok.token_to_id(token)
            out.append(self._unk if idx is None else idx)
        return out


def _word_spans(text: str) -> tuple[list[str], list[int | None], list[tuple[int, int]]]:
    """Split into words (runs of [a-zA-Z0-9], else single characters; spaces dropped)."""
    words: list[str] = []
    char_to_word: list[int | None] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    while pos < len(text):
        m = _RE_SPACES.match(text, pos)
        if m:
            char_to_word += [None] * (m.end() - pos)
            pos = m.end()
            continue
        m = _RE_ALNUM.match(text, pos)
        end = m.end() if m else pos + 1
        spans.append((pos, end))
        char_to_word += [len(words)] * (end - pos)
        words.append(text[pos:end])
        pos = end
    return words, char_to_word, spans


def tokenize_with_map(tokenizer: _WordPiece, text: str) -> tuple[list[str], list[int | None], list[tuple[int, int]]]:
    """Word pieces of `text`, the token index of every character and each token's character span."""
    words, char_to_token, word_spans = _word_spans(text)
    tokens: list[str] = []
    token_spans: list[tuple[int, int]] = []
    for word, (start, end) in zip(words, word_spans, strict=True):
        pieces = tokenizer.tokenize(word)
        if not pieces or pieces == ["[UNK]"]:
            tokens.append("[UNK]")
            token_spans.append((start, end))
            continue
        for piece in pieces:
            length = len(piece[2:] if piece.startswith("##") else piece)
            tokens.append(piece)
            token_spans.append((start, start + length))
            start += length
    for i, (start, end) in enumerate(token_spans):
        for pos in range(start, end):
            char_to_token[pos] = i
    return tokens, char_to_token, token_spans


def _window(text, query, tokens, char_to_token, token_spans, limit):
    """Cut a sentence of more than `limit` word pieces around the query character."""
    centre = char_to_token[query]
    first = centre - limit // 2
    last = first + limit
    if first < 0:
        first, last = 0, limit
    elif last > len(tokens):
        first, last = len(tokens) - limit, len(tokens)
    start, end = token_spans[first][0], token_spans[last - 1][1]
    shifted = [None if t is None else t - first for t in char_to_token[start:end]]
    return text[start:end], query - start, tokens[first:last], shifted


# --- the predictor -----------------------------------------------------------------------------


def _onnx_session(model_dir: Path):
    try:
        import onnxruntime
    except ImportError as exc:
        raise PrimeSpeechError(f"g2pW needs onnxruntime: {INSTALL_HINT}") from exc
    path = next((model_dir / n for n in ("g2pW.onnx", "g2pw.onnx") if (model_dir / n).is_file()), None)
    if path is None:
        raise PrimeSpeechError(f"no g2pW.onnx in {model_dir}: download G2PWModel again")
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = 2
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise PrimeSpeechError(f"cannot load the g2pW model {path}: {exc}; download G2PWModel again") from exc


def _opencc_s2tw() -> Callable[[str], str]:
    try:
        import opencc
    except ImportError as exc:
        raise PrimeSpeechError(f"g2pW needs OpenCC for its traditional-character input: {INSTALL_HINT}") from exc
    return opencc.OpenCC("s2tw").convert


class G2PW:
    """g2pW reader: `g2pw(sentences)` -> per sentence, one toned pinyin ("hang2") per character,
    None where g2pW has no reading.

    model_dir: a G2PWModel folder (g2pW.onnx, config.py, POLYPHONIC_CHARS.txt, MONOPHONIC_CHARS.txt,
    bopomofo_to_pinyin_wo_tune_dict.json, char_bopomofo_dict.json); tokenizer_file: the BERT
    tokenizer.json (the Chinese RoBERTa one upstream passes). `session` (anything with
    onnxruntime's `run(names, feeds)`) and `to_traditional` replace the ONNX model and OpenCC.
    """

    def __init__(self, model_dir: str | Path, tokenizer_file: str | Path, *, session: Any = None,
                 to_traditional: Callable[[str], str] | None = None, context_chars: int = CONTEXT_CHARS,
                 sentence_dedup: bool = True):
        model_dir = Path(model_dir)
        for name in ("config.py", "POLYPHONIC_CHARS.txt", "MONOPHONIC_CHARS.txt",
                     "bopomofo_to_pinyin_wo_tune_dict.json", "char_bopomofo_dict.json"):  # fmt: skip
            if not (model_dir / name).is_file():
                raise PrimeSpeechError(f"the g2pW folder {model_dir} lacks {name}: download G2PWModel again")
        self.config = read_config(model_dir / "config.py")
        self.context_chars = max(0, context_chars)
        self.sentence_dedup = sentence_dedup
        self.tokenizer = _WordPiece(Path(tokenizer_file))

        polyphonic = _char_table(model_dir / "POLYPHONIC_CHARS.txt")
        if self.config["use_char_phoneme"]:
            self.labels = sorted({f"{c} {p}" for c, p in polyphonic})
            keys = [(c, f"{c} {p}") for c, p in polyphonic]
        else:
            self.labels = sorted({p for _, p in polyphonic})
            keys = list(polyphonic)
        label_index = {label: i for i, label in enumerate(self.labels)}
        self.char_labels: dict[str, list[int]] = {}
        for char, label in keys:
            self.char_labels.setdefault(char, []).append(label_index[label])
        self.chars = sorted(self.char_labels)
        self.char_ids = {c: i for i, c in enumerate(self.chars)}
        self.masks = {}
        for char, allowed in self.char_labels.items():
            mask = np.zeros(len(self.labels), dtype=np.float32)
            mask[allowed] = 1.0
            self.masks[char] = mask if self.config["use_mask"] else np.ones(len(self.labels), np.float32)
        self.polyphonic = frozenset(self.chars) - _NOT_POLYPHONIC
        self.monophonic = {c: p for c, p in _char_table(model_dir / "MONOPHONIC_CHARS.txt")}
        for char in _NOT_MONOPHONIC:
            self.monophonic.pop(char, None)
        self.bopomofo_to_pinyin = json.loads((model_dir / "bopomofo_to_pinyin_wo_tune_dict.json").read_text("utf-8"))

        self._to_traditional = to_traditional or _opencc_s2tw()
        self._session = session if session is not None else _onnx_session(model_dir)

    def to_pinyin(self, bopomofo: str) -> str | None:
        """"ㄏㄤ2" -> "hang2" (None when the table has no such syllable)."""
        syllable = self.bopomofo_to_pinyin.get(bopomofo[:-1])
        if not syllable:
            log.warning("g2pW: %r cannot be converted to pinyin", bopomofo)
            return None
        return syllable + bopomofo[-1]

    def __call__(self, sentences: Sequence[str]) -> list[list[str | None]]:
        traditional = []
        for sentence in sentences:
            converted = self._to_traditional(sentence)
            if len(converted) != len(sentence):
                raise PrimeSpeechError(f"s2tw changed the length of {sentence!r}; cannot align g2pW readings")
            traditional.append(converted)
        queries, results = self.prepare(traditional)
        if not queries:
            return results
        inputs = self.model_inputs([q[0] for q in queries], [q[1] for q in queries])
        if not inputs:
            return results
        for (_, _, sent, index), label in zip(queries, self.predict(inputs, [q[0] for q in queries]), strict=True):
            if self.config["use_char_phoneme"]:
                label = label.split(" ")[1]
            results[sent][index] = self.to_pinyin(label)
        return results

    def prepare(self, sentences: Sequence[str]) -> tuple[list[tuple[str, int, int, int]], list[list[str | None]]]:
        """Queries (context text, index in it, sentence, index in sentence) for the polyphones, and
        the readings of every other character (pypinyin on the simplified text, or the monophonic table)."""
        from pypinyin import Style, pinyin

        queries: list[tuple[str, int, int, int]] = []
        results: list[list[str | None]] = []
        for sent_id, sentence in enumerate(sentences):
            fallback = pinyin(to_simplified(sentence), neutral_tone_with_five=True, style=Style.TONE3)
            readings: list[str | None] = [None] * len(sentence)
            poly: list[int] = []
            for i, ch in enumerate(sentence):
                if ch in self.polyphonic:
                    poly.append(i)
                elif ch in self.monophonic:
                    readings[i] = self.to_pinyin(self.monophonic[ch])
                else:
                    readings[i] = fallback[i][0]
            if poly:
                left, right = 0, len(sentence)
                if self.context_chars > 0:
                    left = max(0, poly[0] - self.context_chars)
                    right = min(len(sentence), poly[-1] + self.context_chars + 1)
                queries.extend((sentence[left:right], i - left, sent_id, i) for i in poly)
            results.append(readings)
        return queries, results

    def model_inputs(self, texts: Sequence[str], query_ids: Sequence[int]) -> dict[str, np.ndarray]:
        """The ONNX feeds for each (text, query index); {} when a text cannot be tokenised."""
        rows: list[tuple[list[int], int]] = []
        masks, char_ids = [], []
        cache: dict[str, tuple] = {}
        for text, query in zip(texts, query_ids, strict=True):
            text = text.lower()
            if text not in cache:
                try:
                    cache[text] = tokenize_with_map(self.tokenizer, text)
                except Exception:  # noqa: BLE001 - upstream gives up on the whole batch here
                    log.warning("g2pW: cannot tokenise %r", text)
                    return {}
            tokens, char_to_token, spans = cache[text]
            local_text, local_query = text, query
            if len(tokens) > MAX_TOKENS - 2:
                local_text, local_query, tokens, char_to_token = _window(
                    text, query, tokens, char_to_token, spans, MAX_TOKENS - 2)
            ids = self.tokenizer.ids(["[CLS]", *tokens, "[SEP]"])
            char = local_text[local_query]
            rows.append((ids, char_to_token[local_query] + 1))
            masks.append(self.masks[char])
            char_ids.append(self.char_ids[char])
        width = max(len(ids) for ids, _ in rows)
        input_ids = np.zeros((len(rows), width), dtype=np.int64)
        attention = np.zeros((len(rows), width), dtype=np.int64)
        for r, (ids, _) in enumerate(rows):
            input_ids[r, : len(ids)] = ids
            attention[r, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "token_type_ids": np.zeros_like(input_ids),
            "attention_masks": attention,
            "phoneme_masks": np.stack(masks).astype(np.float32),
            "char_ids": np.asarray(char_ids, dtype=np.int64),
            "position_ids": np.asarray([pos for _, pos in rows], dtype=np.int64),
        }

    def _run(self, inputs: dict[str, np.ndarray]) -> list[str]:
        probs = self._session.run([], {
            "input_ids": inputs["input_ids"],
            "token_type_ids": inputs["token_type_ids"],
            "attention_mask": inputs["attention_masks"],
            "phoneme_mask": inputs["phoneme_masks"],
            "char_ids": inputs["char_ids"],
            "position_ids": inputs["position_ids"],
        })[0]  # fmt: skip
        return [self.labels[i] for i in np.argmax(probs, axis=1).tolist()]

    def predict(self, inputs: dict[str, np.ndarray], texts: Sequence[str]) -> list[str]:
        """One label per query. Queries on the same context text share one encoder row (upstream's
        sentence de-duplication): the model receives 1 row of token ids for N queries."""
        if not self.sentence_dedup or len(texts) <= 1 or len(set(texts)) == len(texts):
            return self._run(inputs)
        groups: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            groups.setdefault(text, []).append(i)
        labels = [""] * len(texts)
        for rows in groups.values():
            part = {name: value[rows] for name, value in inputs.items()}
            if len(rows) > 1:
                for name in ("input_ids", "token_type_ids", "attention_masks"):
                    part[name] = part[name][:1]
            for i, label in zip(rows, self._run(part), strict=True):
                labels[i] = label
        return labels


def load_g2pw(model_root: str | Path, tokenizer_file: str | Path | None = None) -> G2PW | None:
    """The g2pW reader of `<model_root>/G2PWModel/`, or None (and a log line) to use pypinyin."""
    root = ModelRoot(Path(model_root))
    model_dir = root.g2pw
    if not model_dir.is_dir():
        log.info("Chinese polyphones: pypinyin (no %s)", model_dir)
        return None
    found = (path for path in root.g2pw_tokenizers() if path.is_file())
    tokenizer = Path(tokenizer_file) if tokenizer_file else next(found, None)
    if tokenizer is None or not tokenizer.is_file():
        log.warning("Chinese polyphones: pypinyin (g2pW needs a BERT tokenizer.json: none found beside %s)",
                    model_dir)
        return None
    try:
        reader = G2PW(model_dir, tokenizer)
    except PrimeSpeechError as exc:
        log.warning("Chinese polyphones: pypinyin (%s)", exc)
        return None
    _corrections()  # load the correction tables now, not on the first sentence
    log.info("Chinese polyphones: g2pW (%s)", model_dir)
    return reader
