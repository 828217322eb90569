"""T2S decoding speed: our MLX generate against upstream's infer_panel_naive on the same random weights.

One official-format checkpoint with random full-size weights is written and converted; ours decodes
it in this process; the oracle decodes the same file in a child process started without our OpenBLAS
preload (with it, torch's OpenMP threads and the preloaded OpenBLAS's threads slow torch down several
times on 2 cores, which would flatter us). Runs alternate between the two so that changes in the
machine's load hit both alike. Both run the same number of greedy steps: EOS's logit row is zeroed
so that it is never the argmax, and early_stop_num ends both after exactly --steps codes.
Reported tokens/s include the prefill, as upstream's own figure does.
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
from typing import Any

from dora_primespeech_mlx import loading


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
    def __init__(self, ckpt: Path, inputs, settings, steps: int):
        from dora_primespeech_mlx.models import generate

        t0 = time.perf_counter()
        self.model = loading.load_model("t2s", ckpt)
        self.load_s = time.perf_counter() - t0
        self.generate = generate.generate
        phones, bert, prompt = inputs
        self.rows, self.prompt = [(phones, bert)], prompt
        self.kwargs = dict(settings, early_stop_num=steps - 1, seeds=[0])

    def __call__(self) -> tuple[float, list[int]]:
        t0 = time.perf_counter()
        codes = self.generate(self.model, self.rows, self.prompt, **self.kwargs)[0]
        return time.perf_counter() - t0, codes


def oracle_worker(ckpt: str, inputs_file: str, settings: dict[str, Any], steps: int) -> None:
    """Child process: load upstream's decoder from `ckpt`; for each line on stdin, run infer_panel_naive
    once and print {"seconds", "codes"} as one JSON line."""
    import numpy as np
    import torch

    from primespeech_devtools.oracle import import_upstream

    import_upstream()
    from AR.models.t2s_model import Text2SemanticDecoder

    data = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = Text2SemanticDecoder(data["config"], top_k=3)
    model.load_state_dict({k[len("model."):]: v.float() for k, v in data["weight"].items()})
    model.rebuild_t2s_transformer()
    model.eval()
    arrays = np.load(inputs_file)
    x = torch.as_tensor(arrays["phones"])[None]
    bert = torch.as_tensor(arrays["bert"])[None]
    prompt = torch.as_tensor(arrays["prompt"])[None]
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for _ in sys.stdin:
        t0 = time.perf_counter()
        with torch.no_grad():
            *_, (y, _idx) = model.infer_panel_naive(x, torch.tensor([x.shape[1]]), prompt, bert,
                                                     early_stop_num=steps - 1, **settings)
        seconds = time.perf_counter() - t0
        print(json.dumps({"seconds": seconds, "codes": y[0, prompt.shape[1]:].tolist()}), flush=True)


class _Upstream:
    """upstream's decoder in a child process started without our OpenBLAS preload: with it, torch's
    OpenMP threads and the preloaded OpenBLAS's threads slow torch down several times on 2 cores."""

    def __init__(self, ckpt: Path, inputs, settings, steps: int, folder: Path):
        import numpy as np

        phones, bert, prompt = inputs
        inputs_file = folder / "inputs.npz"
        np.savez(inputs_file, phones=phones, bert=bert, prompt=prompt)
        code = ("import json, sys; from primespeech_devtools.bench.t2s import oracle_worker; "
                "oracle_worker(**json.loads(sys.argv[1]))")
        payload = json.dumps(dict(ckpt=str(ckpt), inputs_file=str(inputs_file), settings=settings,
                                  steps=steps))
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    import mlx.core as mx

    from dora_primespeech_mlx.runtime import openblas_status
    from primespeech_devtools.bench import oracle_missing
    from primespeech_devtools.bench.weights import random_model_folder
    from primespeech_devtools.oracle import t2s as oracle

    note = oracle_missing()
    settings = _settings(args)
    inputs = oracle.random_inputs(args.phones, args.prompt, seed=1)
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {"ours": [], "upstream": []}
    codes: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-t2s-") as tmp:
        folder = Path(tmp)
        if note is None:
            ckpt = _write_checkpoint(folder, args.layers)
        else:
            ckpt = random_model_folder("t2s", folder / "t2s", {"n_layer": args.layers})
        sides = {"ours": _Ours(ckpt, inputs, settings, args.steps)}
        if not args.skip_oracle and note is None:
            sides["upstream"] = _Upstream(ckpt, inputs, settings, args.steps, folder)
        try:
            for side in sides.values():  # warm-up: compilation, allocation
                side()
            # alternate the two so that a change in the machine's load hits both alike
            for _ in range(args.repeat):
                for name, side in sides.items():
                    seconds, codes[name] = side()
                    times[name].append(seconds)
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
            "upstream": f"infer_panel_naive, torch {info['torch']}, {info['threads']} threads",
        })
    result.update({
        "codes": len(codes["ours"]),
        "ours": f"mlx {mx.__version__}, {mx.default_device()}, {sides['ours'].model.ar_audio_embedding.word_embeddings.weight.dtype}, "
                f"{openblas_status()}",
        "decode_step": _decode_step(sides["ours"].model),
        "blas_loaded": _loaded_blas(),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    })
    return result
