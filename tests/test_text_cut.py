"""cut0..cut5 and segment preparation equal upstream's, string for string.

Inputs: every line of the zh and en corpora, 450 random paragraphs built from them (joined with
nothing, spaces, newlines, "……", "——", "...", "!!"), and edge cases (empty, marks only, decimals,
texts over 510 characters).
"""

from __future__ import annotations

import importlib
import random
from pathlib import Path

import pytest

from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.text import cut, prepare_segments

cutmod = importlib.import_module("dora_primespeech_mlx.text.cut")
DATA = Path(__file__).parent / "data"
EDGE = ["", "。", "...", "!?", " ", "\n\n", "a", "你", "3.14", "1.2.3", "好。", "。。。你好", "…", "——", "1.5万",
        "abc\n\ndef", "x" * 600, "你好" * 300 + "。" + "啊" * 300, "Hi. " * 200, "第1.5节，共3.25页。Ok. 2.5",
        "你好，我是小明。你好，我是小红。你好，我是小刚。你好，我是小张。", "Hi!\n\n\nThere.", "  spaced  out  "]


def _lines(name: str) -> list[str]:
    path = DATA / name
    if not path.exists():
        return []
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    zh, en = _lines("zh_corpus.txt"), _lines("en_corpus.txt")
    rng = random.Random(0)
    out = zh + en + EDGE
    for src in (zh, en, zh + en):
        if not src:
            continue
        for _ in range(150):
            i, k = rng.randrange(len(src)), rng.randint(2, 14)
            out.append(rng.choice(["", " ", "\n", "……", "——", "...", "!!"]).join(src[i:i + k]))
    return out


@pytest.fixture(scope="module")
def oracle(upstream):
    from primespeech_devtools.oracle.text_en import upstream_prepare_segments, upstream_segmentation

    return upstream_segmentation()[0], upstream_prepare_segments


def _outcome(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # both sides failing the same way counts as agreement
        return type(exc).__name__


def test_cut_methods_equal_upstream(texts, oracle):
    seg, _ = oracle
    differ = []
    for text in texts:
        for name in cutmod.METHODS:
            ours = _outcome(cutmod.cut_text, text, name)
            theirs = _outcome(seg.get_method(name), text)
            if ours != theirs:
                differ.append((name, text[:60], theirs, ours))
    assert len(texts) > 1000
    assert differ == []


def test_prepare_segments_equal_upstream(texts, oracle):
    _, upstream_prepare = oracle
    differ = []
    for text in texts:
        for name in cutmod.METHODS:
            for lang in ("zh", "en"):
                theirs = upstream_prepare(text, lang, name)
                if isinstance(theirs, ValueError):  # upstream: "please enter valid text"; ours: no segment
                    theirs = []
                ours = prepare_segments(text, lang, name)
                if ours != theirs:
                    differ.append((name, lang, text[:60], theirs, ours))
    assert differ == []


def test_cut_returns_pieces():
    assert cut("你好，世界。Hello, world! 3.14 is pi.", "cut5") == ["你好，", "世界。", "Hello,", " world!", " 3.14 is pi."]
    assert cut("A. B. C.", "cut4") == ["A", " B", " C"]
    assert cut("...", "cut0") == ["/n"]  # upstream's literal answer for marks-only text


def test_segment_rules():
    # "Hi" is a short first clause: "." goes in front (then cut off by cut5), "Hi." is merged forward
    assert prepare_segments("Hi. How are you?", "en", "cut5") == ["Hi. How are you?"]
    assert prepare_segments("好。今天天气很好！！！", "zh", "cut5") == ["好。今天天气很好！"]
    assert prepare_segments("没有句号", "zh", "cut0") == ["没有句号。"]
    # over 510 characters: re-split at clause marks only (upstream cannot cut an unpunctuated run)
    assert [len(s) for s in prepare_segments("字" * 1200, "zh", "cut0")] == [0, 1200, 1]
    assert [len(s) for s in prepare_segments("字，" * 300, "zh", "cut0")] == [510, 91]
    assert prepare_segments("...", "en", "cut5") == []


def test_unknown_method():
    with pytest.raises(PrimeSpeechError, match="unknown text split method"):
        cut("x", "cut9")
