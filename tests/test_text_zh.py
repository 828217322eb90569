"""Chinese frontend vs upstream GPT-SoVITS (text/chinese2.py v2, text/chinese.py v1).

The upstream oracle runs in child processes started once per session (v2 pypinyin path, v1, and
the v2 g2pW path around a fake model), in parallel with our side.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.text import chinese, zh_normalization
from dora_primespeech_mlx.text.g2pw import G2PW, correct_pronunciation, load_g2pw
from dora_primespeech_mlx.text.zh_segment import default_segmenter

CORPUS = Path(__file__).parent / "data" / "zh_corpus.txt"
MIN_AGREEMENT = 0.99
# Sentences of the corpus where ours may differ from upstream, with the reason. Empty: every
# sentence agrees; a new difference, or agreement below MIN_AGREEMENT, fails the tests.
EXPECTED_DIFFERENCES: dict[str, dict[str, str]] = {"v2": {}, "v1": {}}
G2PW_SUBSET = 3  # every 3rd corpus text goes through the (slower) g2pW oracle


def _load_corpus() -> list[str]:
    lines = CORPUS.read_text(encoding="utf-8").splitlines()
    return [line.replace("\\n", "\n") for line in lines if line and not line.startswith("#")]


def _ours(text: str, version: str, g2pw=None) -> dict:
    try:
        norm = chinese.text_normalize(text)
        phones, word2ph = chinese.g2p(norm, version=version, g2pw=g2pw)
        return {"norm_text": norm, "phones": phones, "word2ph": word2ph}
    except PrimeSpeechError as exc:
        return {"error": str(exc)}


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    texts = _load_corpus()
    assert len(texts) >= 400 and len(set(texts)) == len(texts)
    return texts


@pytest.fixture(scope="session")
def g2pw_dir(tmp_path_factory, upstream) -> str:
    from primespeech_devtools.oracle.text_zh import write_test_g2pw_dir

    return write_test_g2pw_dir(str(tmp_path_factory.mktemp("g2pw") / "G2PWModel"))


@pytest.fixture(scope="session")
def reference(corpus, g2pw_dir) -> dict:
    """Upstream answers: v2 and v1 on the corpus, g2pW path on a subset (started together)."""
    from primespeech_devtools.oracle import text_zh

    pending = {
        "v2": text_zh.start_upstream_zh(corpus, "v2"),
        "v1": text_zh.start_upstream_zh(corpus, "v1", with_segments=True),
        "g2pw": text_zh.start_upstream_g2pw(corpus[::G2PW_SUBSET], g2pw_dir),
    }
    chinese.warmup()  # our side loads while upstream works
    return {name: p.result() for name, p in pending.items()}


@pytest.fixture(scope="session")
def fake_g2pw(g2pw_dir) -> G2PW:
    from primespeech_devtools.oracle.text_zh import FakeG2PWSession, upstream_s2tw, upstream_tokenizer_file

    return G2PW(g2pw_dir, upstream_tokenizer_file(), session=FakeG2PWSession(), to_traditional=upstream_s2tw())


def _differences(texts, ours, ref) -> dict[str, str]:
    out = {}
    for text, a, b in zip(texts, ours, ref, strict=True):
        b = {k: v for k, v in b.items() if k not in ("segments", "search_cuts")}
        if a != b:
            fields = [k for k in ("norm_text", "phones", "word2ph", "error") if a.get(k) != b.get(k)]
            out[text] = f"{fields}: ours {a} upstream {b}"
    return out


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_frontend_matches_upstream(corpus, reference, version):
    ours = [_ours(t, version) for t in corpus]
    diffs = _differences(corpus, ours, reference[version])
    agreement = 1 - len(diffs) / len(corpus)
    unexpected = {t: d for t, d in diffs.items() if t not in EXPECTED_DIFFERENCES[version]}
    assert not unexpected, "\n".join(f"{t!r}: {d}" for t, d in unexpected.items())
    assert agreement >= MIN_AGREEMENT
    assert not any("error" in r for r in reference[version]), "the corpus should be speakable upstream"


def test_v1_and_v2_differ_only_by_erhua(corpus, reference):
    """Upstream's two paths differ only where v2 gives a final 儿 the tone of the syllable before."""
    differing = 0
    for v2, v1 in zip(reference["v2"], reference["v1"], strict=True):
        assert v2["norm_text"] == v1["norm_text"] and v2["word2ph"] == v1["word2ph"]
        pairs = [(a, b) for a, b in zip(v2["phones"], v1["phones"], strict=True) if a != b]
        assert all(a.startswith("er") and b.startswith("er") for a, b in pairs), pairs
        differing += bool(pairs)
    assert differing >= 20  # the corpus exercises erhua


def test_segmenter_matches_jieba(reference):
    """Our posseg = jieba_fast.posseg (upstream's) = jieba.posseg (the package we build on); our
    search cut (tone sandhi's word split) = jieba_fast.lcut_for_search (upstream's)."""
    import jieba.posseg

    seg = default_segmenter()
    pieces = [p for item in reference["v1"] for p in item["segments"]]
    assert len(pieces) > 700
    for expected in pieces:
        text = "".join(w for w, _ in expected)
        ours = [list(x) for x in seg.pos_cut(text)]
        assert ours == expected, text
        assert ours == [[p.word, p.flag] for p in jieba.posseg.lcut(text)], text
    searched = {w: cut for item in reference["v1"] for w, cut in item["search_cuts"].items()}
    assert len(searched) > 1500
    for word, expected in searched.items():
        assert seg.search_cut(word) == expected, word


