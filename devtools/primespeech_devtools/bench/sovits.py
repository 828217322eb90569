"""SoVITS decode speed: ours (MLX) vs upstream PyTorch on the same random weights, in one run.

Builds upstream's `SynthesizerTrn` (full s2.json, v2 by default) with seeded random weights, writes
it as an official `.pth` and loads it through our converter. Upstream's `decode` is timed in a
fresh subprocess that rebuilds the same seeded model without our OpenBLAS preload (as upstream
runs for its users: an OpenBLAS loaded into the same process takes over PyTorch's BLAS calls and
its idle threads compete with PyTorch's); ours is timed afterwards in this process. Both decode
the same codes, phones and reference spectrogram with noise_scale 0.5; their noise-free outputs
are compared. Figures are seconds of compute per second of audio (real-time factor, lower is
faster): the median and the best of the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dora_primespeech_mlx import loading


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--codes", type=int, default=125, help="semantic codes per decode (25 per second)")
    parser.add_argument("--phones", type=int, default=60, help="target phones per decode")
    parser.add_argument("--ref-frames", type=int, default=250, help="reference spectrogram frames (50 per s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed decodes of each side (after a warm-up)")
    parser.add_argument("--version", choices=("v1", "v2"), default="v2")
    parser.add_argument("--seed", type=int, default=0)


def _time_ours(model, codes, phones, spec, repeats: int) -> list[float]:
    """Seconds of each timed decode (noise 0.5), after a warm-up and a pause."""
    model.decode(codes, phones, spec, noise_scale=0.5, seed=1)  # warm-up
    time.sleep(1.0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.decode(codes, phones, spec, noise_scale=0.5, seed=1)
        times.append(time.perf_counter() - start)
    return times


def run(args: argparse.Namespace) -> dict:
    """Time both decoders; returns RTFs, the ratio ours / upstream and the parity of the outputs."""
    import mlx.core as mx
    import numpy as np

    from dora_primespeech_mlx.models import sovits
    from dora_primespeech_mlx.runtime import openblas_status, usable_cores
    from primespeech_devtools.bench import oracle_missing
    from primespeech_devtools.bench.weights import random_model_folder

    n_symbols = sovits.V1_SYMBOLS if args.version == "v1" else sovits.V2_SYMBOLS
    rng = np.random.default_rng(args.seed)
    codes = rng.integers(0, 1024, size=args.codes)
    phones = rng.integers(0, n_symbols, size=args.phones)
    spec = np.abs(rng.standard_normal((1025, args.ref_frames))).astype(np.float32)
    note = oracle_missing()
    if note is not None:
        with tempfile.TemporaryDirectory() as tmp:
            folder = random_model_folder("sovits", Path(tmp) / "sovits",
                                         {"version": args.version, "n_symbols": n_symbols}, seed=args.seed)
            model = loading.load_model("sovits", folder)
        ours_times = _time_ours(model, codes, phones, spec, args.repeats)
        seconds = len(model.decode(codes, phones, spec, noise_scale=0.0)) / model.args.sampling_rate
        return {
            "note": note,
            "benchmark": "sovits decode",
            "version": args.version,
            "codes": args.codes,
            "phones": args.phones,
            "audio_seconds": round(seconds, 3),
            "ours_rtf": round(statistics.median(ours_times) / seconds, 4),
            "ours_best_rtf": round(min(ours_times) / seconds, 4),
            "ours_seconds": [round(t, 4) for t in ours_times],
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "cpus_usable": len(usable_cores()),
                "mlx": mx.__version__,
                "mlx_device": str(mx.default_device()),
                "blas": openblas_status(),
            },
        }

    from primespeech_devtools.oracle import sovits as oracle

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "inputs.npz", codes=codes, phones=phones, spec=spec)
        env = dict(os.environ, PRIMESPEECH_NO_OPENBLAS="1")
        proc = subprocess.run(
            [sys.executable, "-m", "primespeech_devtools.oracle.sovits", args.version, str(args.seed),
             str(tmp / "inputs.npz"), str(args.repeats), str(tmp / "upstream.npy")],
            env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"upstream timing failed:\n{proc.stderr[-3000:]}")
        upstream = json.loads(proc.stdout.strip().splitlines()[-1])
        reference = np.load(tmp / "upstream.npy")
        net = oracle.build_upstream(args.version, seed=args.seed)
        model = loading.load_model("sovits", oracle.save_official(net, tmp / "bench.pth"))
        del net

    ours_times = _time_ours(model, codes, phones, spec, args.repeats)
    check = model.decode(codes, phones, spec, noise_scale=0.0)
    seconds = len(reference) / model.args.sampling_rate
    up_times = upstream["seconds"]
    rtf_ours = statistics.median(ours_times) / seconds
    rtf_up = statistics.median(up_times) / seconds
    return {
        "benchmark": "sovits decode",
        "version": args.version,
        "codes": args.codes,
        "phones": args.phones,
        "audio_seconds": round(seconds, 3),
        "ours_rtf": round(rtf_ours, 4),
        "upstream_rtf": round(rtf_up, 4),
        "ratio_ours_over_upstream": round(rtf_ours / rtf_up, 3),
        "ours_best_rtf": round(min(ours_times) / seconds, 4),
        "upstream_best_rtf": round(min(up_times) / seconds, 4),
        "ours_seconds": [round(t, 4) for t in ours_times],
        "upstream_seconds": [round(t, 4) for t in up_times],
        "max_abs_diff_noise0": float(np.abs(check - reference).max()),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus_usable": len(usable_cores()),
            "torch": upstream["torch"],
            "torch_threads": upstream["torch_threads"],
            "mlx": mx.__version__,
            "mlx_device": str(mx.default_device()),
            "blas": openblas_status(),
        },
    }
