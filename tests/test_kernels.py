"""models/kernels.py: the CPU element-wise kernels and softmax attention against float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dora_primespeech_mlx.models import kernels

mx = pytest.importorskip("mlx.core")

ATTENTION_TOL = 1e-5  # float32 attention against float64, relative to the output's peak


def test_fast_elementwise_kernels_are_accurate():
    # GELU's rational erf and the softmax exp against float64 references.
    x = np.linspace(-12, 12, 200001).astype(np.float32)
    erf = np.vectorize(math.erf)
    exact = 0.5 * x.astype(np.float64) * (1 + erf(x.astype(np.float64) / math.sqrt(2)))
    assert np.max(np.abs(np.array(kernels.gelu(mx.array(x))) - exact)) < 2e-6
    xs = np.linspace(-80, 0, 200001).astype(np.float32)
    assert np.max(np.abs(np.array(kernels.exp_nonpositive(mx.array(xs))) - np.exp(xs.astype(np.float64)))) < 2e-7
    assert np.array(kernels.exp_nonpositive(mx.array(np.array([-np.inf, np.finfo(np.float32).min], np.float32)))).tolist() == [0.0, 0.0]


def reference_attention(q, k, v, scale, allowed):
    scores = (q.astype(np.float64) * scale) @ np.swapaxes(k.astype(np.float64), -1, -2)
    scores = np.where(allowed, scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)) @ v.astype(np.float64)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive_inf", "additive_min"])
@pytest.mark.parametrize("device", ["cpu", "default"])
def test_attention_matches_softmax_reference(mask_kind, device):
    rng = np.random.default_rng(0)
    b, h, t, s, d = 1, 4, 37, 53, 32
    q, k, v = (rng.standard_normal(shape).astype(np.float32) * 2 for shape in
               ((b, h, t, d), (b, h, s, d), (b, h, s, d)))
    # causal-like pattern with every row keeping at least one key
    allowed = np.arange(s)[None, :] <= np.arange(t)[:, None] + 10
    mask = {"none": None, "bool": mx.array(allowed),
            "additive_inf": mx.array(np.where(allowed, 0.0, -np.inf).astype(np.float32)),
            "additive_min": mx.array(np.where(allowed, 0.0, np.finfo(np.float32).min).astype(np.float32))}[mask_kind]
    expected = reference_attention(q, k, v, 0.17, allowed if mask is not None else True)
    previous = mx.default_device()
    if device == "cpu":
        mx.set_default_device(mx.cpu)
    try:
        out = np.array(kernels.attention(mx.array(q), mx.array(k), mx.array(v), 0.17, mask))
    finally:
        mx.set_default_device(previous)
    assert np.abs(expected).max() > 0.5  # informative, not ~0
    assert np.abs(out - expected).max() <= ATTENTION_TOL * np.abs(expected).max()
