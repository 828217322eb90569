"""Shared fixtures. The upstream oracle (torch + gpt-sovits-cpufast) is installed by `make test`."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def upstream():
    """Import upstream GPT-SoVITS once per session; returns its package folder."""
    from dora_primespeech_mlx.oracle import import_upstream

    return import_upstream()


@pytest.fixture(scope="module")
def torch_single_thread():
    """One torch thread while a module runs: the oracle shares the process with MLX's OpenBLAS threads,
    and torch's OpenMP threads spinning between calls then starve both on a 2-core machine."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
