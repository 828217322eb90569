"""Engine parity: our whole pipeline (text -> waveform) against upstream's TTS.run flow composed from
upstream's own pieces, on the same random-weight voice written in the official formats.

Greedy T2S (top_k 1; repetition penalty 1.35 as in the original node, so the prompt codes count) and
noise_scale 0 make both sides deterministic; the edge fades (ours, not upstream's) are off. The codes
of every segment must be identical and the waveform equal within ATOL.
"""

from __future__ import annotations

import numpy as np
import pytest

ATOL = 1e-4  # absolute, on audio in [-1, 1]

pytestmark = pytest.mark.slow

CASES = [
    # (text, language, speed): Chinese at the zh voices' default speed 1.1, English at 1.0
    ("你好，今天天气不错。我买了3个苹果！", "zh", 1.1),
    ("Hello world. This is a test of the speech system.", "en", 1.0),
]


@pytest.fixture(scope="module")
def voice_files(upstream):
    from primespeech_devtools.oracle.voice import shared_test_voice

    return shared_test_voice()


@pytest.fixture(scope="module")
def oracle_pending(voice_files):
    """Upstream's audio and per-segment codes for every case, computed in a child process before our
    side runs (running both at once on 2 cores oversubscribes them: BLAS threads then spin and wait)."""
    from primespeech_devtools.oracle.voice import PendingOracle, voice_job

    cases = [{"text": text, "lang": lang, "speed": speed, "top_k": 1, "noise_scale": 0.0,
              "fragment_interval": 0.07} for text, lang, speed in CASES]
    pending = PendingOracle(voice_job(voice_files, cases=cases))
    pending.result()
    yield pending
    pending.close()


@pytest.fixture(scope="module")
def ours(voice_files):
    from dora_primespeech_mlx.engine import Synthesizer
    from dora_primespeech_mlx.voices import VoiceRegistry

    engine = Synthesizer(voice_files.model_root, registry=VoiceRegistry(voice_files.model_root))
    return engine, engine.registry.get("test")


@pytest.mark.parametrize("case", range(len(CASES)), ids=["zh", "en"])
def test_pipeline_matches_upstream(oracle_pending, ours, monkeypatch, case):
    from dora_primespeech_mlx.engine import SynthesisOptions
    from dora_primespeech_mlx.models.sovits import Model

    text, lang, speed = CASES[case]
    decoded = []
    real_decode = Model.decode_batch

    def spy(self, rows, *args, **kwargs):
        decoded.extend((np.asarray(codes).tolist(), list(phones)) for codes, phones in rows)
        return real_decode(self, rows, *args, **kwargs)

    monkeypatch.setattr(Model, "decode_batch", spy)
    engine, voice = ours
    options = SynthesisOptions(text_lang=lang, speed=speed, top_k=1, noise_scale=0.0, edge_fade=0.0,
                               fragment_interval=0.07)
    audio = engine.synthesize(text, voice, options).audio
    result = oracle_pending.result()["results"][case]
    expected, details = result["audio"], result["details"]

    assert len(decoded) == len(details) >= 2  # several segments
    for (codes, phones), want in zip(decoded, details, strict=True):
        assert phones == want["phones"], want["norm_text"]
        assert codes == want["codes"], want["norm_text"]
        assert len(set(codes)) > 10  # the random voice's greedy decoding is not degenerate
    assert audio.shape == expected.shape
    assert np.std(expected) > 0.05  # informative, not ~0
    np.testing.assert_allclose(audio, np.minimum(expected, 32767 / 32768), rtol=0, atol=ATOL)
