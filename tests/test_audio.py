"""Audio I/O and the SoVITS reference spectrogram against librosa and upstream's `spectrogram_torch`."""

from __future__ import annotations

import wave

import numpy as np
import pytest

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS preload before MLX)
from dora_primespeech_mlx import audio
from dora_primespeech_mlx.errors import PrimeSpeechError

LOAD_TOL = 1e-4  # max abs difference to librosa.load (it is 0 in practice: same decoder maths, same soxr)
SPEC_TOL = 1e-5  # max abs difference to upstream, relative to the spectrogram's peak (at least 1)

sf = pytest.importorskip("soundfile")
librosa = pytest.importorskip("librosa")


def _signal(rate: int, seconds: float, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.4 * np.sin(2 * np.pi * 330 * t)[:, None] + 0.2 * rng.standard_normal((t.size, channels))
    return np.clip(tone, -1, 1)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "PCM_U8"])
@pytest.mark.parametrize("channels", [1, 2])
def test_load_audio_matches_librosa(tmp_path, subtype, channels):
    for rate in (8000, 22050, 44100, 48000, 32000, 16000):
        path = tmp_path / f"{subtype}_{channels}_{rate}.wav"
        sf.write(path, _signal(rate, 0.3, channels), rate, subtype=subtype)
        for target in (16000, 32000):
            ours = audio.load_audio(path, target)
            ref, _ = librosa.load(path, sr=target)
            assert ours.dtype == np.float32 and ours.ndim == 1
            assert ours.shape == ref.shape, (subtype, channels, rate, target)
            assert np.abs(ours - ref).max() <= LOAD_TOL, (subtype, channels, rate, target)


def test_load_audio_reads_stdlib_wave_and_extensible(tmp_path):
    rate = 24000
    pcm = (_signal(rate, 0.2, 2) * 32767).astype("<i2")
    path = tmp_path / "stdlib.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())
    ref, _ = librosa.load(path, sr=16000)
    assert np.abs(audio.load_audio(path, 16000) - ref).max() <= LOAD_TOL
    ext = tmp_path / "ext.wav"
    ext.write_bytes(_extensible_wav(_signal(rate, 0.2, 3), rate))
    ref, _ = librosa.load(ext, sr=32000)
    assert np.abs(audio.load_audio(ext, 32000) - ref).max() <= LOAD_TOL


def _extensible_wav(x: np.ndarray, rate: int) -> bytes:
    """24-bit PCM in a WAVE_FORMAT_EXTENSIBLE header (written by hand: soundfile picks its own)."""
    import struct

    channels = x.shape[1]
    ints = np.round(x * (2 ** 23 - 1)).astype("<i4")
    data = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    guid = struct.pack("<H", 1) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * 3 * channels, 3 * channels, 24, 22, 24,
                      0x7) + guid
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_resample_length_and_identity():
    x = np.random.default_rng(1).standard_normal(44100).astype(np.float32)
    assert audio.resample(x, 16000, 16000) is not None
    np.testing.assert_array_equal(audio.resample(x, 16000, 16000), x)
    for src, dst in ((44100, 16000), (16000, 32000), (22050, 32000)):
        y = audio.resample(x, src, dst)
        assert y.shape == (int(np.ceil(x.size * dst / src)),)
        ref = librosa.resample(x, orig_sr=src, target_sr=dst, res_type="soxr_hq")
        assert np.abs(y - ref).max() <= LOAD_TOL


def test_write_wav_round_trip(tmp_path):
    x = (0.5 * np.sin(np.linspace(0, 200, 16000))).astype(np.float32)
    x[10] = 1.5  # over range: clipped, not wrapped
    path = tmp_path / "out.wav"
    audio.write_wav(path, x, 32000)
    with wave.open(str(path), "rb") as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()) == (1, 2, 32000, x.size)
        pcm = np.frombuffer(f.readframes(x.size), "<i2")
    assert pcm[10] == 32767
    np.testing.assert_array_equal(pcm[:10], (x[:10] * 32768).astype(np.int16))
    back = audio.load_audio(path, 32000)
    assert np.abs(back[:10] - x[:10]).max() <= 1 / 32768


