"""Upstream GPT-SoVITS Chinese frontend as a test oracle (dev only).

Upstream runs in a child process (`python -m primespeech_devtools.oracle.text_zh`): importing
its `text` package patches pypinyin's phrase table and loads jieba_fast, which must not leak into
the process that tests our frontend.

- v1: upstream `text.chinese` (what `clean_text(t, "zh", "v1")` runs), as installed.
- v2: upstream `text.chinese2` with g2pW off (`is_g2pw = False`): its pypinyin path. Importing
  chinese2 builds the g2pW predictor at import time, which would download a model, so the
  predictor module is replaced by a stub before the import; nothing of it is used afterwards.
- v2 + g2pW (`upstream_g2pw`): the same module with `is_g2pw = True`, the installed package's
  g2pW converter (its data flow is upstream's onnx_api one) around `FakeG2PWSession` in place of
  the ONNX model, upstream 48b1a01's `correct_pronunciation`, and the installed package's own
  phrase-override additions switched off: used to check our g2pW wiring without the model.

Each text gives {"norm_text", "phones", "word2ph"} (the zh part of upstream `clean_text`, without
its "￥"/"^" pause-symbol special case) or {"error": "..."} when upstream raises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from collections.abc import Sequence

from primespeech_devtools.oracle import import_upstream


def _stub_g2pw_modules() -> None:
    """Let `text.chinese2` import without building (and downloading) its g2pW predictor."""
    torch_api = types.ModuleType("text.g2pw.torch_api")

    class _NoPredictor:
        def __init__(self, *args, **kwargs):
            pass

    torch_api.G2PWTorchConverter = _NoPredictor
    sys.modules["text.g2pw.torch_api"] = torch_api
    pron = types.ModuleType("text.g2pw.pronunciation")
    pron.correct_pronunciation = None
    pron.get_phrase_pronunciation = None
    sys.modules["text.g2pw.pronunciation"] = pron


def load_upstream_module(version: str):
    """Import upstream's Chinese module for `version` in THIS process (use it only in a child)."""
    import_upstream()
    if version == "v1":
        from text import chinese

        return chinese
    _stub_g2pw_modules()
    from text import chinese2

    chinese2.is_g2pw = False
    return chinese2


def _segments(module, norm_text: str, cut: bool = True) -> list:
    """The pieces upstream g2p works on (split after punctuation, Latin letters removed), each
    cut by upstream's jieba posseg when `cut`."""
    import re

    pattern = r"(?<=[{}])\s*".format("".join(module.punctuation))
    out = []
    for seg in (s for s in re.split(pattern, norm_text) if s.strip() != ""):
        seg = re.sub("[a-zA-Z]+", "", seg)
        out.append([[w, p] for w, p in module.psg.lcut(seg)] if cut else seg)
    return out


def run_module(module, texts: Sequence[str], with_segments: bool = False) -> list[dict]:
    """Upstream text_normalize + g2p for each text, with clean_text's length checks."""
    results = []
    for text in texts:
        try:
            norm = module.text_normalize(text)
            phones, word2ph = module.g2p(norm)
            assert len(phones) == sum(word2ph), "len(phones) != sum(word2ph)"
            assert len(norm) == len(word2ph), "len(norm_text) != len(word2ph)"
            item = {"norm_text": norm, "phones": list(phones), "word2ph": list(word2ph)}
            if with_segments:
                import jieba_fast

                item["segments"] = _segments(module, norm)
                # the words tone sandhi splits with jieba_fast.cut_for_search: pre-merged ones
                merged = [w for cut in item["segments"] for w, _ in module.tone_modifier.pre_merge_for_modify(cut)]
                item["search_cuts"] = {w: jieba_fast.lcut_for_search(w) for w in merged}
        except Exception as exc:  # noqa: BLE001 - an upstream failure is a result too
            item = {"error": f"{type(exc).__name__}: {exc}"}
        results.append(item)
    return results


class Pending:
    """A running oracle child; `result()` waits for its JSON answer."""

    def __init__(self, args: Sequence[str], payload, timeout: float):
        cmd = [sys.executable, "-m", "primespeech_devtools.oracle.text_zh", *args]
        env = dict(os.environ, PYTHONIOENCODING="utf-8")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, encoding="utf-8", env=env)
        self._payload = json.dumps(payload, ensure_ascii=False)
        self._timeout = timeout

    def result(self):
        out, err = self._proc.communicate(self._payload, timeout=self._timeout)
        if self._proc.returncode != 0:
            raise RuntimeError(f"upstream zh oracle failed ({self._proc.returncode}):\n{err[-4000:]}")
        return json.loads(out)


def start_upstream_zh(texts: Sequence[str], version: str = "v2", with_segments: bool = False,
                      timeout: float = 300.0) -> Pending:
    """Start upstream's Chinese frontend on `texts` in a child process (see `upstream_zh`)."""
    args = [version, "--segments"] if with_segments else [version]
    return Pending(args, list(texts), timeout)


