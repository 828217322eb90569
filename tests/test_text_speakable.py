"""Text in a script no frontend reads is dropped and reported, not spoken (`text.drop_unspeakable`, used by
`TextPipeline.prepare`). Before, such text reached the frontends, which kept only its punctuation: one "."
phone, synthesised as ~2 s of babble."""

from __future__ import annotations

from pathlib import Path

import pytest

from dora_primespeech_mlx.pipeline import TextPipeline
from dora_primespeech_mlx.text import drop_unspeakable, prepare_segments, split_by_language

DATA = Path(__file__).parent / "data"
MODES = ("auto", "zh", "all_zh", "en")
# text -> what drop_unspeakable reports (the whole text: nothing in it is speakable)
UNSPEAKABLE = {
    "arabic": ("مرحبا بالعالم", ("مرحبا بالعالم",)),
    "cyrillic": ("Привет, мир!", ("Привет, мир",)),
    "thai": ("สวัสดีครับ", ("สวัสดีครับ",)),
    "devanagari": ("नमस्ते दुनिया १२३", ("नमस्ते दुनिया १२३",)),
    "greek": ("Γειά σου Κόσμε", ("Γειά σου Κόσμε",)),
    "lone omega": ("Ω", ("Ω",)),
    "full-width latin": ("ＡＢＣ", ("ＡＢＣ",)),
}


@pytest.fixture(scope="module")
def pipeline():
    return TextPipeline()  # no g2pW folder: pypinyin; no model is touched


def _lines(name: str) -> list[str]:
    text = (DATA / name).read_text(encoding="utf-8")
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(UNSPEAKABLE))
def test_scripts_no_frontend_reads(name, mode):
    text, dropped = UNSPEAKABLE[name]
    if name == "lone omega" and mode == "all_zh":  # all_zh hands it to the Chinese normaliser: 欧米伽
        assert drop_unspeakable(text, mode) == (text, ())
        return
    assert drop_unspeakable(text, mode) == ("", dropped)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(UNSPEAKABLE))
def test_unspeakable_text_gives_no_segment(pipeline, name, mode):
    text, _ = UNSPEAKABLE[name]
    prepared = pipeline.prepare(text, mode)
    if name == "lone omega" and mode == "all_zh":
        assert [p.norm_text for p in prepared.segments[0].pieces] == ["欧米伽."]
        return
    assert prepared.segments == []
    letters = [c for c in text if c.isalnum()]
    assert [c for c in "".join(prepared.dropped) if c.isalnum()] == letters  # all of it reported, in order


def test_the_babble_case():
    # the frontend alone still turns Cyrillic into a lone stop (upstream does the same); the pipeline drops it
    assert split_by_language(prepare_segments("Привет мир", "auto", "cut5")[0], "auto") == [("zh", " 。")]
    prepared = TextPipeline().prepare("Привет мир", "auto")
    assert prepared.segments == [] and prepared.dropped == ("Привет мир",)
    # cut5 cuts it in two: each segment reports its own run
    assert TextPipeline().prepare("Привет, мир!", "auto").dropped == ("Привет", "мир")


@pytest.mark.parametrize("mode", ["auto", "zh"])
def test_mixed_text_speaks_the_speakable_part(pipeline, mode):
    prepared = pipeline.prepare("你好 Привет world", mode)
    assert prepared.dropped == ("Привет",)
    [segment] = prepared.segments
    assert [(p.lang, p.norm_text) for p in segment.pieces] == [("zh", "你好"), ("en", "world.")]
    assert "Привет" not in segment.text


def test_mixed_text_in_english_mode(pipeline):
    prepared = pipeline.prepare("你好 Привет world", "en")
    assert prepared.dropped == ("你好 Привет",)  # Chinese is not read in English mode either
    assert [(p.lang, p.norm_text) for p in prepared.segments[0].pieces] == [("en", ". world.")]  # < 6 phones: "." added


