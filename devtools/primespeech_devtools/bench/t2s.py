"""T2S decoding speed: our MLX generate against upstream's infer_panel_naive on the same random weights.

One official-format checkpoint with random full-size weights is written and converted; ours decodes
it in this process; the oracle decodes the same file in a child process started without our OpenBLAS
preload (with it, torch's OpenMP threads and the preloaded OpenBLAS's threads slow torch down several
times on 2 cores, which would flatter us). Runs alternate between the two so that changes in the
machine's load hit both alike. Both run the same number of greedy steps: EOS's logit row is zeroed
so that it is never the argmax, and early_stop_num ends both after exactly --steps codes.
Reported tokens/s include the prefill, as upstream's own figure does.

`--device gpu` runs ours on MLX's GPU and upstream on torch-CUDA (when torch sees a GPU), each in the
dtype `--dtype` names (auto: float16 on a GPU), and names the card; `--rows 1,4,8,16` also times ours
on batches of rows (aggregate tokens/s); `--bits 8` or `4` quantizes ours (`t2s.quantize`).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from primespeech_devtools.bench import add_device_arguments, device_report, select_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=150, help="generated codes per run (default 150)")
    parser.add_argument("--prompt", type=int, default=100, help="prompt semantic codes (default 100)")
    parser.add_argument("--phones", type=int, default=50, help="prompt + target phones (default 50)")
    parser.add_argument("--layers", type=int, default=24, help="transformer layers (default 24, full size)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed runs per side after a warm-up, alternating between the sides (median)")
    parser.add_argument("--sampling", action="store_true",
                        help="top_k 15 sampling instead of greedy (codes then differ between the two)")
    parser.add_argument("--skip-oracle", action="store_true",
                        help="time ours only (also what happens when the oracle is not installed)")
    add_device_arguments(parser)
    parser.add_argument("--rows", default="1",
                        help="comma-separated batch sizes for ours (aggregate tokens/s; default 1)")
    parser.add_argument("--bits", type=int, choices=(16, 8, 4), default=16,
                        help="ours: T2S weights quantized to 8 or 4 bits (group 64); 16 = unquantized")


def _loaded_blas() -> list[str]:
    """BLAS libraries mapped into this process (Linux), whatever loaded them (our preload, LD_PRELOAD)."""
    try:
        with open("/proc/self/maps") as f:
            names = {line.split()[-1].rsplit("/", 1)[-1] for line in f if "/" in line}
    except OSError:
        return []
    return sorted(n for n in names if any(k in n for k in ("openblas", "mkl_rt", "libblas", "accelerate")))


def _settings(args) -> dict[str, Any]:
    if args.sampling:
        return dict(top_k=15, top_p=1.0, temperature=1.0, repetition_penalty=1.35)
    return dict(top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.35)


def _write_checkpoint(folder: Path, layers: int) -> Path:
    import torch

    from primespeech_devtools.oracle import t2s as oracle

    config = oracle.make_config(n_layer=layers)
    ref = oracle.build_decoder(config, seed=0)
    with torch.no_grad():
        ref.ar_predict_layer.weight[config["model"]["EOS"]].zero_()
    return oracle.save_checkpoint(ref, config, folder / "bench_s1.ckpt")


class _Ours:
    def __init__(self, ckpt: Path, inputs, settings, steps: int, dtype: str, bits: int = 16):
        from dora_primespeech_mlx import loading
        from dora_primespeech_mlx.models import generate, t2s

        t0 = time.perf_counter()
        self.model = loading.load_model("t2s", ckpt, dtype=dtype)
        if bits < 16:
            t2s.quantize(self.model, bits)
        self.load_s = time.perf_counter() - t0
        self.generate = generate.generate
        self.inputs, self.steps = inputs, steps
        self.kwargs = dict(settings, early_stop_num=steps - 1)

    def rows(self, n: int) -> list[tuple]:
        """n rows: the input and n - 1 shorter copies of its phones (left padding, as the engine's)."""
        phones, bert, _ = self.inputs
        cut = [max(1, len(phones) - 3 * i) for i in range(n)]
        return [(phones[:c], bert[:, :c]) for c in cut]

    def __call__(self, n: int = 1) -> tuple[float, list[int]]:
        import mlx.core as mx

        t0 = time.perf_counter()
        codes = self.generate(self.model, self.rows(n), self.inputs[2], seeds=list(range(n)), **self.kwargs)
        mx.synchronize()
        return time.perf_counter() - t0, codes[0] if n == 1 else codes


def oracle_worker(ckpt: str, inputs_file: str, settings: dict[str, Any], steps: int, device: str = "cpu",
                  dtype: str = "float32") -> None:
    """Child process: load upstream's decoder from `ckpt` onto torch's `device` ("cpu" or "cuda") in
    `dtype`; for each line on stdin, run infer_panel_naive once and print {"seconds", "codes"} as one
    JSON line."""
    import numpy as np
    import torch

    from primespeech_devtools.oracle import import_upstream

    import_upstream()
    from AR.models.t2s_model import Text2SemanticDecoder

    data = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = Text2SemanticDecoder(data["config"], top_k=3)
    model.load_state_dict({k[len("model."):]: v.float() for k, v in data["weight"].items()})
    torch_dtype = getattr(torch, dtype)
    if device == "cuda":  # upstream's own fp32 is true fp32: TF32 off, as torch's default for matmuls
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model = model.to(device=device, dtype=torch_dtype)
    model.rebuild_t2s_transformer()
    model.eval()
    arrays = np.load(inputs_file)
    x = torch.as_tensor(arrays["phones"])[None].to(device)
    bert = torch.as_tensor(arrays["bert"])[None].to(device=device, dtype=torch_dtype)
    prompt = torch.as_tensor(arrays["prompt"])[None].to(device)
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": device, "dtype": dtype}
    if device == "cuda":
        info["card"] = torch.cuda.get_device_name()
    print(json.dumps(info), flush=True)
    for _ in sys.stdin:
        t0 = time.perf_counter()
        with torch.no_grad():
            *_, (y, _idx) = model.infer_panel_naive(x, torch.tensor([x.shape[1]], device=device), prompt, bert,
                                                     early_stop_num=steps - 1, **settings)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        print(json.dumps({"seconds": seconds, "codes": y[0, prompt.shape[1]:].tolist()}), flush=True)


class _Upstream:
    """upstream's decoder in a child process started without our OpenBLAS preload: with it, torch's
    OpenMP threads and the preloaded OpenBLAS's threads slow torch down several times on 2 cores."""

    def __init__(self, ckpt: Path, inputs, settings, steps: int, folder: Path, device: str, dtype: str):
        import numpy as np

        phones, bert, prompt = inputs
        inputs_file = folder / "inputs.npz"
        np.savez(inputs_file, phones=phones, bert=bert, prompt=prompt)
        code = ("import json, sys; from primespeech_devtools.bench.t2s import oracle_worker; "
                "oracle_worker(**json.loads(sys.argv[1]))")
        payload = json.dumps(dict(ckpt=str(ckpt), inputs_file=str(inputs_file), settings=settings,
                                  steps=steps, device=device, dtype=dtype))
        env = dict(os.environ, PRIMESPEECH_NO_OPENBLAS="1")
        env.pop("LD_PRELOAD", None)  # a BLAS preloaded for our side must not reach torch either
        self.proc = subprocess.Popen([sys.executable, "-c", code, payload], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        while True:  # upstream's modules may print on import: skip anything that is not our JSON
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the oracle worker died (exit code {self.proc.wait()})")
            if line.startswith("{"):
                return json.loads(line)

    def __call__(self) -> tuple[float, list[int]]:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        out = self._read()
        return out["seconds"], out["codes"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _decode_step(model) -> str:
    """Which decode step ours ran: the CPU accelerator's native one (with its weight precision) or MLX's."""
    head = model.ar_predict_layer
    if not hasattr(head, "panels"):
        return "MLX compiled step"
    return f"native (cpu/t2s), {'float16' if head.half else 'float32'} weight panels, float32 arithmetic"


def _progress(message: str) -> None:
    """Where the benchmark is, on stderr (the figures go to stdout at the end)."""
    print(f"bench t2s: {message}", file=sys.stderr, flush=True)


def decode_primitives(model, rows: int = 1) -> dict[str, int]:
    """The primitives of one decode step as the generator queues it (the model's compiled step with
    sampling, after MLX's fusion), by name, from the step's graph: each is about one kernel launch,
    except the view-only ones counted apart as "views". Needs the model's own MLX step."""
    import re

    import mlx.core as mx
    import numpy as np

    from dora_primespeech_mlx.models import generate

    if not model.compiled_decoding:
        return {}
    args = model.args
    texts = [(mx.array(np.arange(8, dtype=np.int32)), mx.zeros((args.bert_dim, 8))) for _ in range(rows)]
    x, pads = generate.prefill_input(model, texts, np.arange(4))
    cache = model.make_cache(pads)
    logits = model.prefill(x, 8, cache)
    token_step = generate._token_step(args.EOS, args.vocab_size, 5, 1.0, 1.0, 1.35)
    seen = mx.zeros((rows, args.vocab_size), dtype=mx.bool_)
    keys = mx.stack([mx.random.key(i) for i in range(rows)])
    tokens = mx.argmax(logits, axis=-1)
    mx.eval(tokens, seen, keys, cache.state)
    out = model.step_then(token_step, (seen, keys, mx.array(False)), tokens, 4, cache)
    with tempfile.TemporaryDirectory() as tmp:
        mx.export_to_dot(os.path.join(tmp, "step.dot"), *out, *cache.state)
        names = re.findall(r'label ="([^"]+)", shape=rectangle', Path(tmp, "step.dot").read_text())
    views = {"Reshape", "Slice", "Transpose", "Squeeze", "ExpandDims", "Broadcast", "AsStrided", "StopGradient"}
    counts: dict[str, int] = {"total": len(names), "views": sum(n in views for n in names)}
    for name in names:
        if name not in views:
            counts[name] = counts.get(name, 0) + 1
    counts["kernels"] = counts["total"] - counts["views"]
    return counts


def run(args: argparse.Namespace) -> dict[str, Any]:
    import mlx.core as mx

    from dora_primespeech_mlx.runtime import openblas_status
    from primespeech_devtools.bench import oracle_missing
    from primespeech_devtools.bench.weights import random_model_folder
    from primespeech_devtools.oracle import t2s as oracle

    device, dtype, torch_device = select_device(args)
    note = oracle_missing()
    settings = _settings(args)
    batches = sorted({int(n) for n in str(args.rows).split(",") if n.strip()} - {1})
    inputs = oracle.random_inputs(args.phones, args.prompt, seed=1)
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {"ours": [], "upstream": []}
    codes: dict[str, list[int]] = {}
    batched: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-t2s-") as tmp:
        folder = Path(tmp)
        if note is None:
            ckpt = _write_checkpoint(folder, args.layers)
        else:
            ckpt = random_model_folder("t2s", folder / "t2s", {"n_layer": args.layers})
        sides = {"ours": _Ours(ckpt, inputs, settings, args.steps, dtype, args.bits)}
        if not args.skip_oracle and note is None:
            sides["upstream"] = _Upstream(ckpt, inputs, settings, args.steps, folder, torch_device,
                                          "float32" if torch_device == "cpu" else dtype)
        try:
            for name, side in sides.items():  # warm-up: compilation, allocation
                _progress(f"warming up {name}")
                side()
            _progress(f"timing {args.repeat} runs of each side")
            gc.collect()
            start = mx.get_active_memory()
            mx.reset_peak_memory()
            # alternate the two so that a change in the machine's load hits both alike
            for _ in range(args.repeat):
                for name, side in sides.items():
                    seconds, codes[name] = side()
                    times[name].append(seconds)
            peak = mx.get_peak_memory()
            rows_peak = {1: peak - start}  # bytes above the start, by row count
            ours = sides["ours"]
            for n in batches:  # ours alone: one warm-up (new shapes compile), then the median
                _progress(f"ours with {n} rows")
                ours(n)
                # above what is active now, so that arrays left by others in this process do not count
                gc.collect()
                start = mx.get_active_memory()
                mx.reset_peak_memory()
                runs = [ours(n) for _ in range(args.repeat)]
                batched[n] = n * args.steps / statistics.median(t for t, _ in runs)
                rows_peak[n] = mx.get_peak_memory() - start
                if not all(len(c) == args.steps for c in runs[-1][1]):
                    raise RuntimeError(f"a row of the {n}-row batch stopped early")
            primitives = decode_primitives(ours.model)
        finally:
            if "upstream" in sides:
                sides["upstream"].close()
    rate = {name: len(codes[name]) / statistics.median(t) for name, t in times.items() if t}
    result: dict[str, Any] = {"note": note} if note else {}
    result |= {
        "benchmark": f"T2S {args.layers}-layer, {args.phones} phones + {args.prompt} prompt codes, "
                     f"{args.steps} {'sampled' if args.sampling else 'greedy'} codes, "
                     f"median of {args.repeat} alternating runs",
        "ours_tokens_per_s": round(rate["ours"], 1),
        "ours_times_s": [round(t, 3) for t in times["ours"]],
    }
    if "upstream" in rate:
        info = sides["upstream"].info
        result.update({
            "upstream_tokens_per_s": round(rate["upstream"], 1),
            "upstream_times_s": [round(t, 3) for t in times["upstream"]],
            "ratio": round(rate["ours"] / rate["upstream"], 2),
            "same_codes": codes["ours"] == codes["upstream"] if not args.sampling else None,
            "upstream": f"infer_panel_naive, torch {info['torch']}, {info['device']} {info['dtype']}"
                        + (f", {info['threads']} threads" if info["device"] == "cpu" else f", {info['card']}"),
        })
    if batched:
        result["ours_rows_tokens_per_s"] = {"1": round(rate["ours"], 1)} | {
            str(n): round(r, 1) for n, r in batched.items()}
        result["ours_rows_peak_memory_above_start_mb"] = {
            str(n): round(p / 2**20, 1) for n, p in rows_peak.items()}
    result.update({
        "codes": len(codes["ours"]),
        "ours": f"mlx {mx.__version__}, {mx.default_device()}, {dtype}"
                + (f", {args.bits}-bit weights" if args.bits < 16 else "") + f", {openblas_status()}",
        "ours_peak_memory_mb": round(peak / 2**20, 1),
        "decode_step": _decode_step(sides["ours"].model),
        "decode_step_primitives": primitives,
        "device": device_report(device),
        "blas_loaded": _loaded_blas(),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    })
    return result
