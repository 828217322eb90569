"""Japanese, Korean and Cantonese frontends vs upstream GPT-SoVITS (text/japanese.py, korean.py,
cantonese.py through `text.cleaner.clean_text(text, lang, "v2")`), and language runs of mixed text vs
upstream's LangSegmenter.

The oracle runs in child processes (primespeech_devtools.oracle.text_cjk), with the same packages:
pyopenjtalk-plus, g2pk2 + python-mecab-ko, ToJyutping. The corpora (tests/data/{ja,ko,yue}_corpus.txt)
were written for this project: everyday sentences, each also with numbers, dates, times, prices,
percentages, Latin letters (ASCII and full-width), punctuation runs, and 20 long texts of 8 sentences.

Korean: the oracle package's korean.py (a fork of upstream's) adds a "phone units" consistency check that
upstream GPT-SoVITS does not have; it raises on 10 corpus texts (counted below). For those the oracle
reports upstream's own g2p, which is what upstream returns, and ours must equal it like every other text.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.text import clean_text, phones_to_ids, split_by_language
from dora_primespeech_mlx.text.language import lang_segments

DATA = Path(__file__).parent / "data"
LANGS = ("ja", "ko", "yue")
MIN_AGREEMENT = 0.99
# Texts where ours may differ from upstream, with the reason. Empty: every text agrees; a new
# difference, or agreement below MIN_AGREEMENT, fails the tests.
EXPECTED_DIFFERENCES: dict[str, dict[str, str]] = {"ja": {}, "ko": {}, "yue": {}}
# Texts upstream's fork refuses in its Korean phone-unit check (see the module docstring).
KOREAN_UNIT_CHECK_FAILURES = 10
# Edge cases added to each corpus: empty, marks only, digits only, Latin only, full-width and half-width
# forms, a percent sign, spaces of several kinds, a newline, Han characters beyond the zh range.
EDGE_CASES = ["", "。", "…", "!!??", "...", "123", "3.14", "Hello world", "ＡＢＣ１２３", "ｶﾀｶﾅ", "50%", "５０％",
              "a　b", "一\n二", "𠀋", "「」", "(x)", "100,000", "-5", "2024/01/02", "10:30"]


def _corpus(lang: str) -> list[str]:
    lines = (DATA / f"{lang}_corpus.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def _ours(text: str, lang: str) -> dict:
    try:
        phones, word2ph, norm_text = clean_text(text, lang, "v2")
        return {"phones": phones, "word2ph": word2ph, "norm_text": norm_text}
    except PrimeSpeechError as exc:
        return {"error": str(exc)}


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    out = {}
    for lang in LANGS:
        corpus = _corpus(lang)
        assert len(corpus) >= 200 and len(set(corpus)) == len(corpus)
        out[lang] = corpus + EDGE_CASES
    return out


@pytest.fixture(scope="module")
def reference(upstream, texts) -> dict[str, list[dict]]:
    from primespeech_devtools.oracle.text_cjk import upstream_cjk

    items = [(text, lang) for lang in LANGS for text in texts[lang]]
    answers = iter(upstream_cjk("clean", items))
    return {lang: [next(answers) for _ in texts[lang]] for lang in LANGS}


@pytest.mark.parametrize("lang", LANGS)
def test_frontend_matches_upstream(texts, reference, lang):
    diffs = {}
    for text, expected in zip(texts[lang], reference[lang], strict=True):
        expected = {k: v for k, v in expected.items() if k != "unit_error"}
        ours = _ours(text, lang)
        if ("error" in ours) != ("error" in expected) or ("error" not in ours and ours != expected):
            diffs[text] = f"ours {ours} upstream {expected}"
    agreement = 1 - len(diffs) / len(texts[lang])
    unexpected = {t: d for t, d in diffs.items() if t not in EXPECTED_DIFFERENCES[lang]}
    assert not unexpected, "\n".join(f"{t!r}: {d}" for t, d in unexpected.items())
    assert agreement >= MIN_AGREEMENT
    corpus = reference[lang][: -len(EDGE_CASES)]
    assert not any("error" in r for r in corpus), "the corpus should be speakable upstream"
    failures = sum("unit_error" in r for r in reference[lang])
    assert failures == (KOREAN_UNIT_CHECK_FAILURES if lang == "ko" else 0)


@pytest.mark.parametrize("lang", LANGS)
def test_phones_have_v2_ids(texts, lang):
    for text in texts[lang][:60]:
        phones, word2ph, norm_text = clean_text(text, lang, "v2")
        assert len(phones_to_ids(phones, "v2")) == len(phones)
        if lang == "yue":
            assert len(word2ph) == len(norm_text) and sum(word2ph) == len(phones)
        else:
            assert word2ph is None


def test_v1_reads_japanese_but_not_korean_or_cantonese():
    # upstream's v1 cleaner knows zh/ja/en only: anything else is read as an English " "
    assert clean_text("안녕하세요", "ko", "v1") == clean_text(" ", "en", "v1")
    assert clean_text("你好", "yue", "v1") == clean_text(" ", "en", "v1")
    phones, _, _ = clean_text("こんにちは", "ja", "v1")
    assert phones == ["k", "o", "UNK", "N", "n", "i", "ch", "i", "w", "a"]  # "[" is not a v1 symbol


def test_no_network_and_no_pip_at_first_use(tmp_path):
    """A fresh interpreter with sockets and subprocesses forbidden reads all three languages: nothing is
    downloaded (pyopenjtalk-plus bundles its dictionary, g2pk2 never reaches nltk.download) and nothing
    is pip-installed (g2pk2's check_mecab is never called)."""
    import subprocess
    import sys

    script = tmp_path / "offline.py"
    script.write_text(
        "import socket, subprocess, os\n"
        "def refuse(*a, **k):\n    raise RuntimeError('network or subprocess used')\n"
        "socket.socket.connect = refuse\nsocket.create_connection = refuse\n"
        "subprocess.Popen.__init__ = refuse\nos.system = refuse\n"
        "from dora_primespeech_mlx.text import clean_text\n"
        "for text, lang in [('今日はいい天気。', 'ja'), ('안녕하세요 ABC 3개', 'ko'), ('你食咗飯未呀？', 'yue')]:\n"
        "    print(len(clean_text(text, lang)[0]))\n"
        "import sys\nprint('nltk' in sys.modules)\n",
        encoding="utf-8")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in __import__("os").environ.items() if k != "NLTK_DATA"})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split()
    assert all(int(n) > 3 for n in lines[:3]) and lines[3] == "False"  # nltk is never imported