def test_latin_letters_with_accents_stay_english():
    assert drop_unspeakable("café和咖啡", "auto") == ("café和咖啡", ())
    assert drop_unspeakable("naïve idea", "en") == ("naïve idea", ())
    # a letter English drops is reported; the phones are those the English frontend made before
    assert drop_unspeakable("straße", "en") == ("strae", ("ß",))
    pipeline = TextPipeline()
    old = pipeline.phonemize(prepare_segments("straße", "en", "cut5")[0], "en").phones
    assert pipeline.prepare("straße", "en").segments[0].phones == old
    # all_zh sends a word with an accented letter to the Chinese frontend, which drops the whole word
    assert drop_unspeakable("café au lait", "all_zh") == (" au lait", ("café",))


def test_greek_letters_as_symbols_beside_chinese():
    # the Chinese normaliser reads a lone Greek letter (α -> 阿尔法): left to it, as before
    assert drop_unspeakable("角度α等于", "auto") == ("角度α等于", ())
    norm = TextPipeline().prepare("角度α等于九十度", "auto").segments[0].norm_text
    assert norm.startswith("角度阿尔法等于")


# kana and Hangul: read in auto and in their own modes, dropped where no Japanese or Korean reader runs
KANA_HANGUL = {"hangul jamo": "ㅋㅋㅋ", "hangul": "안녕하세요", "kana": "こんにちは"}


@pytest.mark.parametrize("name", list(KANA_HANGUL))
@pytest.mark.parametrize("mode", ("auto", "auto_yue", "zh", "all_zh", "en", "ja", "all_ja", "ko", "yue", "all_yue"))
def test_kana_and_hangul_where_a_frontend_reads_them(name, mode):
    text = KANA_HANGUL[name]
    read = mode in ("auto", "auto_yue") or mode.endswith("ja" if name == "kana" else "ko")
    assert drop_unspeakable(text, mode) == ((text, ()) if read else ("", (text,)))


def test_japanese_and_korean():
    pipeline = TextPipeline()
    # zh mode has no Japanese or Korean reader: kana and Hangul are dropped, the Chinese characters read
    prepared = pipeline.prepare("你好こんにちは", "zh")
    assert prepared.dropped == ("こんにちは",) and prepared.segments[0].norm_text == ".你好."
    assert pipeline.prepare("안녕하세요 hello there", "en").dropped == ("안녕하세요",)
    # ja, ko, auto read them
    assert [p.lang for p in pipeline.prepare("こんにちは。", "ja").segments[0].pieces] == ["ja"]
    assert [p.lang for p in pipeline.prepare("안녕하세요 hello there", "auto").segments[0].pieces] == ["ko", "en"]


def test_marks_only_segments_are_not_spoken(pipeline):
    # upstream's split of an over-long run leaves a lone "。" segment: nothing to speak, nothing dropped
    assert prepare_segments("字" * 600, "zh", "cut0")[-1] == "。"
    prepared = pipeline.prepare("字" * 600, "zh", "cut0")
    assert prepared.dropped == () and all(any("\u4e00" <= c <= "\u9fff" for c in s.text) for s in prepared.segments)


def test_speakable_corpora_come_back_unchanged():
    """Every corpus line is left as it is, except the few with text the frontends drop."""
    changed = {}
    for name, modes in (("zh_corpus.txt", ("auto", "zh", "all_zh")), ("en_corpus.txt", ("auto", "zh", "en"))):
        for line in _lines(name):
            for mode in modes:
                result = drop_unspeakable(line, mode)
                if result != (line, ()):
                    changed.setdefault(line, set()).add(result)
    assert changed == {
        "ＡＢＣ三个字母。": {("三个字母。", ("ＡＢＣ",))},
        "这是日文：こんにちは，还有韩文：안녕하세요。": {("这是日文：，还有韩文：。", ("こんにちは", "안녕하세요"))},
        "！！！": {("", ())}, "……": {("", ())}, "。": {("", ())},  # marks only
    }


def test_speakable_text_keeps_upstreams_segments(pipeline):
    lines = _lines("zh_corpus.txt")[::60] + _lines("en_corpus.txt")[::60]
    for text in lines + ["".join(lines[:6]), " ".join(lines[-6:])]:
        for mode in ("auto", "zh"):
            prepared = pipeline.prepare(text, mode)
            assert [s.text for s in prepared.segments] == prepare_segments(text, mode, "cut5")
            assert prepared.dropped == ()
