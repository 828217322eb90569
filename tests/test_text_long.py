"""Long runs without punctuation are cut between words into segments that fit RoBERTa and T2S.

Upstream cuts only at clause marks, so a long unpunctuated run stayed one segment: 3,000 Chinese
characters failed with "text too long for BERT: 3002 tokens, at most 512".
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dora_primespeech_mlx import pipeline as pipeline_module
from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.pipeline import BERT_MAX_CHARS, MAX_SEGMENT_PHONES, TextPipeline
from dora_primespeech_mlx.text import fit_segment, piece_length, prepare_segments, split_long
from dora_primespeech_mlx.text.cut import words
from dora_primespeech_mlx.text.preprocess import MAX_PIECE_LENGTH

DATA = Path(__file__).parent / "data"


def _lines(name: str) -> list[str]:
    text = (DATA / name).read_text(encoding="utf-8")
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


@pytest.fixture(scope="module")
def chinese_run() -> str:
    """3,000 Chinese characters without a mark: the corpus with everything but ideographs removed."""
    run = re.sub(r"[^\u4e00-\u9fa5]", "", "".join(_lines("zh_corpus.txt")))
    assert len(run) >= 3000
    return run[:3000]


@pytest.fixture(scope="module")
def english_run() -> str:
    run = re.sub(r" +", " ", re.sub(r"[^A-Za-z ]", "", " ".join(_lines("en_corpus.txt"))))
    assert len(run) >= 3000
    return run[:3000]


def _boundaries(pieces: list[str]) -> list[int]:
    out, at = [], 0
    for piece in pieces[:-1]:
        at += len(piece)
        out.append(at)
    return out


def test_chinese_run_is_cut_at_jieba_words(chinese_run):
    from dora_primespeech_mlx.text.zh_segment import default_segmenter

    pieces = split_long(chinese_run, MAX_PIECE_LENGTH, piece_length)
    assert "".join(pieces) == chinese_run
    assert len(pieces) > 1 and all(piece_length(p) <= MAX_PIECE_LENGTH for p in pieces)
    jieba_words = [w for w, _ in default_segmenter().pos_cut(chinese_run)]
    assert set(_boundaries(pieces)) <= set(_boundaries(jieba_words + [""]))
    sizes = [len(p) for p in pieces]
    assert max(sizes) - min(sizes) <= 8  # even pieces, no stub at the end


def test_english_run_is_cut_at_spaces(english_run):
    pieces = split_long(english_run, 450)
    assert "".join(pieces) == english_run and len(pieces) > 1 and max(map(len, pieces)) <= 450
    for before, after in zip(pieces, pieces[1:], strict=False):
        assert after[0] == " " and before[-1] != " "  # the space goes with the word after it


def test_clause_marks_are_preferred_and_long_words_cut():
    pieces = split_long("字，" * 300, 150)
    assert "".join(pieces) == "字，" * 300 and all(p.endswith("，") and len(p) <= 150 for p in pieces)
    pieces = split_long("x" * 1000, 450)
    assert "".join(pieces) == "x" * 1000 and max(map(len, pieces)) <= 450
    assert split_long("short text", 450) == ["short text"]


def test_words_concatenate_back():
    for text in ("你好 world，今天天气很好！Hello there.", "  spaced  out  ", "a -- b", "中文(English)中文"):
        assert "".join(words(text)) == text
    assert words("hello big world") == ["hello", " big", " world"]


def test_fit_segment_ends_pieces_with_a_stop(chinese_run, english_run):
    pieces = fit_segment(chinese_run + "。", "zh")
    assert all(p.endswith("。") for p in pieces) and "".join(p[:-1] for p in pieces) == chinese_run
    pieces = fit_segment(english_run, "en")
    assert all(p.endswith(".") for p in pieces) and "".join(p[:-1] for p in pieces) == english_run


def test_normal_segments_are_left_whole():
    """Upstream's segments of the corpora are under the limit: fit_segment does not touch them."""
    texts = _lines("zh_corpus.txt") + _lines("en_corpus.txt")
    for method in ("cut0", "cut5"):
        for segment in (s for text in texts for s in prepare_segments(text, "zh", method)):
            assert fit_segment(segment, "zh") == [segment]


def _assert_fits(prepared):
    assert prepared.segments and prepared.dropped == ()
    for segment in prepared.segments:
        assert len(segment.phones) <= MAX_SEGMENT_PHONES
        assert all(len(p.norm_text) <= BERT_MAX_CHARS for p in segment.pieces if p.lang == "zh")


def test_long_chinese_text_fits_the_models(chinese_run):
    prepared = TextPipeline().prepare(chinese_run, "zh")
    _assert_fits(prepared)
    assert all(s.text.endswith("。") for s in prepared.segments)
    assert "".join(s.text[:-1] for s in prepared.segments) == chinese_run  # nothing lost, nothing repeated


def test_long_number_fits_the_models():
    # digits weigh one character each but are read as Chinese syllables: the phone check cuts again
    prepared = TextPipeline().prepare("1234567890" * 200, "zh")
    _assert_fits(prepared)
    assert "".join(s.text.rstrip("。") for s in prepared.segments) == "1234567890" * 200


def test_text_that_cannot_fit_raises_up_front(monkeypatch):
    monkeypatch.setattr(pipeline_module, "MAX_SEGMENT_PHONES", 6)
    with pytest.raises(PrimeSpeechError, match="text too long to synthesise: 8 phones, at most 6"):
        TextPipeline().prepare("W", "en")  # one letter, 7 phones and the stop: nothing to cut
