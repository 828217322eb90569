"""Audio in and out: WAV reading, soxr resampling, WAV writing, SoVITS's reference spectrogram, and the
effects a text may ask for (pitch shift through librosa, the optional `pitch` extra; volume as a gain).

`load_audio` reproduces what upstream gets from `librosa.load(path, sr=...)`: samples scaled to
float32 as libsndfile does (int16 / 2**15, int24 / 2**23, int32 / 2**31, 8-bit (x - 128) / 128),
channels averaged, then `soxr` at HQ quality with the length fixed to ceil(n * dst / src).
WAV files are parsed here (PCM, IEEE float and WAVE_FORMAT_EXTENSIBLE); other containers go
through `soundfile` when it is installed.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import wave
from pathlib import Path

import numpy as np

from .errors import PrimeSpeechError

logger = logging.getLogger(__name__)

SOVITS_SAMPLE_RATE = 32000
N_FFT = 2048
HOP_LENGTH = 640
WIN_LENGTH = 2048

MAX_SAMPLE = 32767 / 32768  # the largest value that survives int16(x * 32768), as engine.MAX_SAMPLE
PITCH_EXTRA = "pip install 'dora-primespeech-mlx[pitch]'"
_PITCH_MIN_SAMPLES = 2048  # librosa's default n_fft: shorter pieces (a closing 10 ms) are left as they are

_FORMAT_PCM = 0x0001
_FORMAT_FLOAT = 0x0003
_FORMAT_EXTENSIBLE = 0xFFFE


def _parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """[channels, samples] float32 and the sample rate of a RIFF/WAVE byte string."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos = 12
    fmt = None
    payload = None
    while pos + 8 <= len(data):
        chunk_id = data[pos:pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4:pos + 8])
        body = data[pos + 8:pos + 8 + size]  # a streamed WAV may claim more than the file holds
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            payload = body
            if fmt is not None:
                break
        pos += 8 + size + (size & 1)
    if fmt is None or len(fmt) < 16:
        raise ValueError("no 'fmt ' chunk")
    if payload is None:
        raise ValueError("no 'data' chunk")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _FORMAT_EXTENSIBLE:
        if len(fmt) < 26:
            raise ValueError("truncated WAVE_FORMAT_EXTENSIBLE header")
        (tag,) = struct.unpack("<H", fmt[24:26])  # first two bytes of the sub-format GUID
    if channels < 1 or rate < 1:
        raise ValueError(f"invalid header ({channels} channels at {rate} Hz)")
    width = block_align // channels if block_align else (bits + 7) // 8
    frames = len(payload) // (width * channels)
    raw = payload[:frames * width * channels]
    if tag == _FORMAT_PCM and width == 1:
        samples = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif tag == _FORMAT_PCM and width == 2:
        samples = np.frombuffer(raw, "<i2").astype(np.float32) / np.float32(2 ** 15)
    elif tag == _FORMAT_PCM and width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        ints = (b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)  # sign comes from the top byte
        samples = (ints >> 8).astype(np.float32) / np.float32(2 ** 23)
    elif tag == _FORMAT_PCM and width == 4:
        samples = np.frombuffer(raw, "<i4").astype(np.float32) * np.float32(2.0 ** -31)
    elif tag == _FORMAT_FLOAT and width == 4:
        samples = np.frombuffer(raw, "<f4").astype(np.float32)
    elif tag == _FORMAT_FLOAT and width == 8:
        samples = np.frombuffer(raw, "<f8").astype(np.float32)
    else:
        raise ValueError(f"unsupported sample format (format tag {tag:#x}, {8 * width} bits)")
    return np.ascontiguousarray(samples.reshape(frames, channels).T), rate


