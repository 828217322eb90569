"""The engine on the random-weight test voice: fragments, empty text, streaming order, cancellation, caches.

Upstream parity of the whole pipeline is in test_engine_parity.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from dora_primespeech_mlx.engine import (
    MAX_SAMPLE,
    Cancelled,
    EmptyTextError,
    SynthesisOptions,
    Synthesizer,
    finish_fragment,
    kept_codes,
)
from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.voices import VoiceRegistry

THREE_SEGMENTS = "今天天气很好。我们去公园散步吧！晚上再回家吃饭。"


# -- pure functions --------------------------------------------------------------------------------------
def test_finish_fragment_peak_fade_silence():
    loud = np.array([0.5, -2.0, 1.0, 0.25], dtype=np.float32)
    out = finish_fragment(loud, np.zeros(3, np.float32))
    np.testing.assert_array_equal(out, [0.25, -1.0, 0.5, 0.125, 0, 0, 0])  # divided by the peak 2
    quiet = np.full(100, 0.5, dtype=np.float32)
    np.testing.assert_array_equal(finish_fragment(quiet, np.zeros(0, np.float32)), quiet)  # peak <= 1: as is
    faded = finish_fragment(np.ones(100, np.float32), np.zeros(5, np.float32), fade=10)
    assert faded.dtype == np.float32 and faded.shape == (105,)
    assert 0 < faded[0] < 0.05 and 0 < faded[99] < 0.05 and faded[50] == MAX_SAMPLE  # clipped below 1
    assert np.all(np.diff(faded[:10]) > 0) and np.all(faded[100:] == 0)


def test_kept_codes_follows_upstreams_slice():
    codes = list(range(10, 62))
    assert kept_codes(codes[:30], early_stop_num=50, max_tokens=1500) == codes[:30]  # stopped by EOS
    assert kept_codes(codes[:51], early_stop_num=50, max_tokens=1500) == codes[1:51]  # stopped by the limit
    assert kept_codes(codes[:8], early_stop_num=-1, max_tokens=8) == codes[1:8]  # stopped by the step cap
    assert kept_codes([0], early_stop_num=50, max_tokens=1) == [0]


# -- on the test voice ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def voice_files():
    from primespeech_devtools.oracle.voice import shared_test_voice

    return shared_test_voice()


@pytest.fixture(scope="module")
def engine(voice_files):
    engine = Synthesizer(voice_files.model_root, registry=VoiceRegistry(voice_files.model_root))
    engine.load_voice(engine.registry.get("test"))
    return engine


@pytest.fixture
def short_t2s(monkeypatch):
    """Spy on batched T2S generation (capped at 12 steps to keep the tests quick): records one entry per
    row, with the size of the batch it ran in."""
    from dora_primespeech_mlx.models import generate

    real = generate.generate
    calls = []

    def spy(model, rows, prompt, **kwargs):
        for (phones, _), seed in zip(rows, kwargs["seeds"], strict=True):
            calls.append({"seed": seed, "phones": list(phones), "prompt": prompt, "batch": len(rows)})
        kwargs["max_tokens"] = min(kwargs.get("max_tokens", 1500), 12)
        return real(model, rows, prompt, **kwargs)

    monkeypatch.setattr(generate, "generate", spy)
    return calls


def test_engine_reports_device_and_backend(engine):
    assert engine.device == "cpu" and engine.encoder_backend == "mlx"


@pytest.mark.parametrize("text", ["", "   ", "。！？", "……，，", "\n\n"])
def test_text_without_phonemes_is_an_error_not_silence(engine, short_t2s, text):
    with pytest.raises(EmptyTextError):
        engine.synthesize(text, engine.registry.get("test"), SynthesisOptions(text_lang="zh"))
    assert short_t2s == []


def test_unsupported_language_and_bad_options(engine):
    voice = engine.registry.get("test")
    with pytest.raises(PrimeSpeechError, match="unknown language mode"):
        engine.synthesize("bonjour", voice, SynthesisOptions(text_lang="fr"))
    with pytest.raises(PrimeSpeechError, match="speed must be positive"):
        engine.synthesize("你好。", voice, SynthesisOptions(speed=0))
    with pytest.raises(PrimeSpeechError, match="unknown voice"):
        engine.registry.get("nobody")


def test_stream_yields_first_piece_before_the_rest_is_computed(engine, short_t2s):
    voice = engine.registry.get("test")
    options = SynthesisOptions(text_lang="zh", fragment_interval=0.3, stream_chunk=0)  # whole segments
    stream = engine.stream(THREE_SEGMENTS, voice, options)
    first = next(stream)
    assert len(short_t2s) == 1  # only the first segment's codes exist so far
    assert first.segment_index == 0 and not first.is_last and first.text == "今天天气很好。"
    rest = list(stream)
    assert len(short_t2s) == 3 and [r.segment_index for r in rest] == [1, 2] and rest[-1].is_last
    pieces = [first, *rest]
    for piece in pieces:
        assert piece.sample_rate == 32000 and piece.audio.dtype == np.float32
        assert -1.0 <= piece.audio.min() and piece.audio.max() <= MAX_SAMPLE
        assert np.all(piece.audio[-int(0.3 * 32000):] == 0)  # the fragment interval
        assert abs(piece.audio[0]) < 1e-3  # faded in: no step from the previous piece's silence
        assert set(piece.timings) == {"frontend", "t2s", "sovits", "total"} and piece.real_time_factor > 0
    assert [c["seed"] for c in short_t2s] == [233333, 233334, 233335]  # one seed per segment
    assert [c["batch"] for c in short_t2s] == [1, 2, 2]  # streaming grows its batches
    whole = engine.synthesize(THREE_SEGMENTS, voice, options)  # one batch, same seeds per segment: same audio
    assert [c["batch"] for c in short_t2s[3:]] == [3, 3, 3]
    np.testing.assert_array_equal(whole.audio, np.concatenate([p.audio for p in pieces]))
    assert whole.is_last and whole.text == THREE_SEGMENTS


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed-length", "mute-split"])
def test_stream_sends_the_first_segment_in_chunks(engine, short_t2s, fixed):
    """Streaming mode: the first segment's codes go out in chunks while T2S runs (the test voice makes
    51 codes per segment), the later segments in growing batches."""
    voice = engine.registry.get("test")
    options = SynthesisOptions(text_lang="zh", fragment_interval=0.3, stream_chunk=16, fixed_length_chunk=fixed)
    pieces = list(engine.stream(THREE_SEGMENTS, voice, options))
    first = [p for p in pieces if p.segment_index == 0]
    assert [p.segment_index for p in pieces[len(first):]] == [1, 2] and pieces[-1].is_last
    assert [c["batch"] for c in short_t2s] == [2, 2]  # segment 0 never went through the batch
    if fixed:
        assert len(first) == 4  # 16 + 16 + 16 + 3 codes
    assert len(first) >= 2 and not any(p.is_last for p in first)
    per_code = 1280 / voice.speed  # samples per 25 Hz code at the voice's speed
    assert first[0].audio.shape[0] < 20 * per_code  # out after its own codes, not the segment's 51
    assert first[0].text == "今天天气很好。" and all(p.text == "" for p in first[1:])
    assert abs(first[0].audio[0]) < 1e-3 and np.all(first[-1].audio[-int(0.3 * 32000):] == 0)
    spoken = sum(p.audio.shape[0] for p in first) - int(0.3 * 32000)
    assert abs(spoken - 51 * per_code) < 4 * per_code  # every code spoken once (SOLA shifts a few samples)
    joined = np.concatenate([p.audio for p in first])
    assert np.all(np.isfinite(joined)) and -1.0 <= joined.min() and joined.max() <= MAX_SAMPLE


def test_cancellation_at_segment_boundaries(engine, short_t2s):
    voice = engine.registry.get("test")
    with pytest.raises(Cancelled):
        engine.synthesize(THREE_SEGMENTS, voice, SynthesisOptions(text_lang="zh"), should_cancel=lambda: True)
    assert short_t2s == []
    polls = []

    def after_first_piece():
        polls.append(1)
        return len(polls) > 1

    stream = engine.stream(THREE_SEGMENTS, voice, SynthesisOptions(text_lang="zh", stream_chunk=0),
                           should_cancel=after_first_piece)
    next(stream)
    with pytest.raises(Cancelled):
        next(stream)
    assert len(short_t2s) == 1
    # streaming chunks: polled before the segment, then every CANCEL_POLL_CODES codes inside it
    polls.clear()
    stream = engine.stream(THREE_SEGMENTS, voice, SynthesisOptions(text_lang="zh", stream_chunk=16),
                           should_cancel=after_first_piece)
    assert next(stream).segment_index == 0 and len(polls) == 1
    with pytest.raises(Cancelled):
        next(stream)
    assert len(polls) == 2 and len(short_t2s) == 1


def test_cancellation_inside_a_long_segment(engine, monkeypatch):
    from dora_primespeech_mlx import engine as engine_module

    monkeypatch.setattr(engine_module, "CANCEL_POLL_CODES", 5)
    polls = []

    def on_second_poll():
        polls.append(1)
        return len(polls) == 2  # the first poll is before the segment, the second after 5 codes

    with pytest.raises(Cancelled):
        engine.synthesize("你好。", engine.registry.get("test"), SynthesisOptions(text_lang="zh"),
                          should_cancel=on_second_poll)
    assert len(polls) == 2


def test_speed_prompt_and_language_options(engine, short_t2s):
    from dataclasses import replace

    voice = engine.registry.get("test")
    base = SynthesisOptions(text_lang="zh", noise_scale=0.0, top_k=1, fragment_interval=0.0)
    normal = engine.synthesize("你好，世界。", voice, base).audio
    fast = engine.synthesize("你好，世界。", voice, replace(base, speed=2.0)).audio
    assert fast.shape[0] < 0.6 * normal.shape[0]  # the decoder's length scales with 1 / speed
    engine.synthesize("你好，世界。", voice, replace(base, prompt_text="完全不同的参考文本。"))
    english = engine.synthesize("Hello world, how are you?", voice, replace(base, text_lang="en")).audio
    assert english.shape[0] > 0
    # T2S gets the transcript's phones + the target's, and the reference clip's codes whatever the transcript
    pipeline = engine._get_pipeline()
    target = pipeline.prepare("你好，世界。", "zh").segments[0].phones
    english_target = pipeline.prepare("Hello world, how are you?", "en").segments[0].phones
    own, other, en = short_t2s[0]["phones"], short_t2s[2]["phones"], short_t2s[3]["phones"]
    assert own[-len(target):] == other[-len(target):] == target
    assert en[-len(english_target):] == english_target and en[: -len(english_target)] == own[: -len(target)]
    assert other[: -len(target)] == pipeline.phonemize("完全不同的参考文本。", "zh").phones != own[: -len(target)]
    np.testing.assert_array_equal(short_t2s[0]["prompt"], short_t2s[2]["prompt"])


def test_voice_models_are_cached_and_bounded(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from dora_primespeech_mlx import loading

    loads = []

    def load_model(kind, path):
        if kind == "sovits":
            return SimpleNamespace(version="v2")
        loads.append(path)
        return SimpleNamespace(args=SimpleNamespace(early_stop_num=2700))

    monkeypatch.setattr(loading, "load_model", load_model)
    reg = VoiceRegistry(tmp_path)
    for name in ("Maple", "Cove", "Ellen"):
        voice = reg.get(name)
        for path in (voice.gpt_path, voice.sovits_path):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    engine = Synthesizer(tmp_path, registry=reg, max_loaded_voices=2)
    for name in ("Maple", "Cove", "Maple", "Ellen", "Maple", "Cove"):
        assert engine._models(reg.get(name)).early_stop_num == 2700
    assert [p.name for p in loads] == ["maple_best_gpt.ckpt", "cove_best_gpt.ckpt", "ellen_best_gpt.ckpt",
                                       "cove_best_gpt.ckpt"]
    with pytest.raises(PrimeSpeechError, match="primespeech-mlx download --voice \"Trump\""):
        engine._models(reg.get("Trump"))


def test_missing_reference_audio(engine, tmp_path):
    from dataclasses import replace

    voice = replace(engine.registry.get("test"), ref_audio=tmp_path / "gone.wav")
    with pytest.raises(PrimeSpeechError, match="reference audio not found"):
        engine.synthesize("你好。", voice)
    with pytest.raises(EmptyTextError):  # the text is looked at first: empty is empty, whatever the voice
        engine.synthesize("。", replace(voice, gpt_path=tmp_path / "gone.ckpt"))


def test_auxiliary_references_reach_every_decode(engine, short_t2s, tmp_path, monkeypatch):
    """A voice's aux_ref_audio_paths: every decode gets the reference's spectrogram and the auxiliary
    ones (SoVITS averages their styles, as upstream), the prompt codes come from the reference alone;
    a missing auxiliary clip is named. (Upstream parity with an auxiliary clip: test_engine_v2pro.py.)"""
    from dataclasses import replace

    from dora_primespeech_mlx.audio import prepare_reference_spectrogram
    from dora_primespeech_mlx.models.sovits import Model
    from primespeech_devtools.oracle.voice import SAMPLE_RATE, _write_pcm16, synthetic_reference

    aux = tmp_path / "aux.wav"
    _write_pcm16(aux, synthetic_reference(5.0, seed=7), SAMPLE_RATE)
    voice = engine.registry.get("test")
    specs = []
    real = Model.decode_batch
    monkeypatch.setattr(Model, "decode_batch", lambda self, rows, refer_spec, **kw: specs.append(refer_spec)
                        or real(self, rows, refer_spec, **kw))
    options = SynthesisOptions(text_lang="zh", noise_scale=0.0, seed=1)
    single = engine.synthesize("你好。", voice, options).audio
    both = engine.synthesize("你好。", replace(voice, aux_ref_audios=(aux,)), options).audio
    assert isinstance(specs[0], np.ndarray) and len(specs[1]) == 2
    np.testing.assert_array_equal(specs[1][0], specs[0])
    np.testing.assert_allclose(specs[1][1], prepare_reference_spectrogram(aux))
    assert short_t2s[0]["prompt"] is short_t2s[1]["prompt"]  # same cached prompt codes
    assert single.shape == both.shape and not np.allclose(single, both, atol=1e-3)  # the styles averaged
    with pytest.raises(PrimeSpeechError, match="reference audio not found at .*gone.wav"):
        engine.synthesize("你好。", replace(voice, aux_ref_audios=(tmp_path / "gone.wav",)), options)


def test_warmup_runs_every_stage(engine):
    engine.warmup(engine.registry.get("test"))


def test_warmup_speaks_the_voice_language(engine, monkeypatch, caplog):
    """A Japanese voice warms its frontend up with Japanese; a frontend that cannot run (its extra
    missing) falls back to Chinese instead of failing the voice."""
    from dataclasses import replace

    from dora_primespeech_mlx.engine import warmup_language

    assert [warmup_language(m) for m in ("auto", "auto_yue", "all_ja", "ko", "en", "all_zh")] == \
        ["zh", "yue", "ja", "ko", "en", "zh"]
    warmed = []
    monkeypatch.setattr(engine, "_warm", lambda voice, lang: warmed.append(lang))
    voice = engine.registry.get("test")
    engine.warmup(replace(voice, text_lang="all_ja"))
    assert warmed == ["ja"]

    def no_korean(voice, lang):
        warmed.append(lang)
        if lang == "ko":
            raise PrimeSpeechError("Korean text needs the cjk extra")

    monkeypatch.setattr(engine, "_warm", no_korean)
    with caplog.at_level("WARNING", logger="dora_primespeech_mlx.engine"):
        engine.warmup(replace(voice, text_lang="ko"))
    assert warmed[1:] == ["ko", "zh"] and "cjk extra" in caplog.text



# -- text no frontend speaks, text that cannot fit ----------------------------------------------------------
@pytest.mark.parametrize("text", ["Привет, мир!", "مرحبا بالعالم", "გამარჯობა", "Ω", "สวัสดี"])  # (Hangul is read now)
def test_unspeakable_text_is_empty_not_babble(engine, short_t2s, text):
    voice = engine.registry.get("test")
    with pytest.raises(EmptyTextError, match="unspeakable") as raised:
        engine.synthesize(text, voice, SynthesisOptions(text_lang="auto"))
    assert raised.value.dropped and all(piece in text for piece in raised.value.dropped)
    with pytest.raises(EmptyTextError):
        next(engine.stream(text, voice, SynthesisOptions(text_lang="auto")))
    assert short_t2s == []


def test_dropped_text_is_reported_on_the_first_result(engine, short_t2s, caplog):
    voice = engine.registry.get("test")
    text = "你好 Привет world，Ελληνικά 今天天气很好。"
    with caplog.at_level("WARNING", logger="dora_primespeech_mlx.engine"):
        whole = engine.synthesize(text, voice, SynthesisOptions(text_lang="auto"))
    assert whole.dropped == ("Привет", "Ελληνικά") and "'Привет', 'Ελληνικά'" in caplog.text
    assert whole.text == "你好  world， 今天天气很好。"
    pieces = list(engine.stream(text, voice, SynthesisOptions(text_lang="auto")))  # first segment in chunks
    assert pieces[0].segment_index == 0 and pieces[0].dropped == ("Привет", "Ελληνικά")
    assert len(pieces) > 2 and all(p.dropped == () for p in pieces[1:])


@pytest.mark.parametrize("chunk", [0, 16])
def test_stream_raises_before_its_first_result(engine, short_t2s, monkeypatch, chunk):
    """An error that depends on the text alone comes before any audio: the second segment here cannot fit
    BERT (its limit lowered to 2 characters, and "Ω" reads 欧米伽 in all_zh); the first is English."""
    from dora_primespeech_mlx import pipeline as pipeline_module
    from dora_primespeech_mlx.models import generate

    streamed = []
    monkeypatch.setattr(generate, "generate_step", lambda *a, **k: streamed.append(1) or iter([([0], [1])]))
    monkeypatch.setattr(pipeline_module, "BERT_MAX_CHARS", 2)
    stream = engine.stream("Hello there friend, Ω, how are you?", engine.registry.get("test"),
                           SynthesisOptions(text_lang="all_zh", stream_chunk=chunk))
    with pytest.raises(PrimeSpeechError, match="text too long to synthesise: 6 BERT tokens, at most 4"):
        next(stream)
    assert short_t2s == [] and streamed == []


def test_long_text_without_punctuation_fits_bert(engine):
    """800 Chinese characters (with numbers) without a mark were one segment, which RoBERTa refused (802
    tokens, at most 512); now each segment's Chinese pieces tokenise within the limit, one token a character."""
    tokenizer = engine.encoders.roberta_tokenizer()
    text = "今天天气很好我们去公园散步吧晚上再回家吃饭" * 30 + "2024年12月31日共有1234567人" * 5
    for segment in engine._get_pipeline().prepare(text, "zh").segments:
        for piece in (p for p in segment.pieces if p.lang == "zh"):
            assert len(tokenizer.encode(piece.norm_text).ids) == len(piece.norm_text) + 2 <= 512


