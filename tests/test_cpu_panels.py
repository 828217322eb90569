"""Products on packed weight panels (cpu/native/panels.c) against float64 NumPy.

REL_TOL = max|ours - exact| / max|exact| for float32 arithmetic."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS before MLX)
from dora_primespeech_mlx.cpu.library import load as panel_library
from dora_primespeech_mlx.cpu.panels import PackedLinear, pack_panels, unpack_panels
from dora_primespeech_mlx.errors import PrimeSpeechError

REL_TOL = 1e-5

pytestmark = pytest.mark.skipif(panel_library() is None, reason="the CPU library is not built")


@pytest.fixture(params=["auto", "generic"])
def kernel(request):
    """The kernel the products use: the machine's best ("auto") or the generic vector one."""
    lib = panel_library()
    avx512 = lib.panel_force_generic(request.param == "generic")
    assert not (avx512 and request.param == "generic")
    yield request.param
    lib.panel_force_generic(0)


@pytest.mark.parametrize("rows", [1, 5, 12, 13, 52, 100])
@pytest.mark.parametrize("n,k", [(1025, 64), (96, 512), (32, 7)])
@pytest.mark.parametrize("half", [True, False], ids=["float16-values", "float32-values"])
def test_packed_product_matches_numpy(rows, n, k, half, kernel):
    rng = np.random.default_rng(rows * 1000 + n + k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    if half:
        w = w.astype(np.float16).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    linear = PackedLinear(panel_library(), w, b)
    assert linear.half == half and linear.panels.dtype == (np.float16 if half else np.float32)
    exact = x.astype(np.float64) @ w.T.astype(np.float64) + b
    for threads in (1, 2):
        ours = linear(x, threads=threads)
        assert np.abs(ours - exact).max() / np.abs(exact).max() < REL_TOL


def test_panel_layout():
    w = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    panels = pack_panels(panel_library(), w, half=False)
    assert panels.shape == (2, 3, 32)
    np.testing.assert_array_equal(panels[0], w[:32].T)
    np.testing.assert_array_equal(panels[1, :, :8], w[32:].T)
    assert not panels[1, :, 8:].any()
    assert pack_panels(panel_library(), w, half=True).dtype == np.float16  # small integers: exact
    assert pack_panels(panel_library(), w + 1e-3, half=True) is None
    assert pack_panels(panel_library(), w + 1e-3).dtype == np.float32


@pytest.mark.parametrize("half", [True, False])
def test_unpacked_panels_are_the_transposed_weight(half):
    import mlx.core as mx

    w = np.random.default_rng(3).standard_normal((70, 9)).astype(np.float16 if half else np.float32)
    panels = pack_panels(panel_library(), w.astype(np.float32), half=half)
    unpacked = np.array(unpack_panels(mx.array(panels), 70))
    assert unpacked.dtype == np.float32
    np.testing.assert_array_equal(unpacked, w.astype(np.float32).T)


def test_bad_input_is_refused():
    linear = PackedLinear(panel_library(), np.ones((32, 8), np.float32))
    with pytest.raises(PrimeSpeechError, match="float32"):
        linear(np.ones((2, 8), np.float64))
    with pytest.raises(PrimeSpeechError, match="C-contiguous"):
        linear(np.ones((8, 2), np.float32).T)


def test_a_forked_child_computes_alone():
    """The helper thread does not survive fork: the child must start its own, not wait forever."""
    linear = PackedLinear(panel_library(), np.random.default_rng(0).random((256, 64), dtype=np.float32))
    x = np.random.default_rng(1).random((5, 64), dtype=np.float32)
    expected = linear(x, threads=2)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        signal.alarm(30)  # a hang kills the child (test fails) instead of the suite
        os._exit(0 if np.array_equal(linear(x, threads=2), expected) else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
