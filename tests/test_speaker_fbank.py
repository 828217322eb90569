"""The speaker model's input features against upstream: `features.speaker_fbank` (kaldi-native-fbank) vs
`Kaldi.fbank(wav.unsqueeze(0), num_mel_bins=80, sample_frequency=16000, dither=0)` with upstream's own
`eres2net/kaldi.py`, as `sv.py` calls it.

Both are float32. Where a mel bin holds energy (exact log-mel above FLOOR = -10) they agree within
ATOL = 1e-3 (measured 4e-5 to 4.5e-4). Near the log floor (log(FLT_EPSILON) = -15.9, e.g. the empty bins
of a pure tone) the log magnifies float32 rounding of the power spectrum, up to 1.6e-2, and there
upstream's own float32 result is as far from the exact (float64) one as ours: everywhere, ours must be
no further from the float64 result than upstream's float32 is, plus 1e-4. Through ERes2NetV2 (random
weights) these differences move the embedding by less than 1e-5 of its peak.
"""

from __future__ import annotations

import numpy as np
import pytest

from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.features import speaker_fbank

torch = pytest.importorskip("torch")
pytest.importorskip("kaldi_native_fbank", reason="kaldi-native-fbank is not installed")
kaldi = pytest.importorskip("GPT_SoVITS.eres2net.kaldi", reason="the upstream oracle is not installed")

ATOL = 1e-3
FLOOR = -10.0
SR = 16000


def _upstream(wave: np.ndarray, dtype=torch.float32) -> np.ndarray:
    x = torch.from_numpy(wave).to(dtype).unsqueeze(0)
    return kaldi.fbank(x, num_mel_bins=80, sample_frequency=SR, dither=0).double().numpy()


def _waves() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(52_803) / SR
    waves = {
        "noise 1 s": 0.1 * rng.standard_normal(SR),
        "noise 3.7 s, not whole frames": 0.5 * rng.standard_normal(59_237),
        "uniform 10 s": rng.uniform(-1, 1, 10 * SR),
        "sine 440 Hz 2 s": 0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * SR) / SR),
        "chirp + sine 3.3 s": 0.3 * np.sin(2 * np.pi * (200 + 1500 * t) * t) + 0.1 * np.sin(2 * np.pi * 3000 * t),
        "quiet noise between silences": np.concatenate([np.zeros(8000), 1e-3 * rng.standard_normal(24_123),
                                                        np.zeros(4000)]),
        "one frame": 0.1 * rng.standard_normal(400),
    }
    return {name: wave.astype(np.float32) for name, wave in waves.items()}


@pytest.mark.parametrize("name", list(_waves()))
def test_speaker_fbank_matches_upstream(name):
    wave = _waves()[name]
    ours = speaker_fbank(wave)
    ref = _upstream(wave)
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape == (1 + (wave.shape[0] - 400) // 160, 80)
    exact = _upstream(wave, torch.float64)
    diff = np.abs(ours - ref)[exact > FLOOR]
    assert diff.max() <= ATOL, f"max |diff| {diff.max():.2e} (features {ref.min():.1f}..{ref.max():.1f})"
    assert np.abs(ours - exact).max() <= np.abs(ref - exact).max() + 1e-4


def test_speaker_fbank_short_clip_has_no_frames():
    assert speaker_fbank(np.zeros(399, dtype=np.float32)).shape == (0, 80)


def test_speaker_fbank_names_the_package_when_missing(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "kaldi_native_fbank", None)
    with pytest.raises(PrimeSpeechError, match="pip install kaldi-native-fbank"):
        speaker_fbank(np.zeros(SR, dtype=np.float32))