def upstream_zh(texts: Sequence[str], version: str = "v2", with_segments: bool = False,
                timeout: float = 300.0) -> list[dict]:
    """Upstream's Chinese frontend on `texts`: one dict per text; with_segments adds upstream's
    posseg cut of each g2p piece ("segments") and jieba_fast.lcut_for_search of every word tone
    sandhi sees ("search_cuts")."""
    return start_upstream_zh(texts, version, with_segments, timeout).result()


# --- g2pW wiring (no real model here: a deterministic fake stands in for g2pW.onnx) -------------


class FakeG2PWSession:
    """Stand-in for the g2pW ONNX session: picks one of the query character's allowed labels from
    a hash of its inputs (token at the query position, all token ids, character id, length), so
    any difference in the inputs shows up as a different reading. Accepts the de-duplicated form
    (1 row of token ids for N queries) as upstream's sentence de-duplication sends it."""

    def run(self, output_names, feeds):
        import numpy as np

        ids, mask = feeds["input_ids"], feeds["phoneme_mask"]
        att, pos, char = feeds["attention_mask"], feeds["position_ids"], feeds["char_ids"]
        out = np.zeros(mask.shape, dtype=np.float32)
        for i in range(mask.shape[0]):
            r = min(i, ids.shape[0] - 1)
            key = int(ids[r, pos[i]]) * 31 + int(ids[r].sum()) + 7 * int(char[i]) + 3 * int(att[r].sum())
            allowed = np.flatnonzero(mask[i])
            out[i, allowed[key % len(allowed)]] = 1.0
        return [out]


def upstream_tokenizer_file() -> str:
    """The real Chinese RoBERTa tokenizer.json shipped with the oracle package."""
    return os.path.join(import_upstream(), "pretrained_models", "chinese-roberta-wwm-ext-large", "tokenizer.json")


