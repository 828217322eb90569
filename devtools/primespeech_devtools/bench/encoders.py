"""Encoder speed: CNHuBERT on a 10 s reference clip and RoBERTa BERT features of a 50-character
sentence, ours (MLX) vs upstream PyTorch on the same random weights, in one run.

Writes full-size random-weight `chinese-hubert-base` and `chinese-roberta-wwm-ext-large` folders in
the official format and loads them through our converters. Upstream runs in a fresh subprocess
(upstream's own loaders; no OpenBLAS preload there, as upstream runs for its users): its HuBERT
forward as `TTS._set_prompt_semantic` calls it, and `get_bert_feature`. Ours runs in this process:
`features.hubert_content` and `features.bert_features`, which do the same work. Both see the same
clip (with upstream's 0.6 s of padding) and text. Calls alternate between the two sides, with a
pause before each so the other side's idle BLAS/OpenMP threads have gone to sleep, so both run
under the same machine load. Figures are wall seconds per call (median and best of the repeats,
after a warm-up); the outputs are compared as a parity check. Thread counts follow the usual
variables (e.g. `OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1` for single-threaded figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dora_primespeech_mlx import loading

# 50 characters: 45 hanzi and 5 punctuation marks.
SENTENCE = "今天的天气非常好，我们一起去公园散步吧。路上看到很多人在跑步，孩子们在草地上开心地玩耍，真是热闹啊！"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=10.0, help="reference clip length (3-10 s)")
    parser.add_argument("--text", default=SENTENCE, help="Chinese sentence for the BERT features")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each side (after a warm-up)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds of idle time before each timed call")
    parser.add_argument("--seed", type=int, default=0)


def _clip(seconds: float, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    phase = 2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 0.7 * t)) / 16000
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    wave = 0.15 * (0.5 + 0.5 * np.sin(2 * np.pi * 3.1 * t) ** 2) * voiced + 0.02 * rng.standard_normal(t.shape)
    return wave.astype(np.float32)


def _reply(child: subprocess.Popen, log: Path) -> dict:
    line = child.stdout.readline()
    if not line:
        child.wait(timeout=10)
        raise RuntimeError(f"upstream timing process failed:\n{log.read_text()[-3000:]}")
    return json.loads(line)


def _summary(ours: list[float], upstream: list[float]) -> dict:
    summary = {"ours_s": round(statistics.median(ours), 4), "ours_best_s": round(min(ours), 4),
               "ours_all_s": [round(t, 4) for t in ours]}
    if upstream:
        summary.update({
            "upstream_s": round(statistics.median(upstream), 4),
            "ratio_ours_over_upstream": round(statistics.median(ours) / statistics.median(upstream), 3),
            "upstream_best_s": round(min(upstream), 4),
            "upstream_all_s": [round(t, 4) for t in upstream],
        })
    return summary


def run(args: argparse.Namespace) -> dict:
    """Time both encoders; returns seconds per call, the ratios ours / upstream and output parity
    (ours only, on torch-free random weights, when the oracle is not installed)."""
    import mlx.core as mx
    import numpy as np

    from dora_primespeech_mlx.cpu import library
    from dora_primespeech_mlx.features import PROMPT_PAD_SAMPLES, bert_features, hubert_content
    from dora_primespeech_mlx.models import roberta
    from dora_primespeech_mlx.runtime import openblas_status, usable_cores
    from primespeech_devtools.bench import oracle_missing
    from primespeech_devtools.bench.weights import random_model_folder

    note = oracle_missing()
    text = args.text
    word2ph = [2 if "\u4e00" <= ch <= "\u9fff" else 1 for ch in text]
    clip = _clip(args.seconds, args.seed)
    padded = np.concatenate([clip, np.zeros(PROMPT_PAD_SAMPLES, np.float32)])
    tmp = Path(tempfile.mkdtemp(prefix="primespeech-bench-encoders-"))
    child, setup, reference = None, {}, {}
    try:
        if note is None:
            from primespeech_devtools.oracle import encoders as oracle

            hubert_dir = oracle.write_hubert_folder(tmp / "moyoyo" / oracle.HUBERT_NAME, seed=args.seed)
            roberta_dir = oracle.write_roberta_folder(tmp / "moyoyo" / oracle.ROBERTA_NAME, seed=args.seed + 1)
            np.savez(tmp / "inputs.npz", wave=padded, text=np.array(text), word2ph=np.array(word2ph))
            env = dict(os.environ, PRIMESPEECH_NO_OPENBLAS="1")
            log = tmp / "upstream.log"
            with open(log, "w") as err:
                child = subprocess.Popen(
                    [sys.executable, "-m", "primespeech_devtools.oracle.encoders", str(hubert_dir),
                     str(roberta_dir), str(tmp / "inputs.npz"), str(tmp / "upstream.npz")],
                    env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        else:
            hubert_dir = random_model_folder("hubert", tmp / "hubert", seed=args.seed)
            roberta_dir = random_model_folder("roberta", tmp / "roberta", seed=args.seed + 1)
        try:
            if child is not None:
                setup = _reply(child, log)
                reference = dict(np.load(tmp / "upstream.npz"))

            load_start = time.perf_counter()
            hubert_model = loading.load_model("hubert", hubert_dir)
            bert_model = loading.load_model("roberta", roberta_dir)
            tokenizer = roberta.load_tokenizer(roberta_dir)
            load_s = time.perf_counter() - load_start
            ours_calls = {"hubert": lambda: mx.eval(hubert_content(hubert_model, clip)),
                          "bert": lambda: bert_features(bert_model, tokenizer, text, word2ph)}
            times: dict[str, dict[str, list[float]]] = {}
            for name, call in ours_calls.items():
                call()  # warm-up (and kernel compilation)
                ours, upstream = [], []
                for _ in range(args.repeats):
                    if child is not None:
                        time.sleep(args.pause)
                        child.stdin.write(name + "\n")
                        child.stdin.flush()
                        upstream.append(_reply(child, log)["seconds"])
                    time.sleep(args.pause)
                    start = time.perf_counter()
                    call()
                    ours.append(time.perf_counter() - start)
                times[name] = {"ours": ours, "upstream": upstream}
            if child is not None:
                child.stdin.write("quit\n")
                child.stdin.flush()
                child.wait(timeout=60)
        finally:
            if child is not None and child.poll() is None:
                child.kill()
        h = np.array(hubert_content(hubert_model, clip))
        b = bert_features(bert_model, tokenizer, text, word2ph)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def rel(ours, ref):
        return float(np.abs(ours - ref).max() / np.abs(ref).max())

    hubert_result = {"clip_seconds": args.seconds, "frames": int(h.shape[0]),
                     **_summary(times["hubert"]["ours"], times["hubert"]["upstream"])}
    bert_result = {"characters": len(text), "phones": int(sum(word2ph)),
                   **_summary(times["bert"]["ours"], times["bert"]["upstream"])}
    if reference:
        hubert_result["max_rel_diff"] = rel(h, reference["hubert"])
        bert_result["max_rel_diff"] = rel(b, reference["bert"])
    result = {"note": note} if note else {}
    return result | {
        "benchmark": "encoders",
        "hubert": hubert_result,
        "bert": bert_result,
        "ours_convert_and_load_s": round(load_s, 2),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus_usable": len(usable_cores()),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "torch": setup.get("torch"),
            "torch_threads": setup.get("torch_threads"),
            "mlx": mx.__version__,
            "mlx_device": str(mx.default_device()),
            "blas": openblas_status(),
            "cpu_kernels": library.sgemm_bound(),
        },
    }
