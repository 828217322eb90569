"""Benchmarks: ours against the upstream PyTorch oracle on the same weights, in one run.

Each submodule exposes `add_arguments(parser)` and `run(args) -> dict`; `primespeech-mlx bench NAME`
prints the figures and the ratio. Without the oracle (torch and gpt-sovits-cpufast, which `make setup`
installs) each benchmark times ours only, on weights it makes without torch, and says so in the
result's "note". `t2s`, `sovits` and `e2e` take `--device gpu`: ours on MLX's GPU and upstream on
torch-CUDA when torch sees a GPU (t2s, sovits; e2e's upstream stays on the CPU), in one run, with the card named.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from typing import Any

from dora_primespeech_mlx import runtime

BENCHMARKS = ("t2s", "sovits", "encoders", "frontend", "e2e", "effects")
ORACLE_MODULES = ("torch", "GPT_SoVITS")

# The CLI imports the benchmark modules (and through them MLX) while it builds its parser, before it
# calls runtime.prepare: set MLX's CUDA convolution plan cache and graph size now, as prepare would have.
runtime._cuda_settings()


def oracle_missing() -> str | None:
    """Why the upstream oracle cannot run here (a note for the result), or None when it can."""
    absent = [name for name in ORACLE_MODULES if importlib.util.find_spec(name) is None]
    if not absent:
        return None
    return (f"ours only: the upstream oracle is not installed ({', '.join(absent)} not found), so there is "
            "no upstream figure or ratio. `make setup` in a checkout installs it (torch, gpt-sovits-cpufast).")


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """`--device` and `--dtype`, shared by the benchmarks that run on a GPU."""
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="ours on MLX's CPU or GPU (auto: MLX's default device); with gpu, upstream runs "
                             "on torch-CUDA when torch sees a GPU")
    parser.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                        help="ours (and upstream on CUDA): auto is the engine's choice (float32 on the CPU, "
                             "float16 for T2S on a GPU)")


def select_device(args: argparse.Namespace) -> tuple[str, str, str]:
    """Make `args.device` MLX's default: (MLX device "cpu"/"gpu", dtype name, torch device for upstream,
    "cuda" only for a GPU run where torch sees one)."""
    chosen = runtime.select_runtime(getattr(args, "device", "auto"), getattr(args, "dtype", "auto"))
    torch_device = "cpu"
    if chosen.device == "gpu" and importlib.util.find_spec("torch") is not None:
        import torch

        torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    return chosen.device, chosen.dtype_name, torch_device


def device_report(device: str) -> dict[str, Any]:
    """MLX's device and, for a GPU, the card's name (MLX's device_info, else nvidia-smi)."""
    import mlx.core as mx

    report: dict[str, Any] = {"mlx": mx.__version__, "mlx_device": str(mx.default_device())}
    if device != "gpu":
        return report
    try:
        info = mx.device_info()
    except Exception:  # an MLX without device_info: the card from nvidia-smi below
        info = {}
    name = info.get("device_name") or info.get("name")
    if not name:
        try:
            name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                  text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            name = None
    report["card"] = name
    report["mlx_device_info"] = {k: str(v) for k, v in info.items()}
    report["python"] = sys.version.split()[0]
    return report
