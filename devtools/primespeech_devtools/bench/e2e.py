"""End to end: real-time factor and time to first audio for a ~100-character Chinese text, ours vs
upstream's TTS flow on the same random-weight voice, plus the node's start-up time to its first status.

The voice is the project's test voice (`oracle/voice.py`: full-size models in the official layout,
written with torch; its GPT stops each segment after 50 codes, i.e. 2 s of audio, about what real
voices say for one cut5 clause). Upstream runs in a fresh process without our OpenBLAS preload, after
a warm-up synthesis; ours runs in this process after `warmup`. Both use the original node's settings
(top_k 5, top_p 1, temperature 1, repetition penalty 1.35, cut5, noise 0.5, speed 1.1).

- real-time factor: compute seconds / audio seconds for the whole text (batch mode, fragment 0.07 s;
  ours batches the segments through T2S, upstream runs them one at a time as the original node did);
- first audio: seconds until the first audio exists (ours: the first piece of `stream`, i.e. the first
  streaming-mode chunk of 16 codes; upstream: its first segment's decode, which is what its
  return_fragment mode hands out);
- start-up: seconds from spawning `dora-primespeech`'s entry point (with a stand-in for dora's Node,
  so dora's own daemon start is not counted) until its first `status` output, weights already converted.
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

from primespeech_devtools.bench import add_device_arguments, device_report, select_device

TEXT = ("春天来了，公园里的花都开了。孩子们在草地上奔跑，老人们坐在长椅上聊天。远处的湖面波光粼粼，"
        "几只小船慢慢地划过。我和朋友沿着小路散步，一边欣赏风景，一边谈论最近读过的书。傍晚时分，"
        "我们在湖边的小店喝了一杯热茶，然后心满意足地回家了。")

# Runs the node's real entry point with a stand-in for dora.Node that has no inputs and reports when
# the first `status` is sent; argv[1] is the parent's clock at spawn time.
_STARTUP_SCRIPT = r"""
import json, sys, time
t_spawn = float(sys.argv[1])
import dora

class FakeNode:
    def __init__(self, *args, **kwargs):
        self.sent = False
    def __iter__(self):
        return iter(())
    def try_recv(self):
        return None
    def send_output(self, output_id, data, metadata=None):
        if output_id == "status" and not self.sent:
            self.sent = True
            print("FIRST_STATUS " + json.dumps({"seconds": time.time() - t_spawn,
                                                "status": json.loads(data[0].as_py())}), flush=True)

dora.Node = FakeNode
from dora_primespeech_mlx.main import main
main()
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-root", metavar="DIR",
                        help="model root holding the voice (default: build the random-weight test voice in a "
                             "temporary folder, or in $PRIMESPEECH_TEST_VOICE_ROOT to reuse it)")
    parser.add_argument("--voice", default="test", help="voice name (default %(default)s)")
    parser.add_argument("--text", default=TEXT, help="Chinese text without Latin letters (default: 103 characters)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of ours (the median is reported)")
    parser.add_argument("--no-oracle", action="store_true", help="skip upstream")
    parser.add_argument("--no-startup", action="store_true", help="skip the node start-up measurement")
    add_device_arguments(parser)