def test_sovits_passes_batch_segments_on_a_gpu(engine, short_t2s, monkeypatch):
    """On a GPU a T2S batch's segments go through SoVITS together (up to SOVITS_BATCH_FRAMES padded
    frames a pass, the vocoder of a longer one window by window within it), on the CPU one by one
    (no windows); the audio is the same either way (decode_batch is exact)."""
    from dora_primespeech_mlx import engine as engine_module
    from dora_primespeech_mlx.models.sovits import Model

    voice = engine.registry.get("test")
    passes = []
    real = Model.decode_batch
    monkeypatch.setattr(Model, "decode_batch", lambda self, rows, *a, **k: passes.append(
        (len(rows), k["vocoder_frames"])) or real(self, rows, *a, **k))
    options = SynthesisOptions(text_lang="zh", seed=5)
    on_cpu = engine.synthesize(THREE_SEGMENTS, voice, options)
    assert passes == [(1, None)] * 3
    passes.clear()
    monkeypatch.setattr(engine, "device", "gpu")
    on_gpu = engine.synthesize(THREE_SEGMENTS, voice, options)
    assert passes == [(3, engine_module.SOVITS_BATCH_FRAMES)]
    assert on_gpu.audio.shape == on_cpu.audio.shape
    assert np.abs(on_gpu.audio - on_cpu.audio).max() <= 1e-5
    passes.clear()
    monkeypatch.setattr(engine_module, "SOVITS_BATCH_FRAMES", 2 * 12 * 2)  # room for two 12-code rows a pass
    engine.synthesize(THREE_SEGMENTS, voice, options)
    assert passes == [(2, 48), (1, 48)]
    passes.clear()
    monkeypatch.setattr(engine_module, "SOVITS_BATCH_FRAMES", 9)  # every segment alone, in windows
    windowed = engine.synthesize(THREE_SEGMENTS, voice, options)
    assert passes == [(1, 9)] * 3
    assert np.abs(windowed.audio - on_cpu.audio).max() <= 1e-5


def test_hubert_is_not_kept_loaded(engine, short_t2s, tmp_path, caplog):
    """HuBERT runs once per reference clip (the codes stay cached, in memory and on disk): released after
    each use, loaded again for a new clip."""
    from primespeech_devtools.oracle.voice import SAMPLE_RATE, _write_pcm16, synthetic_reference

    voice = engine.registry.get("test")
    assert "hubert" not in engine.encoders._mlx  # the test voice's codes were computed at load
    clip = tmp_path / "new.wav"
    _write_pcm16(clip, synthetic_reference(4.0, seed=11), SAMPLE_RATE)
    custom = engine.registry.custom(clip, voice.prompt_text, "zh", gpt_path=voice.gpt_path,
                                    sovits_path=voice.sovits_path)
    with caplog.at_level("INFO", logger="dora_primespeech_mlx.engine"):
        assert engine.synthesize("你好。", custom, SynthesisOptions(text_lang="zh")).audio.size > 0
    assert any("new.wav" in r.getMessage() and "prompt codes" in r.getMessage() for r in caplog.records)
    assert "hubert" not in engine.encoders._mlx
