"""The text payload's audio effects: pitch shift (librosa, the `pitch` extra) and volume, in
milliseconds per second of 32 kHz audio. Ours only: upstream GPT-SoVITS has no such effects."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length (default 10 s)")
    parser.add_argument("--semitones", type=float, default=3.0, help="pitch shift (default +3)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after a warm-up")


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def run(args: argparse.Namespace) -> dict:
    import numpy as np

    from dora_primespeech_mlx import audio
    from dora_primespeech_mlx.engine import SAMPLE_RATE

    rng = np.random.default_rng(0)
    n = int(args.seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.standard_normal(n)).astype(np.float32)
    t0 = time.perf_counter()
    audio.pitch_shift(wave, SAMPLE_RATE, args.semitones)  # warm-up: imports librosa, builds its filters
    first = time.perf_counter() - t0
    pitch = _timed(lambda: audio.pitch_shift(wave, SAMPLE_RATE, args.semitones), args.repeats)
    gain = _timed(lambda: audio.apply_gain(wave, 150.0), args.repeats)
    per_second = 1000.0 / args.seconds
    return {
        "benchmark": f"audio effects on {args.seconds:g} s of 32 kHz audio, median of {args.repeats}",
        "pitch_shift_ms_per_audio_second": round(statistics.median(pitch) * per_second, 2),
        "pitch_shift_first_call_s": round(first, 3),
        "volume_ms_per_audio_second": round(statistics.median(gain) * per_second, 3),
        "semitones": args.semitones,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    add_arguments(p)
    print(json.dumps(run(p.parse_args()), indent=2))