def test_unreadable_audio_raises(tmp_path):
    with pytest.raises(PrimeSpeechError, match="not found"):
        audio.load_audio(tmp_path / "missing.wav", 16000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt \x04\x00\x00\x00abcd")
    with pytest.raises(PrimeSpeechError, match="WAV"):
        audio.load_audio(bad, 16000)
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(PrimeSpeechError):
        audio.load_audio(junk, 16000)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1)), 16000)
    with pytest.raises(PrimeSpeechError, match="no samples"):
        audio.load_audio(empty, 16000)


def _real_looking(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sr = 32000
    t = np.arange(int(1.7 * sr)) / sr
    sweep = 0.8 * np.sin(2 * np.pi * (60 * t + (9000 - 60) / (2 * 1.7) * t ** 2))
    return {
        "noise": 0.3 * rng.standard_normal(t.size),
        "sweep": sweep,
        "silence": np.zeros(t.size),
        "clipped": np.clip(1.7 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size), -1, 1),
        "speechlike": sweep * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size),
        "shortest": 0.5 * rng.standard_normal(705),  # reflect padding needs more than 704 samples
        "odd_length": 0.2 * rng.standard_normal(32000 + 333),
    }


def test_reference_spectrogram_matches_upstream(upstream):
    from primespeech_devtools.oracle.sovits import upstream_spectrogram

    for name, x in _real_looking().items():
        x = x.astype(np.float32)
        ours = audio.reference_spectrogram(x)
        ref = upstream_spectrogram(x)
        assert ours.shape == ref.shape and ours.shape[0] == 1025, name
        assert ours.dtype == np.float32
        err = np.abs(ours - ref).max() / max(1.0, float(ref.max()))
        assert err <= SPEC_TOL, (name, err)
    with pytest.raises(PrimeSpeechError, match="too short"):
        audio.reference_spectrogram(np.zeros(704, np.float32))


def test_reference_spectrogram_is_linear_magnitude(upstream):
    """Trap: the reference spectrogram is a linear magnitude (no log, no mel); a log-magnitude
    alternative is far from upstream."""
    from primespeech_devtools.oracle.sovits import upstream_spectrogram

    x = _real_looking()["speechlike"].astype(np.float32)
    ref = upstream_spectrogram(x)
    ours = audio.reference_spectrogram(x)
    scale = max(1.0, float(ref.max()))
    assert np.abs(ours - ref).max() / scale <= SPEC_TOL
    assert np.abs(np.log(ours) - ref).max() / scale > 100 * SPEC_TOL
    assert float(ours.min()) >= 1e-4 - 1e-9  # sqrt(1e-8) floor, as upstream


def test_prepare_reference_spectrogram_peak_handling(tmp_path, upstream):
    """File -> 32 kHz mono -> divide by min(2, peak) when peak > 1 -> spectrogram, as upstream."""
    from primespeech_devtools.oracle.sovits import upstream_spectrogram

    rng = np.random.default_rng(3)
    for peak, rate in ((1.5, 44100), (3.0, 32000), (0.7, 16000)):
        x = np.sin(np.linspace(0, 900, rate)) * peak + 0.01 * rng.standard_normal(rate)
        path = tmp_path / f"ref_{peak}.wav"
        sf.write(path, np.stack([x, 0.5 * x], axis=1), rate, subtype="FLOAT")  # stereo, float, over range
        wav, _ = librosa.load(path, sr=32000)
        top = np.abs(wav).max()
        expected_input = wav / min(2.0, top) if top > 1 else wav
        ref = upstream_spectrogram(expected_input.astype(np.float32))
        ours = audio.prepare_reference_spectrogram(path)
        assert np.abs(ours - ref).max() / max(1.0, float(ref.max())) <= SPEC_TOL
    assert audio.limit_peak(np.array([0.5, -3.0], np.float32)).tolist() == [0.25, -1.5]
    assert audio.limit_peak(np.array([0.5, -1.5], np.float32)).tolist() == pytest.approx([0.5 / 1.5, -1.0])
    np.testing.assert_array_equal(audio.limit_peak(np.array([0.5, -1.0], np.float32)), [0.5, -1.0])
