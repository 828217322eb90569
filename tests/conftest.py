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


def _t2s_decoder(tmp_path_factory, size: str, seed: int):
    """(upstream decoder with seeded random weights, our model loaded from its official .ckpt, the path)."""
    import dora_primespeech_mlx  # noqa: F401  (OpenBLAS before MLX)
    from dora_primespeech_mlx.models import t2s
    from dora_primespeech_mlx.oracle import t2s as oracle

    config = oracle.SMALL_CONFIG if size == "small" else oracle.FULL_CONFIG
    ref, path = oracle.write_random_checkpoint(tmp_path_factory.mktemp(size) / f"{size}.ckpt", config, seed)
    return ref, t2s.load_model(path), path


@pytest.fixture(scope="session")
def t2s_small(tmp_path_factory, upstream):
    """The 2-layer T2S decoder, upstream's and ours on the same weights: (ref, model, ckpt path)."""
    return _t2s_decoder(tmp_path_factory, "small", seed=1)


@pytest.fixture(scope="session")
def t2s_full(tmp_path_factory, upstream):
    """The full-size (24-layer) T2S decoder, upstream's and ours on the same weights: (ref, model, ckpt path)."""
    return _t2s_decoder(tmp_path_factory, "full", seed=0)