def _ours(root: Path, voice_name: str, text: str, repeats: int, device: str = "auto", dtype: str = "auto") -> dict:
    import mlx.core as mx

    from dora_primespeech_mlx.engine import SynthesisOptions, Synthesizer
    from dora_primespeech_mlx.voices import VoiceRegistry

    started = time.perf_counter()
    engine = Synthesizer(root, registry=VoiceRegistry(root), device=device, dtype=dtype)
    voice = engine.registry.get(voice_name)
    engine.warmup(voice)
    load = time.perf_counter() - started
    # memory: the load's peak (a first use also converts the official files) apart from the requests'
    load_peak, loaded = mx.get_peak_memory(), mx.get_active_memory()
    mx.reset_peak_memory()
    rtfs, firsts, audio_seconds, stages = [], [], 0.0, {}
    for i in range(repeats):
        result = engine.synthesize(text, voice, SynthesisOptions(text_lang="zh", seed=233333 + i))
        audio_seconds = result.audio.shape[0] / result.sample_rate
        rtfs.append(result.timings["total"] / audio_seconds)
        stages = {k: round(v / audio_seconds, 4) for k, v in result.timings.items()}
        started = time.perf_counter()
        stream = engine.stream(text, voice, SynthesisOptions(text_lang="zh", fragment_interval=0.3, seed=7 + i))
        next(stream)
        firsts.append(time.perf_counter() - started)
        stream.close()
    peak = mx.get_peak_memory()  # one voice loaded, requests running (before the stages reset it)
    return {"load_and_warmup_seconds": round(load, 3), "rtf": round(statistics.median(rtfs), 4),
            "rtf_runs": [round(r, 4) for r in rtfs], "rtf_by_stage": stages,
            "first_audio_seconds": round(statistics.median(firsts), 3),
            "first_audio_runs": [round(f, 3) for f in firsts], "audio_seconds": round(audio_seconds, 2),
            "loaded_memory_mb": round(loaded / 2**20, 1), "load_peak_memory_mb": round(load_peak / 2**20, 1),
            "peak_memory_mb": round(peak / 2**20, 1),
            "stage_peak_memory_mb": _stage_memory(engine, voice, text)}


def _stage_memory(engine, voice, text: str) -> dict[str, float]:
    """One more request with MLX's peak memory taken around each stage: MB above what was active
    when the stage began, the largest over its calls. Stages: the BERT features, the T2S prefill (the
    MLX model's; a native twin's is not seen), the whole T2S generation (prefill included) and each
    SoVITS pass. Synchronizing around the stages changes the timing, so this request is not timed."""
    import mlx.core as mx

    from dora_primespeech_mlx import pipeline
    from dora_primespeech_mlx.engine import SynthesisOptions
    from dora_primespeech_mlx.models import generate, sovits, t2s

    peaks: dict[str, float] = {}

    def measured(label, real):
        def call(*args, **kwargs):
            mx.synchronize()
            before = mx.get_active_memory()
            mx.reset_peak_memory()
            out = real(*args, **kwargs)
            if isinstance(out, mx.array):
                mx.eval(out)
            mx.synchronize()
            peaks[label] = max(peaks.get(label, 0.0), round((mx.get_peak_memory() - before) / 2**20, 1))
            return out
        return call

    targets = [(pipeline.TextPipeline, "bert_many", "bert"), (t2s.Model, "prefill", "prefill"),
               (generate, "generate", "t2s"), (sovits.Model, "decode_batch", "sovits")]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]
    try:
        for (owner, name, label), (_, _, real) in zip(targets, saved, strict=True):
            setattr(owner, name, measured(label, real))
        engine.synthesize(text, voice, SynthesisOptions(text_lang="zh", seed=233333))
    finally:
        for owner, name, real in saved:
            setattr(owner, name, real)
    return peaks


def _oracle(files, text: str) -> dict:
    from primespeech_devtools.oracle.voice import oracle_subprocess, voice_job

    case = {"text": text, "lang": "zh", "speed": 1.1, "top_k": 5, "noise_scale": 0.5,
            "fragment_interval": 0.07, "warmup": 1}
    answer = oracle_subprocess(voice_job(files, cases=[case]))
    result = answer["results"][0]
    audio_seconds = result["audio"].shape[0] / 32000
    return {"load_seconds": round(answer["load_seconds"], 3),
            "rtf": round(result["seconds"] / audio_seconds, 4),
            "first_audio_seconds": round(result["first_audio"], 3), "audio_seconds": round(audio_seconds, 2)}


