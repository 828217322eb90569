"""The gemv forwarder (dora_primespeech_mlx/native/gemv_forward.c) behind MLX's CPU matrix products.

Every layout MLX can hand to cblas_sgemm with one row or one column (transposed views, strided
slices, a bias through addmm, batched products) must equal numpy's float64 result; the forwarder's
own counter proves those calls went through sgemv and that other shapes did not.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from dora_primespeech_mlx import runtime

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux CPU backend only")

REL_TOL = 1e-5  # float32 dot products of length <= 700 against float64


@pytest.fixture(scope="module")
def mx():
    if runtime.gemv_forwarded_calls() is None:
        pytest.fail(f"the gemv forwarder is not loaded ({runtime.openblas_status()}): "
                    "pip install -e . builds dora_primespeech_mlx/native/_gemv_forward*.so")
    import mlx.core as mx

    mx.set_default_device(mx.cpu)
    return mx


def close(actual, expected) -> None:
    actual = np.asarray(actual, dtype=np.float64)
    scale = np.abs(expected).max()
    assert scale > 1.0  # informative values, not ~0
    assert np.abs(actual - expected).max() <= REL_TOL * scale


def forwarded(mx, fn) -> tuple[object, int]:
    before = runtime.gemv_forwarded_calls()
    out = fn()
    mx.eval(out)
    return out, runtime.gemv_forwarded_calls() - before


@pytest.mark.parametrize("a_view", ["plain", "transposed", "strided"])
@pytest.mark.parametrize("b_view", ["plain", "transposed", "strided"])
def test_one_row_products(mx, a_view, b_view):
    rng = np.random.default_rng(0)
    k, n = 300, 700
    x = rng.standard_normal((1, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    views = {
        "plain": lambda a: mx.array(a),
        "transposed": lambda a: mx.array(np.ascontiguousarray(a.T)).T,
        "strided": lambda a: mx.array(np.pad(a, ((0, 0), (3, 5))))[:, 3:3 + a.shape[1]],
    }
    out, calls = forwarded(mx, lambda: views[a_view](x) @ views[b_view](w))
    close(out, x.astype(np.float64) @ w)
    assert calls >= 1


@pytest.mark.parametrize("a_transposed", [False, True])
@pytest.mark.parametrize("b_transposed", [False, True])
def test_one_column_products(mx, a_transposed, b_transposed):
    rng = np.random.default_rng(1)
    m, k = 640, 257
    a = rng.standard_normal((m, k)).astype(np.float32)
    v = rng.standard_normal((k, 1)).astype(np.float32)
    A = mx.array(np.ascontiguousarray(a.T)).T if a_transposed else mx.array(a)
    V = mx.array(np.ascontiguousarray(v.T)).T if b_transposed else mx.array(v)
    out, calls = forwarded(mx, lambda: A @ V)
    close(out, a.astype(np.float64) @ v)
    assert calls >= 1


@pytest.mark.parametrize("weight_layout", ["out_in", "in_out"])
def test_addmm_keeps_the_bias_and_alpha_beta(mx, weight_layout):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 512)).astype(np.float32)
    w = rng.standard_normal((1536, 512)).astype(np.float32)  # [out, in], as torch stores it
    bias = rng.standard_normal(1536).astype(np.float32) * 10
    weight = mx.array(w).T if weight_layout == "out_in" else mx.array(np.ascontiguousarray(w.T))
    out, calls = forwarded(mx, lambda: mx.addmm(mx.array(bias), mx.array(x), weight, alpha=0.5, beta=2.0))
    close(out, 0.5 * (x.astype(np.float64) @ w.T) + 2.0 * bias)
    assert calls == 1


@pytest.mark.parametrize("a_transposed", [False, True])
def test_one_column_addmm(mx, a_transposed):
    rng = np.random.default_rng(6)
    a = rng.standard_normal((300, 200)).astype(np.float32)
    v = rng.standard_normal((200, 1)).astype(np.float32)
    c = rng.standard_normal((300, 1)).astype(np.float32) * 10
    A = mx.array(np.ascontiguousarray(a.T)).T if a_transposed else mx.array(a)
    out, calls = forwarded(mx, lambda: mx.addmm(mx.array(c), A, mx.array(v), alpha=1.5, beta=-1.0))
    close(out, 1.5 * (a.astype(np.float64) @ v) - c)
    assert calls == 1


def test_uninitialised_output_is_not_read(mx):
    """beta = 0 must ignore what the output buffer held: fill freed memory with NaN-rich garbage first."""
    rng = np.random.default_rng(3)
    for _ in range(3):
        mx.eval(mx.full((1, 4096), float("nan")))
    x = rng.standard_normal((1, 64)).astype(np.float32)
    w = rng.standard_normal((64, 4096)).astype(np.float32)
    out, _ = forwarded(mx, lambda: mx.array(x) @ mx.array(w))
    assert np.isfinite(np.asarray(out)).all()
    close(out, x.astype(np.float64) @ w)


def test_batched_attention_shapes(mx):
    """Decode attention: per head [1, d] @ [d, W] and [1, W] @ [W, d], as MLX's batched loop calls them."""
    rng = np.random.default_rng(4)
    q = rng.standard_normal((1, 16, 1, 32)).astype(np.float32)
    keys = rng.standard_normal((1, 16, 300, 32)).astype(np.float32)
    out, calls = forwarded(mx, lambda: (mx.array(q) @ mx.array(keys).swapaxes(-1, -2)) @ mx.array(keys))
    close(out, (q.astype(np.float64) @ keys.swapaxes(-1, -2)) @ keys)
    assert calls == 32


