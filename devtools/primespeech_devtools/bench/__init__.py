"""Benchmarks: ours against the upstream PyTorch oracle on the same weights, in one run.

Each submodule exposes `add_arguments(parser)` and `run(args) -> dict`; `primespeech-mlx bench NAME`
prints the figures and the ratio. Without the oracle (torch and gpt-sovits-cpufast, which `make setup`
installs) each benchmark times ours only, on weights it makes without torch, and says so in the
result's "note".
"""

from __future__ import annotations

import importlib.util

BENCHMARKS = ("t2s", "sovits", "encoders", "frontend", "e2e", "effects")
ORACLE_MODULES = ("torch", "GPT_SoVITS")


def oracle_missing() -> str | None:
    """Why the upstream oracle cannot run here (a note for the result), or None when it can."""
    absent = [name for name in ORACLE_MODULES if importlib.util.find_spec(name) is None]
    if not absent:
        return None
    return (f"ours only: the upstream oracle is not installed ({', '.join(absent)} not found), so there is "
            "no upstream figure or ratio. `make setup` in a checkout installs it (torch, gpt-sovits-cpufast).")