def _startup(root: Path, voice_name: str, runs: int = 2, device: str = "auto") -> dict:
    env = dict(os.environ, PRIMESPEECH_MODEL_DIR=str(root), VOICE_NAME=voice_name, LOG_LEVEL="WARNING",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PRIMESPEECH_DEVICE=device)
    seconds = []
    for _ in range(runs):
        spawned = time.time()
        proc = subprocess.run([sys.executable, "-c", _STARTUP_SCRIPT, repr(spawned)], env=env,
                              capture_output=True, text=True, timeout=600)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("FIRST_STATUS ")), None)
        if line is None:
            raise RuntimeError(f"the node sent no status (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        info = json.loads(line.split(" ", 1)[1])
        if info["status"].get("state") != "ready":
            raise RuntimeError(f"the node started in state {info['status']}")
        seconds.append(info["seconds"])
    return {"first_status_seconds": round(min(seconds), 3), "runs": [round(s, 3) for s in seconds]}


def _installed_test_voice(voice: str) -> Path:
    """The model root of $PRIMESPEECH_TEST_VOICE_ROOT when it already holds `voice` (building the
    random-weight test voice needs the oracle); else an error that says what to pass instead."""
    from dora_primespeech_mlx.errors import PrimeSpeechError
    from dora_primespeech_mlx.voices import VoiceRegistry

    shared = os.environ.get("PRIMESPEECH_TEST_VOICE_ROOT")
    try:
        if shared and VoiceRegistry(shared).installed(voice):
            return Path(shared)
    except PrimeSpeechError:
        pass  # not registered there: the error below says what to do
    raise PrimeSpeechError(
        "bench e2e without the upstream oracle (torch, gpt-sovits-cpufast) cannot build its random-weight "
        f"test voice {voice!r}: pass --model-root DIR and --voice NAME of an installed voice "
        "(`primespeech-mlx download --voice Doubao --model-root DIR` fetches one), or install the oracle "
        "with `make setup` in a checkout."
    )


def run(args: argparse.Namespace) -> dict:
    """Build or reuse the voice, then time ours, upstream and the node's start-up."""
    import mlx.core as mx

    from dora_primespeech_mlx.runtime import openblas_status, usable_cores
    from primespeech_devtools.bench import oracle_missing

    device, _, _ = select_device(args)
    note = oracle_missing()
    tmp = files = None
    if args.model_root:
        root = Path(args.model_root).expanduser()
    elif note is not None:
        root = _installed_test_voice(args.voice)
    else:
        from primespeech_devtools.oracle.voice import build_test_voice

        shared = os.environ.get("PRIMESPEECH_TEST_VOICE_ROOT")
        tmp = None if shared else tempfile.TemporaryDirectory(prefix="primespeech-bench-")
        files = build_test_voice(shared or tmp.name, args.voice)
        root = files.model_root
    if files is None and note is None and not args.no_oracle:
        from primespeech_devtools.oracle.voice import TestVoiceFiles

        files = TestVoiceFiles(args.voice, root, *(Path() for _ in range(3)), root / "voices.json")
    try:
        result = {"note": note} if note else {}
        result |= {"benchmark": "e2e", "text_chars": len(args.text), "voice": args.voice}
        result["ours"] = _ours(root, args.voice, args.text, max(1, args.repeats), device, args.dtype)
        if not args.no_oracle and note is None:
            result["upstream"] = _oracle(files, args.text)
            result["ratio_ours_over_upstream"] = {
                "rtf": round(result["ours"]["rtf"] / result["upstream"]["rtf"], 3),
                "first_audio": round(result["ours"]["first_audio_seconds"]
                                     / result["upstream"]["first_audio_seconds"], 3)}
        if not args.no_startup:
            result["node_startup"] = _startup(root, args.voice, device=device)
        rtf, first = (0.015, 0.08) if device == "gpu" else (0.5, 1.5)  # issue 17's GPU targets, the CPU's
        result["targets"] = {f"rtf<={rtf}": result["ours"]["rtf"] <= rtf,
                             f"first_audio<={first}s": result["ours"]["first_audio_seconds"] <= first}
        if "node_startup" in result:
            result["targets"]["startup<=3s"] = result["node_startup"]["first_status_seconds"] <= 3.0
        result["machine"] = {
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus_usable": len(usable_cores()),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "mlx": mx.__version__, "mlx_device": str(mx.default_device()), "blas": openblas_status(),
            "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
            "device": device_report(device),
        }
        if device == "gpu" and "upstream" in result:
            result["upstream_note"] = "upstream's TTS flow runs on the CPU here (its oracle has no CUDA path)"
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()