def test_search_cut_follows_jieba_fast_on_unknown_characters():
    """Characters the HMM has never seen: jieba_fast (upstream) keeps them in one word, jieba
    would split them; we follow jieba_fast (outputs recorded from jieba_fast 0.53)."""
    seg = default_segmenter()
    assert seg.search_cut("盘儿菜纼") == ["盘儿菜纼"]
    assert seg.search_cut("演期鍋浝") == ["演期鍋浝"]
    assert seg.search_cut("麰苸") == ["麰苸"]


def test_g2pw_preprocessing_matches_upstream(reference, fake_g2pw):
    """Queries, context windows, pypinyin/monophonic readings, BERT feeds and the readings picked
    from the (fake) model outputs: identical to upstream's converter on the same inputs."""
    from primespeech_devtools.oracle.text_zh import upstream_s2tw

    ref = reference["g2pw"]
    segments = ref["segments"]
    assert len(segments) > 200
    s2tw = upstream_s2tw()
    queries, partial = fake_g2pw.prepare([s2tw(s) for s in segments])
    assert [list(q) for q in queries] == ref["queries"]
    assert partial == ref["partial"]
    inputs = fake_g2pw.model_inputs([q[0] for q in queries], [q[1] for q in queries])
    assert set(inputs) == set(ref["inputs"])
    for name, value in ref["inputs"].items():
        expected = np.asarray(value)
        assert inputs[name].shape == expected.shape and np.array_equal(inputs[name], expected), name
    assert inputs["phoneme_masks"].dtype == np.float32 and inputs["input_ids"].dtype == np.int64
    assert fake_g2pw(segments) == ref["readings"]


def test_g2pw_path_matches_upstream(corpus, reference, fake_g2pw):
    texts = corpus[::G2PW_SUBSET]
    ours = [_ours(t, "v2", g2pw=fake_g2pw) for t in texts]
    assert _differences(texts, ours, reference["g2pw"]["results"]) == {}
    # the fake model's readings really are used
    assert sum(a != b for a, b in zip(ours, reference["v2"][::G2PW_SUBSET], strict=True)) > len(texts) // 2
    # v1 never uses g2pW, as upstream chinese.py
    assert _ours(texts[0], "v1", g2pw=fake_g2pw) == _ours(texts[0], "v1")


def test_g2pw_corrections_table():
    from primespeech_devtools.oracle.text_zh import _read_pp_dict

    table = _read_pp_dict()
    assert len(table) > 40000
    for word in ("湖泊", "一丝不苟", "地壳", "差不多"):
        assert correct_pronunciation(word, ["x5"] * len(word)) == table[word]
    assert correct_pronunciation("好人", ["hao3", "ren2"]) == ["hao3", "ren2"]


def test_load_g2pw_falls_back_to_pypinyin(tmp_path, caplog, g2pw_dir, monkeypatch):
    import logging
    import shutil

    caplog.set_level(logging.INFO, logger="dora_primespeech_mlx.text.g2pw")
    assert load_g2pw(tmp_path) is None
    assert "pypinyin" in caplog.text
    shutil.copytree(g2pw_dir, tmp_path / "G2PWModel")
    caplog.clear()
    assert load_g2pw(tmp_path) is None  # no tokenizer.json anywhere
    assert "tokenizer" in caplog.text
    from primespeech_devtools.oracle.text_zh import upstream_tokenizer_file

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "opencc", None)
    caplog.clear()
    assert load_g2pw(tmp_path, tokenizer_file=upstream_tokenizer_file()) is None
    assert "pip install" in caplog.text and "pypinyin" in caplog.text
    with pytest.raises(PrimeSpeechError, match="onnxruntime"):
        G2PW(tmp_path / "G2PWModel", upstream_tokenizer_file(), to_traditional=str)


def test_normalizer_rules():
    """Readings pinned by hand, upstream quirks included."""
    norm = chinese.text_normalize
    assert norm("体温37.5摄氏度") == "体温三十七点五度"  # unit word taken from the wrong group
    assert norm("8:30-9:15") == "八点半至九点半"  # second half says 半 when the FIRST minute is 30
    assert norm("3.20分") == "三点二零分"
    assert norm("2个人，共12本书") == "两个人,共十二本书"
    assert norm("电话13812345678") == "电话幺三八幺二三四五六七八"
    assert norm("-3℃到5℃") == "零下三度到五度"
    assert norm("1/3和50%") == "三分之一和百分之五十"
    assert norm("2024-05-20") == "二零二四年五月二十日"
    assert norm("10050元") == "一万零五十元"
    assert norm("你好！！！？") == "你好!"
    assert norm("嗯，这样……") == "恩,这样…"
    assert zh_normalization.read_cardinal("100000001") == "一亿零一"


def test_g2p_details():
    assert chinese.g2p("") == ([], [])
    phones, word2ph = chinese.g2p("一会儿,")
    assert phones == ["y", "i2", "h", "ui4", "EE", "er4", ","] and word2ph == [2, 2, 2, 1]
    assert chinese.g2p("一会儿,", version="v1")[0][5] == "er5"
    with pytest.raises(PrimeSpeechError, match="phonemes"):
        chinese.g2p("覅")


def test_import_is_lazy():
    """Importing the module loads neither jieba nor pypinyin (they load on first use)."""
    code = ("import sys, dora_primespeech_mlx.text.chinese; "
            "assert 'jieba' not in sys.modules and 'pypinyin' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
