"""Shared fixtures. The upstream oracle (torch + gpt-sovits-cpufast) is installed by `make test`."""

from __future__ import annotations

import parity
import pytest


@pytest.fixture(scope="session")
def upstream():
    """Import upstream GPT-SoVITS once per session; returns its package folder."""
    from primespeech_devtools.oracle import import_upstream

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


def _load_t2s(path, native: bool):
    return parity.load_model("t2s", path, kernels=native)


@pytest.fixture(scope="session")
def load_t2s():
    """`load(path, native)`: our T2S model from `path`, with the CPU accelerator's native decoding (native,
    where the CPU library is built) or pure MLX (the accelerator switched off while it loads)."""
    return _load_t2s


def _t2s_decoder(tmp_path_factory, size: str, seed: int):
    """(upstream decoder with seeded random weights, our model loaded from its official .ckpt as the
    engine loads it (native decoding on the CPU where built), the path)."""
    from primespeech_devtools.oracle import t2s as oracle

    config = oracle.SMALL_CONFIG if size == "small" else oracle.FULL_CONFIG
    ref, path = oracle.write_random_checkpoint(tmp_path_factory.mktemp(size) / f"{size}.ckpt", config, seed)
    return ref, _load_t2s(path, native=True), path


@pytest.fixture(scope="session")
def t2s_small(tmp_path_factory, upstream):
    """The 2-layer T2S decoder, upstream's and ours on the same weights: (ref, model, ckpt path)."""
    return _t2s_decoder(tmp_path_factory, "small", seed=1)


@pytest.fixture(scope="session")
def t2s_full(tmp_path_factory, upstream):
    """The full-size (24-layer) T2S decoder, upstream's and ours on the same weights: (ref, model, ckpt path)."""
    return _t2s_decoder(tmp_path_factory, "full", seed=0)


@pytest.fixture(scope="session")
def t2s_small_mlx(t2s_small):
    """`t2s_small` with our model in pure MLX: (ref, model, ckpt path)."""
    ref, _, path = t2s_small
    return ref, _load_t2s(path, native=False), path


@pytest.fixture(scope="session")
def t2s_full_mlx(t2s_full):
    """`t2s_full` with our model in pure MLX: (ref, model, ckpt path)."""
    ref, _, path = t2s_full
    return ref, _load_t2s(path, native=False), path
