"""SoVITS decode speed: ours (MLX) vs upstream PyTorch on the same random weights, in one run.

Builds upstream's `SynthesizerTrn` (the version's full shipped config: s2.json for v1/v2 (v2 by
default), s2v2Pro.json, s2v2ProPlus.json) with seeded random weights, writes
it as an official `.pth` and loads it through our converter. Upstream's `decode` is timed in a
fresh subprocess that rebuilds the same seeded model without our OpenBLAS preload (as upstream
runs for its users: an OpenBLAS loaded into the same process takes over PyTorch's BLAS calls and
its idle threads compete with PyTorch's); ours is timed afterwards in this process. Both decode
the same codes, phones and reference spectrogram with noise_scale 0.5; their noise-free outputs
are compared. v2Pro/v2ProPlus decode with a random speaker embedding of a real one's scale (the
speaker model's own cost, once per reference clip, is not part of a decode). Figures are seconds of
compute per second of audio (real-time factor, lower is faster): the median and the best of the
repeats.

`--rows N`: N segments of `--codes` codes each (other random codes and phones per row), as the
engine's SoVITS passes on a GPU: ours decodes them in one `decode_batch`, upstream one by one as its
TTS flow does (its time for the N rows is N times its one-row time, measured on the first row).
`--vocoder-frames F`: ours' vocoder in windows of F // N frames (`Model.decode_batch`), as the engine
runs a pass on a GPU; the time and memory against one pass tell what the windows cost.
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
from primespeech_devtools.bench import add_device_arguments, device_report, select_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--codes", type=int, default=125, help="semantic codes per decode (25 per second)")
    parser.add_argument("--phones", type=int, default=60, help="target phones per decode")
    parser.add_argument("--ref-frames", type=int, default=250, help="reference spectrogram frames (50 per s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed decodes of each side (after a warm-up)")
    parser.add_argument("--rows", type=int, default=1, help="segments decoded together by ours (see above)")
    parser.add_argument("--vocoder-frames", type=int, default=None,
                        help="ours' vocoder in windows of at most this many rows x 50 Hz frames (the engine "
                             "gives 250 on a GPU); default: one pass")
    parser.add_argument("--version", choices=("v1", "v2", "v2Pro", "v2ProPlus"), default="v2")
    parser.add_argument("--seed", type=int, default=0)
    add_device_arguments(parser)  # gpu: upstream on torch-CUDA (TF32 off); dtype auto = float32, as the engine's


def _time_ours(model, rows, spec, sv, repeats: int, vocoder_frames: int | None) -> tuple[list[float], float]:
    """(seconds of each timed decode of `rows` [(codes, phones)] in one pass (noise 0.5), after a
    warm-up and a pause; MLX's peak memory above the model's during the warm-up, MB)."""
    import mlx.core as mx

    seeds = list(range(1, len(rows) + 1))

    def decode():
        model.decode_batch(rows, spec, sv_emb=sv, noise_scale=0.5, seeds=seeds, vocoder_frames=vocoder_frames)

    mx.synchronize()
    loaded = mx.get_active_memory()
    mx.reset_peak_memory()
    decode()  # warm-up
    peak = (mx.get_peak_memory() - loaded) / 2**20
    time.sleep(1.0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        decode()
        times.append(time.perf_counter() - start)
    return times, peak


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
    if args.rows < 1:
        raise SystemExit("--rows must be at least 1")
    rows = [(codes, phones)] + [(rng.integers(0, 1024, size=args.codes), rng.integers(0, n_symbols, size=args.phones))
                                for _ in range(args.rows - 1)]
    speaker = args.version in sovits.SPEAKER_VERSIONS
    # a speaker embedding of a real one's scale (std ~10), for v2Pro/v2ProPlus
    sv = (10 * rng.standard_normal(sovits.SPEAKER_EMBEDDING)).astype(np.float32) if speaker else None
    device, dtype, torch_device = select_device(args)
    dtype = "float32" if args.dtype == "auto" else dtype
    note = oracle_missing()
    if note is not None and speaker:
        raise SystemExit(f"bench sovits --version {args.version} builds the version's shipped config from the "
                         f"upstream oracle: {note}")
    if note is not None:
        with tempfile.TemporaryDirectory() as tmp:
            folder = random_model_folder("sovits", Path(tmp) / "sovits",
                                         {"version": args.version, "n_symbols": n_symbols}, seed=args.seed)
            model = loading.load_model("sovits", folder, dtype=dtype)
        ours_times, peak = _time_ours(model, rows, spec, sv, args.repeats, args.vocoder_frames)
        seconds = args.rows * len(model.decode(codes, phones, spec, noise_scale=0.0)) / model.args.sampling_rate
        return {
            "note": note,
            "benchmark": "sovits decode",
            "version": args.version,
            "rows": args.rows,
            "vocoder_frames": args.vocoder_frames,
            "codes": args.codes,
            "phones": args.phones,
            "audio_seconds": round(seconds, 3),
            "ours_rtf": round(statistics.median(ours_times) / seconds, 4),
            "ours_best_rtf": round(min(ours_times) / seconds, 4),
            "ours_seconds": [round(t, 4) for t in ours_times],
            "ours_peak_memory_mb": round(peak, 1),  # MLX's, above the loaded model, during a decode
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "cpus_usable": len(usable_cores()),
                "mlx": mx.__version__,
                "mlx_device": str(mx.default_device()),
                "ours_dtype": dtype,
                "device": device_report(device),
                "blas": openblas_status(),
            },
        }

    from primespeech_devtools.oracle import sovits as oracle

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "inputs.npz", codes=codes, phones=phones, spec=spec, **({"sv": sv} if speaker else {}))
        env = dict(os.environ, PRIMESPEECH_NO_OPENBLAS="1")
        proc = subprocess.run(
            [sys.executable, "-m", "primespeech_devtools." + ("bench.upstream_cuda" if torch_device == "cuda"
                                                            else "oracle.sovits"), args.version, str(args.seed),
             str(tmp / "inputs.npz"), str(args.repeats), str(tmp / "upstream.npy")]
            + ([dtype] if torch_device == "cuda" else []),
            env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"upstream timing failed:\n{proc.stderr[-3000:]}")
        upstream = json.loads(proc.stdout.strip().splitlines()[-1])
        reference = np.load(tmp / "upstream.npy")
        net = oracle.build_upstream(args.version, seed=args.seed)
        model = loading.load_model("sovits", oracle.save_official(net, tmp / "bench.pth"), dtype=dtype)
        del net

    ours_times, peak = _time_ours(model, rows, spec, sv, args.repeats, args.vocoder_frames)
    check = model.decode_batch(rows, spec, sv_emb=sv, noise_scale=0.0, vocoder_frames=args.vocoder_frames)[0]
    seconds = args.rows * len(reference) / model.args.sampling_rate
    up_times = [args.rows * t for t in upstream["seconds"]]  # one by one, as upstream's TTS flow decodes
    rtf_ours = statistics.median(ours_times) / seconds
    rtf_up = statistics.median(up_times) / seconds
    return {
        "benchmark": "sovits decode",
        "version": args.version,
        "rows": args.rows,
        "vocoder_frames": args.vocoder_frames,
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
        "ours_peak_memory_mb": round(peak, 1),  # MLX's, above the loaded model, during a decode
        "max_abs_diff_noise0": float(np.abs(check - reference).max()),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus_usable": len(usable_cores()),
            "torch": upstream["torch"],
            "torch_threads": upstream["torch_threads"],
            "mlx": mx.__version__,
            "mlx_device": str(mx.default_device()),
            "ours_dtype": dtype,
            "device": device_report(device),
            "blas": openblas_status(),
        },
    }
