"""Benchmarks: ours against the upstream PyTorch oracle on the same weights, in one run.

Each submodule exposes `add_arguments(parser)` and `run(args) -> dict`; `primespeech-mlx bench NAME`
prints the figures and the ratio.
"""

BENCHMARKS = ("t2s", "sovits", "encoders", "frontend", "e2e")