def test_missing_packages_name_the_extra(monkeypatch):
    import sys

    from dora_primespeech_mlx.text import cantonese, japanese, korean

    monkeypatch.setattr(japanese, "_OPENJTALK", [])
    monkeypatch.setattr(korean, "_G2PK2", [])
    for name in ("pyopenjtalk", "mecab", "ToJyutping"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    for module, text in ((japanese, "テスト"), (korean, "테스트"), (cantonese, "测试")):
        with pytest.raises(PrimeSpeechError, match=r"dora-primespeech-mlx\[cjk\]"):
            module.g2p(text)


# -- language runs of mixed text ---------------------------------------------------------------------------
MIXED = [
    "私はAppleのiPhoneを使っています。", "今日はGoogleで検索した。", "このUSB-Cケーブルは2メートルです。",
    "Hello、元気ですか？", "OKです！", "NHKのニュースを見ましたか？", "明日10:30にmeetingがあります。",
    "DNAの研究は面白い。", "価格は$100です。", "YouTubeで動画を見る。", "日本語と中文とEnglish。",
    "これは2024年の話です", "会議は午後3時から始まります。", "漢字だけ", "ねこ and いぬ",
    "저는 iPhone을 씁니다.", "안녕하세요, 저는 학생입니다. Hello!", "AI 기술이 발전하고 있어요.", "한국어 123 테스트",
    "KBS 뉴스를 봤어요?", "Wi-Fi 비밀번호가 뭐예요?", "오늘은 2024년 3월 15일입니다.", "Google과 Apple의 경쟁.",
    "我今日去咗街市買餸。", "我用緊iPhone。", "佢講嘢好好笑，LOL！", "聽日10:30開會。", "OK，冇問題。",
    "我爱你，あいしてる，사랑해。", "中文、日本語、한국어 and English.", "東京は日本の首都です。",
    "北京是中国的首都，서울은 한국의 수도입니다。", "Apple、りんご、사과、苹果。", "第1章：はじめに",
    "3つのapple", "1,000円", "100%", "「こんにちは」と言った。", "（笑）まじで？", "ソウルに行きたい！서울!",
    "這個PS5好貴呀，要3000幾蚊。", "Let's go！行くぞ！", "가나다 ABC あいう 你好 123",
]
# Where the language-id model decides and our script rule differs (see text/language.py). split-lang cuts
# a Han/kana stretch into budoux phrases and asks the model about each phrase without kana; here a Han run
# is Japanese when its stretch has kana, Chinese otherwise. Only texts without a default language differ
# (with one, every non-English run takes it); 35 of 43 agree.
_KANJI_CALLED_JA = "the model calls a kana-less Han run Japanese; ours: Chinese"
DIVERGENT: dict[tuple[str, str], str] = {
    ("明日10:30にmeetingがあります。", ""): _KANJI_CALLED_JA + " (明日, cut off its kana by the digits)",
    ("聽日10:30開會。", ""): _KANJI_CALLED_JA + " (聽日, Cantonese)",
    ("OK，冇問題。", ""): _KANJI_CALLED_JA + " (冇問題, Cantonese)",
    ("中文、日本語、한국어 and English.", ""): _KANJI_CALLED_JA + " (日本語)",
    ("第1章：はじめに", ""): _KANJI_CALLED_JA + " (第, 章)",
    ("1,000円", ""): _KANJI_CALLED_JA + " (円)",
    ("（笑）まじで？", ""): _KANJI_CALLED_JA + " (笑)",
    ("가나다 ABC あいう 你好 123", ""): "the model calls the phrase 你好 after あいう Chinese; ours: one Japanese "
                                      "stretch (a space does not cut a Han/kana stretch)",
}


@pytest.fixture(scope="module")
def upstream_runs(upstream) -> dict[tuple[str, str], list[tuple[str, str]]]:
    from primespeech_devtools.oracle.text_cjk import upstream_cjk

    items = [(text, default) for default in ("", "ja", "ko", "zh") for text in MIXED]
    answers = upstream_cjk("segments", items)
    return {item: [tuple(run) for run in runs] for item, runs in zip(items, answers, strict=True)}


def test_runs_match_upstream(upstream_runs):
    diffs = {}
    for (text, default), expected in upstream_runs.items():
        ours = lang_segments(text, default)
        if ours != expected and (text, default) not in DIVERGENT:
            diffs[(text, default)] = f"ours {ours} upstream {expected}"
    assert not diffs, "\n".join(f"{k!r}: {d}" for k, d in diffs.items())
    for key in DIVERGENT:
        assert lang_segments(*key) != upstream_runs[key], f"{key!r} now agrees: remove it from DIVERGENT"


def test_modes_label_runs_as_upstream():
    text = "私はAppleのiPhoneを使っています。"
    assert split_by_language(text, "auto") == [
        ("ja", "私は"), ("en", "Apple"), ("ja", "の"), ("en", "iPhone"), ("ja", "を使っています。")]
    # ja/ko/yue: English runs vs the rest, labelled with the mode (upstream's else branch)
    assert split_by_language("我用緊iPhone。", "yue") == [("yue", "我用緊"), ("en", "iPhone。")]
    assert split_by_language("東京 and 大阪", "ja") == [("ja", "東京 "), ("en", "and "), ("ja", "大阪")]
    # auto_yue: Chinese runs are Cantonese, the others keep their language
    assert split_by_language("我今日好開心，あいしてる，OK！", "auto_yue") == [
        ("yue", "我今日好開心，"), ("ja", "あいしてる，"), ("en", "OK！")]
    # all_*: everything but full-English runs in that language; all_yue is all_zh relabelled
    assert split_by_language("价格是100元，OK。", "all_yue") == [("yue", "价格是100元，"), ("en", "OK。")]
    assert split_by_language("안녕 ABC 123", "all_ko") == [("ko", "안녕 "), ("en", "ABC "), ("ko", "123")]
    assert split_by_language("3つのapple", "all_ja") == [("ja", "3つの"), ("en", "apple")]