def test_full_matrices_stay_on_sgemm(mx):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((64, 128)).astype(np.float32)
    b = rng.standard_normal((128, 96)).astype(np.float32)
    out, calls = forwarded(mx, lambda: mx.array(a) @ mx.array(b))
    close(out, a.astype(np.float64) @ b)
    assert calls == 0


def skinny(mx, fn) -> tuple[object, int]:
    before = runtime.skinny_product_calls()
    out = fn()
    mx.eval(out)
    return out, runtime.skinny_product_calls() - before


@pytest.mark.parametrize("rows", [2, 3, 4, 5, 12, 16])
@pytest.mark.parametrize("threads", [1, 2])
def test_skinny_products_against_a_transposed_weight(mx, rows, threads):
    """2..16 rows times a [out, in] weight (batched decoding): computed by the forwarder itself, on one
    thread or split with its helper thread, odd sizes (tails of the 16-wide loop, an odd weight-row
    count) included; a bias through addmm with alpha and beta."""
    rng = np.random.default_rng(rows)
    k, n = 515, 771
    x = rng.standard_normal((rows, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) * 10
    with runtime.blas_threads(threads):
        out, calls = skinny(mx, lambda: mx.array(x) @ mx.array(w).T)
        close(out, x.astype(np.float64) @ w.T.astype(np.float64))
        assert calls == 1
        out, calls = skinny(mx, lambda: mx.addmm(mx.array(bias), mx.array(x), mx.array(w).T, alpha=0.5, beta=2.0))
        close(out, 0.5 * (x.astype(np.float64) @ w.T) + 2.0 * bias)
        assert calls == 1


def test_skinny_strided_rows_and_other_shapes(mx):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((6, 300)).astype(np.float32)
    w = rng.standard_normal((200, 280)).astype(np.float32)
    padded = mx.array(np.pad(x, ((0, 0), (7, 13))))[:, 7:287]  # rows with lda > k
    out, calls = skinny(mx, lambda: padded @ mx.array(w).T)
    close(out, x[:, :280].astype(np.float64) @ w.T)
    assert calls == 1
    cases = {  # rows, weight [out, in] or [in, out], out: none of them is a skinny product
        "17 rows (sgemm)": (rng.standard_normal((17, 64)), mx.array(rng.standard_normal((96, 64)).astype(np.float32)).T),
        "weight not transposed": (rng.standard_normal((4, 64)), mx.array(rng.standard_normal((64, 96)).astype(np.float32))),
        "too few outputs": (rng.standard_normal((4, 64)), mx.array(rng.standard_normal((32, 64)).astype(np.float32)).T),
    }
    for name, (a, weight) in cases.items():
        a = a.astype(np.float32)
        out, calls = skinny(mx, lambda a=a, weight=weight: mx.array(a) @ weight)
        close(out, a.astype(np.float64) @ np.array(weight).astype(np.float64))
        assert calls == 0, name


def test_skinny_products_from_two_streams_at_once(mx):
    """Two MLX CPU streams multiplying concurrently: the helper thread serves one, the other runs alone."""
    rng = np.random.default_rng(11)
    x = [rng.standard_normal((8, 512)).astype(np.float32) for _ in range(2)]
    w = rng.standard_normal((2048, 512)).astype(np.float32)
    weight = mx.array(w).T
    streams = [mx.default_stream(mx.cpu), mx.new_stream(mx.cpu)]
    with runtime.blas_threads(2):
        outs = []
        for _ in range(20):
            for xi, stream in zip(x, streams, strict=True):
                with mx.stream(stream):
                    outs.append(mx.array(xi) @ weight)
        mx.eval(outs)
    for i, out in enumerate(outs):
        close(out, x[i % 2].astype(np.float64) @ w.T)