def _read_with_soundfile(path: Path) -> tuple[np.ndarray, int]:
    try:
        import soundfile
    except ImportError as exc:
        raise PrimeSpeechError(
            f"cannot read {path}: only WAV files are read without extra packages; convert it to WAV "
            "or `pip install soundfile`"
        ) from exc
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises its own error types for unreadable files
        raise PrimeSpeechError(f"cannot read audio file {path} ({exc}): use a WAV, FLAC or OGG file") from exc
    return np.ascontiguousarray(samples.T), int(rate)


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """An audio file as ([channels, samples] float32, native sample rate)."""
    path = Path(path)
    if not path.is_file():
        raise PrimeSpeechError(f"audio file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PrimeSpeechError(f"cannot read audio file {path} ({exc})") from exc
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        try:
            return _parse_wav(data)
        except (ValueError, struct.error) as exc:
            raise PrimeSpeechError(f"cannot read WAV file {path} ({exc}): re-export it as 16-bit PCM WAV") \
                from exc
    return _read_with_soundfile(path)


def resample(x: np.ndarray, src_sr: int, dst_sr: int) -> np.ndarray:
    """Resample a 1-D signal with soxr (HQ), length ceil(n * dst / src) as librosa returns it."""
    x = np.asarray(x, dtype=np.float32)
    if int(src_sr) == int(dst_sr):
        return x
    import soxr

    n_out = int(math.ceil(x.shape[-1] * float(dst_sr) / src_sr))
    y = soxr.resample(x, src_sr, dst_sr, quality="soxr_hq").astype(np.float32, copy=False)
    if y.shape[-1] > n_out:
        y = y[:n_out]
    elif y.shape[-1] < n_out:
        y = np.pad(y, (0, n_out - y.shape[-1]))
    return np.ascontiguousarray(y)


def load_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Mono float32 samples of an audio file at `sample_rate` (channels averaged, soxr HQ)."""
    samples, rate = read_audio(path)
    if samples.shape[1] == 0:
        raise PrimeSpeechError(f"audio file {path} holds no samples")
    mono = samples[0] if samples.shape[0] == 1 else np.mean(samples, axis=0)
    return resample(mono, rate, sample_rate)


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> None:
    """Write mono audio in [-1, 1] as 16-bit PCM WAV (scaled by 32768 like upstream, clipped)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    pcm = np.clip(audio * 32768.0, -32768, 32767).astype("<i2")
    with wave.open(os.fspath(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.tobytes())


def _hann_window(n: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def reference_spectrogram(wav_32k: np.ndarray) -> np.ndarray:
    """Linear-magnitude STFT [1025, frames] exactly as upstream's `spectrogram_torch`.

    n_fft 2048, hop 640, periodic Hann 2048, reflect padding of 704 on both sides, no centring,
    magnitude sqrt(re^2 + im^2 + 1e-8). Computed with MLX's FFT.
    """
    import mlx.core as mx

    x = np.asarray(wav_32k, dtype=np.float32).reshape(-1)
    pad = (N_FFT - HOP_LENGTH) // 2
    if x.shape[0] <= pad:
        raise PrimeSpeechError(f"reference audio is too short ({x.shape[0]} samples at 32 kHz): "
                               "use a clip of 3-10 seconds")
    padded = np.pad(x, (pad, pad), mode="reflect")
    n_frames = 1 + (padded.shape[0] - N_FFT) // HOP_LENGTH
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(n_frames, N_FFT), strides=(HOP_LENGTH * 4, 4), writeable=False
    )
    spec = mx.fft.rfft(mx.array(frames) * mx.array(_hann_window(WIN_LENGTH)), axis=-1)
    magnitude = mx.sqrt(mx.real(spec) ** 2 + mx.imag(spec) ** 2 + 1e-8)
    return np.ascontiguousarray(np.array(magnitude, dtype=np.float32).T)


def prepare_reference_spectrogram(path: str | os.PathLike) -> np.ndarray:
    """The reference spectrogram of an audio file as upstream prepares it: 32 kHz mono, divided by
    min(2, peak) when the peak exceeds 1, then `reference_spectrogram` -> [1025, frames]."""
    audio = load_audio(path, SOVITS_SAMPLE_RATE)
    return reference_spectrogram(limit_peak(audio))


def limit_peak(audio: np.ndarray) -> np.ndarray:
    """Upstream's guard against over-range references: divide by min(2, peak) when peak > 1."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 1.0:
        return (audio / np.float32(min(2.0, peak))).astype(np.float32)
    return audio


def _librosa():
    try:
        import librosa
    except ImportError as exc:
        raise PrimeSpeechError(f"a pitch shift needs librosa, which is not installed: {PITCH_EXTRA}") from exc
    return librosa


def require_pitch_shift() -> None:
    """Raise PrimeSpeechError (saying what to install) when `pitch_shift` cannot run."""
    _librosa()


def pitch_shift(audio: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """`audio` shifted by `semitones` at the same duration (librosa's phase vocoder + soxr resampling);
    unchanged for 0 semitones and for pieces shorter than one analysis frame."""
    audio = np.asarray(audio, dtype=np.float32)
    if semitones == 0 or audio.shape[0] < _PITCH_MIN_SAMPLES:
        return audio
    shifted = _librosa().effects.pitch_shift(audio, sr=int(sample_rate), n_steps=float(semitones))
    return np.asarray(shifted, dtype=np.float32)


def apply_gain(audio: np.ndarray, percent: float) -> np.ndarray:
    """`audio` at `percent` volume (100: unchanged), clipped to [-1, MAX_SAMPLE]."""
    audio = np.asarray(audio, dtype=np.float32)
    return np.clip(audio * np.float32(percent / 100.0), -1.0, MAX_SAMPLE).astype(np.float32, copy=False)
