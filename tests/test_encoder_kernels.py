"""The native encoder kernels (dora_primespeech_mlx/cpu/native/encoders.c) against float64 NumPy.

Each kernel runs on several buffers (one thread each) with odd sizes (tails shorter than a vector,
pieces of different lengths) and must match a float64 reference computed from the same float32
inputs, relative to the reference's peak: KERNEL_TOL for element-wise kernels, PRODUCT_TOL for the
products (float32 accumulation over up to ~1500 terms). The encoder models' own parity tests
(test_hubert.py, test_roberta.py) run these kernels end to end against upstream.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from dora_primespeech_mlx.cpu import library
from dora_primespeech_mlx.cpu import ops as native_ops

mx = pytest.importorskip("mlx.core")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux CPU kernels")

KERNEL_TOL = 2e-6
PRODUCT_TOL = 2e-6


@pytest.fixture(scope="module", autouse=True)
def native():
    mx.set_default_device(mx.cpu)
    if native_ops.native_kernels() is None or not native_ops.native_attention_available():
        pytest.fail("the native encoder kernels are not loaded: pip install -e . builds "
                    "dora_primespeech_mlx/cpu/_kernels*.so (needs a C compiler and OpenBLAS)")


def close(actual, expected, tol) -> None:
    expected = np.asarray(expected, dtype=np.float64)
    scale = np.abs(expected).max()
    assert scale > 0.1  # informative values
    assert np.abs(np.asarray(actual, dtype=np.float64) - expected).max() <= tol * scale


def gelu64(x):
    erf = np.vectorize(math.erf)
    x = x.astype(np.float64)
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def softmax64(x, scale):
    z = x.astype(np.float64) * scale
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_gelu_and_layer_norm():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-12, 12, 20011), [0.0, -0.0, 1e-30, 50.0, -50.0]]).astype(np.float32)
    buffers = [x[:1001].copy(), x[1001:].copy()]  # NumPy buffers too; sizes not multiples of 16
    native_ops.native_gelu_(buffers)
    close(np.concatenate(buffers), gelu64(x), KERNEL_TOL)

    cols = 96
    xs = [rng.standard_normal((n, cols)).astype(np.float32) * 3 + 1 for n in (7, 30)]
    rs = [rng.standard_normal((n, cols)).astype(np.float32) for n in (7, 30)]
    w, b = rng.standard_normal(cols).astype(np.float32), rng.standard_normal(cols).astype(np.float32)
    outs = [r.copy() for r in rs]  # in place over the residual, as the encoders call it
    native_ops.native_add_layer_norm_(outs, xs, outs, w, b, 1e-5)
    for out, x_, r in zip(outs, xs, rs, strict=True):
        v = x_.astype(np.float64) + r
        ref = (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5) * w + b
        close(out, ref, KERNEL_TOL)


def test_windows_and_small_conv_gelu():
    rng = np.random.default_rng(1)
    signal = rng.standard_normal(1000).astype(np.float32)
    hop, k, rows = 5, 10, [60, 131]
    weight = (rng.standard_normal((k, 48)) * 0.5).astype(np.float32)
    shift = rng.standard_normal(48).astype(np.float32)
    starts = [0, hop * 60]
    outs = [np.empty((r, 48), np.float32) for r in rows]
    native_ops.native_small_conv_gelu([signal[s:] for s in starts], rows, hop, weight, shift, outs)
    frames = np.stack([signal[t * hop: t * hop + k] for t in range(sum(rows))]).astype(np.float64)
    close(np.concatenate(outs), gelu64((frames @ weight + shift).astype(np.float32)), KERNEL_TOL)

    x = rng.standard_normal((41, 32)).astype(np.float32)
    outs = [np.empty((r, 96), np.float32) for r in (9, 10)]
    native_ops.native_windows([x.reshape(-1), x.reshape(-1)[9 * 64:]], [9, 10], 64, 96, outs)
    expected = np.stack([x.reshape(-1)[t * 64: t * 64 + 96] for t in range(19)])
    np.testing.assert_array_equal(np.concatenate(outs), expected)


@pytest.mark.parametrize("t", [41, 43, 44])  # odd and even output counts (the last pair half used)
def test_pair_conv_is_a_kernel_3_stride_2_conv(t):
    rng = np.random.default_rng(t)
    c_in, c_out = 32, 48
    x = rng.standard_normal((t, c_in)).astype(np.float32)
    w = (rng.standard_normal((c_out, 3, c_in)) / math.sqrt(3 * c_in)).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    rows = (t - 3) // 2 + 1
    out = np.empty((2 * (-(-rows // 2)), c_out), np.float32)
    scratch = native_ops.Scratch()
    native_ops.native_pair_conv(x, w, w[:, 0] + w[:, 2], b, out, scratch, threads=2)
    frames = np.stack([x[2 * i: 2 * i + 3].reshape(-1) for i in range(rows)]).astype(np.float64)
    ref = frames @ w.reshape(c_out, -1).T.astype(np.float64) + b
    close(out[:rows], gelu64(ref.astype(np.float32)), PRODUCT_TOL)


def test_grouped_conv():
    rng = np.random.default_rng(2)
    t, groups, c, kernel = 45, 4, 64, 16  # 16 channels per group, output rows not a block multiple
    x = rng.standard_normal((t, c)).astype(np.float32)
    w = (rng.standard_normal((c, kernel, c // groups)) / math.sqrt(kernel * c // groups)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    pad = kernel // 2
    xp = np.zeros((t + 2 * pad + native_ops.native_conv_rows() - 1, c), np.float32)
    xp[pad: pad + t] = x
    # [out, kernel, in/groups] -> [groups, kernel, in/groups, out/groups]
    layout = np.ascontiguousarray(w.reshape(groups, c // groups, kernel, c // groups).transpose(0, 2, 3, 1))
    out = np.array(native_ops.native_grouped_conv(xp, layout, bias, t, threads=2))
    ref = np.empty((t, c))
    xp64, w64 = xp.astype(np.float64), w.astype(np.float64)
    for g in range(groups):
        cols = slice(g * (c // groups), (g + 1) * (c // groups))
        for i in range(t):
            ref[i, cols] = np.einsum("ki,oki->o", xp64[i: i + kernel, cols], w64[cols]) + bias[cols]
    close(out, ref, PRODUCT_TOL)


def test_linear_and_attention_through_blas():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((23, 80)).astype(np.float32)
    w = (rng.standard_normal((48, 80)) / math.sqrt(80)).astype(np.float32)
    b = rng.standard_normal(48).astype(np.float32)
    ref = x.astype(np.float64) @ w.T + b
    for threads in (1, 2):
        close(native_ops.native_linear(x, w, b, threads=threads), ref, PRODUCT_TOL)
        close(native_ops.native_linear(mx.array(x), mx.array(w), mx.array(b), gelu=True, threads=threads),
              gelu64(ref.astype(np.float32)), PRODUCT_TOL)

    heads, dh = 3, 16
    rows = (9, 14)  # time pieces of different lengths, as separate arrays and as views of one
    q, k, v = (rng.standard_normal((sum(rows), heads * dh)).astype(np.float32) * 1.5 for _ in range(3))
    pieces = [(0, 9), (9, 23)]
    ref = np.empty((sum(rows), heads * dh))
    for h in range(heads):
        cols = slice(h * dh, (h + 1) * dh)
        weights = softmax64(q[:, cols].astype(np.float64) @ k[:, cols].T.astype(np.float64), 0.25)
        ref[:, cols] = weights @ v[:, cols]
    for copies in (True, False):
        keys, values = ([a[s:e].copy() if copies else a[s:e] for s, e in pieces] for a in (k, v))
        outs = native_ops.native_attention([q[s:e] for s, e in pieces], keys, values, heads, 0.25)
        close(np.concatenate([np.array(o) for o in outs]), ref, PRODUCT_TOL)

    # A key scored far below the others weighs exactly 0 (no denormal leftovers): its huge value
    # would otherwise show in the output.
    q = np.ones((4, 16), np.float32)
    k = np.concatenate([rng.standard_normal((3, 16)), np.full((1, 16), -50.0)]).astype(np.float32)
    v = np.concatenate([rng.standard_normal((3, 16)), np.full((1, 16), 1e38)]).astype(np.float32)
    out = np.array(native_ops.native_attention([q], [k], [v], 1, 1.0)[0])
    weights = softmax64(q.astype(np.float64) @ k[:3].T.astype(np.float64), 1.0)
    close(out, weights @ v[:3], PRODUCT_TOL)
    with pytest.raises(ValueError):  # keys and values come with their queries
        native_ops.native_attention([q[:2]], [k], [v], 1, 1.0)


def test_rejects_what_it_cannot_take():
    with pytest.raises(ValueError):
        native_ops.native_gelu_([np.zeros((4, 4), np.float64)])
    with pytest.raises(ValueError):
        native_ops.native_gelu_([np.zeros((4, 8), np.float32)[:, ::2]])  # not contiguous
    with pytest.raises(ValueError):  # width not a multiple of 16
        native_ops.native_add_layer_norm_([np.zeros((2, 24), np.float32)], [np.zeros((2, 24), np.float32)],
                                       [np.zeros((2, 24), np.float32)], np.ones(24, np.float32),
                                       np.zeros(24, np.float32), 1e-5)
    with pytest.raises(ValueError):
        native_ops.native_linear(np.zeros((2, 8), np.float32), np.zeros((24, 8), np.float32),
                              np.zeros(24, np.float32))


def test_can_be_switched_off():
    assert library.sgemm_bound()  # the global cblas_sgemm (MLX's OpenBLAS) was bound
    library.set_enabled(False)
    try:
        assert native_ops.native_kernels() is None and not native_ops.native_attention_available()
    finally:
        library.set_enabled(True)
    assert native_ops.native_kernels() is not None