def upstream_s2tw():
    """The oracle package's OpenCC-s2tw replacement, loaded by path (no `text` import): both sides
    of a g2pW comparison use it, so the comparison does not depend on OpenCC being installed."""
    import importlib.util

    path = os.path.join(import_upstream(), "text", "opencc_s2tw.py")
    spec = importlib.util.spec_from_file_location("_oracle_opencc_s2tw", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.simplified_to_traditional_tw


def write_test_g2pw_dir(path: str) -> str:
    """A G2PWModel folder without the ONNX file: the oracle package's real config.py and
    POLYPHONIC/MONOPHONIC tables, plus a bopomofo->pinyin table generated with pypinyin (the real
    JSON files ship only inside the G2PWModel download)."""
    import shutil

    from pypinyin import Style, pinyin
    from pypinyin.style.bopomofo import BopomofoConverter

    src = os.path.join(import_upstream(), "text", "G2PWModel")
    os.makedirs(path, exist_ok=True)
    for name in ("config.py", "POLYPHONIC_CHARS.txt", "MONOPHONIC_CHARS.txt"):
        shutil.copy(os.path.join(src, name), os.path.join(path, name))
    syllables = set()
    for name in ("POLYPHONIC_CHARS.txt", "MONOPHONIC_CHARS.txt"):
        with open(os.path.join(src, name), encoding="utf-8") as f:
            for line in f.read().strip().split("\n"):
                ch = line.split("\t")[0]
                for item in pinyin(ch, style=Style.NORMAL, heteronym=True)[0]:
                    syllables.add(item)
    conv = BopomofoConverter()
    table = {}
    for syl in sorted(syllables):
        bopomofo = conv.to_bopomofo(syl).rstrip("˙ˊˇˋ")
        table.setdefault(bopomofo, syl)
    with open(os.path.join(path, "bopomofo_to_pinyin_wo_tune_dict.json"), "w", encoding="utf-8") as f:
        json.dump(table, f, ensure_ascii=False)
    with open(os.path.join(path, "char_bopomofo_dict.json"), "w", encoding="utf-8") as f:
        json.dump({}, f)
    return path


def _upstream_correct_pronunciation(pp_dict):
    """Upstream 48b1a01 g2pw/g2pw.py correct_pronunciation (the installed package replaced it with a
    phrase-override variant that upstream does not have)."""

    def correct_pronunciation(word, word_pinyins):
        new_pinyins = pp_dict.get(word, "")
        if new_pinyins == "":
            for idx, w in enumerate(word):
                w_pinyin = pp_dict.get(w, "")
                if w_pinyin != "":
                    word_pinyins[idx] = w_pinyin[0]
            return word_pinyins
        return new_pinyins

    return correct_pronunciation


def _read_pp_dict() -> dict:
    """polyphonic.rep then polyphonic-fix.rep as upstream reads them (literal values)."""
    import ast
    import gzip
    from importlib import resources

    data = resources.files("dora_primespeech_mlx.text").joinpath("data")
    texts = [data.joinpath("polyphonic.rep").read_text(encoding="utf-8"),
             gzip.decompress(data.joinpath("polyphonic-fix.rep.gz").read_bytes()).decode("utf-8")]
    table = {}
    for text in texts:
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.split(":")
                table[key.strip()] = ast.literal_eval(value.strip())
    return table


def _g2pw_main(texts: list[str], model_dir: str) -> dict:
    """Child side of `upstream_g2pw`: chinese2 with is_g2pw on, the installed package's g2pW
    converter (same data flow as upstream's onnx_api) around FakeG2PWSession."""
    import numpy as np

    import_upstream()
    torch_api = types.ModuleType("text.g2pw.torch_api")
    torch_api.G2PWTorchConverter = lambda *a, **k: None
    sys.modules["text.g2pw.torch_api"] = torch_api
    pron = types.ModuleType("text.g2pw.pronunciation")
    pron.correct_pronunciation = _upstream_correct_pronunciation(_read_pp_dict())
    pron.get_phrase_pronunciation = lambda word: None
    sys.modules["text.g2pw.pronunciation"] = pron
    from text import chinese2
    from text.g2pw.base_api import _G2PWBaseConverter
    from text.g2pw.dataset import prepare_onnx_input

    session = FakeG2PWSession()

    class Converter(_G2PWBaseConverter):
        def _predict(self, model_input):
            probs = session.run([], {
                "input_ids": model_input["input_ids"], "token_type_ids": model_input["token_type_ids"],
                "attention_mask": model_input["attention_masks"], "phoneme_mask": model_input["phoneme_masks"],
                "char_ids": model_input["char_ids"], "position_ids": model_input["position_ids"],
            })[0]  # fmt: skip
            preds = np.argmax(probs, axis=1).tolist()
            return [self.labels[p] for p in preds], [float(probs[i, p]) for i, p in enumerate(preds)]

    converter = Converter(model_dir=model_dir, style="pinyin",
                          model_source=os.path.dirname(upstream_tokenizer_file()),
                          enable_non_tradional_chinese=True)
    chinese2.is_g2pw = True
    chinese2.g2pw = converter
    chinese2.correct_pronunciation = pron.correct_pronunciation
    chinese2._get_phrase_level_pinyin_override = lambda word: None  # not in upstream
    results = run_module(chinese2, texts)

    from text.opencc_s2tw import simplified_to_traditional_tw

    # the g2pW inputs chinese2._g2p builds: upstream-normalised text, split after punctuation,
    # Latin letters removed, empty pieces dropped
    segments = []
    for item in results:
        if "norm_text" in item:
            for seg in _segments(chinese2, item["norm_text"], cut=False):
                if seg:
                    segments.append(seg)
    trad = [simplified_to_traditional_tw(s) for s in segments]
    q_texts, q_ids, r_ids, s_ids, partial = converter._prepare_data(trad)
    inputs = prepare_onnx_input(tokenizer=converter.tokenizer, labels=converter.labels,
                                char2phonemes=converter.char2phonemes, chars=converter.chars, texts=q_texts,
                                query_ids=q_ids, use_mask=converter.config.use_mask, window_size=None,
                                char2id=converter.char2id, char_phoneme_masks=converter.char_phoneme_masks)
    readings = converter(segments)
    return {
        "results": results,
        "segments": segments,
        "queries": [list(q) for q in zip(q_texts, q_ids, s_ids, r_ids, strict=True)],
        "partial": partial,
        "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()},
        "readings": readings,
    }


def start_upstream_g2pw(texts: Sequence[str], model_dir: str, timeout: float = 300.0) -> Pending:
    """Start upstream's v2 g2pW path in a child process (see `upstream_g2pw`)."""
    return Pending(["g2pw", model_dir], list(texts), timeout)


def upstream_g2pw(texts: Sequence[str], model_dir: str, timeout: float = 300.0) -> dict:
    """Upstream's v2 g2pW path around FakeG2PWSession: per-text "results" as `upstream_zh`, and
    for all the g2pW input "segments" of those texts the converter's "queries", "partial"
    readings, ONNX feeds ("inputs") and final "readings". `model_dir`: see `write_test_g2pw_dir`."""
    return start_upstream_g2pw(texts, model_dir, timeout).result()


def _main(argv: list[str]) -> None:
    import io
    import logging

    logging.disable(logging.CRITICAL)
    version = argv[0]
    payload = json.loads(sys.stdin.read())
    # upstream prints progress; keep stdout for the JSON answer only
    real_stdout, sys.stdout = sys.stdout, io.StringIO()
    try:
        if version == "g2pw":
            results = _g2pw_main(payload, argv[1])
        else:
            module = load_upstream_module(version)
            results = run_module(module, payload, with_segments="--segments" in argv)
    finally:
        sys.stdout = real_stdout
    json.dump(results, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    _main(sys.argv[1:])
