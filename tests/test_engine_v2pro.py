"""The engine with a v2ProPlus voice: text -> waveform against upstream's TTS.run flow, and the paths a
node takes (streaming, speed, a trained voice given by its files, the speaker model missing).

The voice is `oracle.voice.build_test_voice(version="v2ProPlus", aux_refs=1)`: full-size random weights
in the official formats (the SoVITS file with its `06` header, the speaker model as upstream's plain
state dict under moyoyo/sv/), sharing the test voice's encoders, with one auxiliary reference clip of
another synthetic speaker (upstream's aux_ref_audio_paths: both clips' spectrograms and embeddings
go to every decode, whose styles SoVITS averages). Upstream's side computes the reference's
embedding as `TTS._get_ref_spec` does (the peak-limited 32 kHz reference at 16 kHz, `compute_embedding3`),
resampling with soxr HQ as every other step of the oracle's flow does (upstream's PyAV is not installed
here). Greedy T2S, noise_scale 0, edge fades off: the codes of every segment identical, the waveform
within ATOL.
"""

from __future__ import annotations

import numpy as np
import pytest

ATOL = 1e-4  # absolute, on audio in [-1, 1]
TEXT = "你好，今天天气不错。我买了3个苹果！"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def voice_files(upstream):
    from primespeech_devtools.oracle.voice import shared_test_voice

    return shared_test_voice("pro", version="v2ProPlus", aux_refs=1)


@pytest.fixture(scope="module")
def oracle_result(voice_files):
    from primespeech_devtools.oracle.voice import oracle_subprocess, voice_job

    case = {"text": TEXT, "lang": "zh", "speed": 1.1, "top_k": 1, "noise_scale": 0.0, "fragment_interval": 0.07}
    return oracle_subprocess(voice_job(voice_files, cases=[case]))["results"][0]


@pytest.fixture(scope="module")
def engine(voice_files):
    from dora_primespeech_mlx.engine import Synthesizer
    from dora_primespeech_mlx.voices import VoiceRegistry

    engine = Synthesizer(voice_files.model_root, registry=VoiceRegistry(voice_files.model_root))
    return engine, engine.registry.get("pro")


def test_pipeline_matches_upstream(oracle_result, engine, monkeypatch):
    from dora_primespeech_mlx.engine import SynthesisOptions
    from dora_primespeech_mlx.models.sovits import Model

    decoded = []
    real_decode = Model.decode_batch

    def spy(self, rows, *args, **kwargs):
        decoded.extend((np.asarray(codes).tolist(), list(phones), kwargs.get("sv_emb")) for codes, phones in rows)
        return real_decode(self, rows, *args, **kwargs)

    monkeypatch.setattr(Model, "decode_batch", spy)
    synth, voice = engine
    options = SynthesisOptions(text_lang="zh", speed=1.1, top_k=1, noise_scale=0.0, edge_fade=0.0)
    audio = synth.synthesize(TEXT, voice, options).audio
    expected, details = oracle_result["audio"], oracle_result["details"]

    assert synth._voices[(str(voice.gpt_path), str(voice.sovits_path))].sovits.version == "v2ProPlus"
    assert len(decoded) == len(details) >= 2  # several segments, T2S batched
    for (codes, phones, sv_emb), want in zip(decoded, details, strict=True):
        assert phones == want["phones"], want["norm_text"]
        assert codes == want["codes"], want["norm_text"]
        assert len(set(codes)) > 10  # the random voice's greedy decoding is not degenerate
        assert len(sv_emb) == 2 and all(e.shape == (20480,) for e in sv_emb)  # reference + auxiliary
        assert not np.allclose(sv_emb[0], sv_emb[1])
    assert audio.shape == expected.shape
    assert np.std(expected) > 0.05  # informative, not ~0
    np.testing.assert_allclose(audio, np.minimum(expected, 32767 / 32768), rtol=0, atol=ATOL)


def test_streaming_speed_and_a_trained_voice(engine, monkeypatch):
    """RETURN_FRAGMENT's path (chunked streaming of the first segment, then batches) passes the
    embedding to every chunk; a speed change and a voice given by its files (VOICE:TRAINED) work."""
    from dora_primespeech_mlx.engine import SynthesisOptions
    from dora_primespeech_mlx.models.sovits import Model

    chunks = []
    real = Model.decode_streaming
    real_decode = Model.decode_batch

    def spy(self, *args, **kwargs):
        chunks.append(kwargs.get("sv_emb"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Model, "decode_streaming", spy)
    synth, voice = engine
    pieces = list(synth.stream("今天天气不错。", voice, SynthesisOptions(text_lang="zh", speed=1.3, stream_chunk=12)))
    assert len(chunks) >= 2 and all(len(c) == 2 and c[0].shape == (20480,) for c in chunks)
    assert len(pieces) >= len(chunks) - 1 and pieces[-1].is_last
    audio = np.concatenate([p.audio for p in pieces])
    assert np.isfinite(audio).all() and 0.01 < float(np.std(audio)) and np.abs(audio).max() <= 1.0

    trained = synth.registry.custom(voice.ref_audio, voice.prompt_text, "zh", gpt_path=voice.gpt_path,
                                    sovits_path=voice.sovits_path)
    assert trained.aux_ref_audios == ()  # a voice given by its files: its one clip
    decoded = []
    monkeypatch.setattr(Model, "decode_batch",
                        lambda self, *a, **k: decoded.append(k["sv_emb"]) or real_decode(self, *a, **k))
    result = synth.synthesize("再见。", trained, SynthesisOptions(text_lang="zh"))
    assert result.audio.size > 0 and np.isfinite(result.audio).all()
    assert decoded and all(e.shape == (20480,) for e in decoded)


def test_missing_speaker_model_names_the_download(voice_files, tmp_path):
    """A v2Pro voice without the speaker model: one message naming the file and `download --sv`."""
    from dora_primespeech_mlx.engine import Synthesizer
    from dora_primespeech_mlx.errors import PrimeSpeechError
    from dora_primespeech_mlx.voices import VoiceRegistry

    moyoyo = tmp_path / "moyoyo"
    moyoyo.mkdir()
    for folder in ("chinese-hubert-base", "chinese-roberta-wwm-ext-large"):
        (moyoyo / folder).symlink_to(voice_files.model_root / "moyoyo" / folder, target_is_directory=True)
    registry = VoiceRegistry(tmp_path)
    synth = Synthesizer(tmp_path, registry=registry)
    voice = registry.custom(voice_files.ref_audio, "你好。", "zh", gpt_path=voice_files.gpt,
                            sovits_path=voice_files.sovits)
    with pytest.raises(PrimeSpeechError, match=r"GPT-SoVITS v2ProPlus: it needs the speaker-verification model "
                                               r".*sv/pretrained_eres2netv2w24s4ep4.ckpt.*download --sv"):
        synth.synthesize("你好。", voice)


def test_embedding_kept_for_a_restarted_engine(voice_files, engine):
    """The embedding is stored beside the converted speaker model: a new engine (a restarted node)
    reuses it without loading the speaker model."""
    from dora_primespeech_mlx.engine import Synthesizer
    from dora_primespeech_mlx.voices import VoiceRegistry

    synth, voice = engine
    first = synth._prompt(voice, voice.prompt_text, voice.prompt_lang, synth._models(voice)).sv_emb
    fresh = Synthesizer(voice_files.model_root, registry=VoiceRegistry(voice_files.model_root))
    again = fresh._prompt(voice, voice.prompt_text, voice.prompt_lang, fresh._models(voice)).sv_emb
    assert fresh._speaker is None
    np.testing.assert_array_equal(again, first)
