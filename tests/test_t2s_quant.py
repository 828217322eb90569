"""Quantized T2S weights (`t2s.quantize`, PRIMESPEECH_T2S_BITS): structure, closeness, refusals (tiny model).

The drift of the full-size model in half precision on a GPU is measured in tests/test_gpu_t2s.py and
docs/benchmarks.md; here MLX's own step on the CPU, on a tiny model, against the same model unquantized.
"""

from __future__ import annotations

import numpy as np
import pytest

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS before MLX)
from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.models import generate, t2s

TINY = t2s.ModelArgs(phoneme_vocab_size=40, embedding_dim=64, hidden_dim=64, head=4, n_layer=2, bert_dim=16)

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402


def _model(seed=0):
    mx.random.seed(seed)
    model = t2s.Model(TINY)
    model.ar_predict_layer.weight = mx.random.normal((1025, 64)) * 0.5
    model.eval()
    mx.eval(model.parameters())
    return model


def _forced(model, codes):
    rng = np.random.default_rng(0)
    phones, bert = rng.integers(0, 40, 9).astype(np.int32), rng.standard_normal((16, 9)).astype(np.float32)
    prompt = rng.integers(0, 1024, 5)
    x, pads = generate.prefill_input(model, [(mx.array(phones), mx.array(bert))], prompt)
    cache = model.make_cache(pads)
    out = [model.prefill(x, 9, cache)]
    for i, code in enumerate(codes):
        out.append(model.step(mx.array([code], dtype=mx.int32), 5 + i, cache))
    return np.concatenate([np.array(o) for o in out])


@pytest.mark.parametrize("bits,tol", [(8, 0.02), (4, 0.3)])
def test_quantized_model_tracks_the_original(bits, tol):
    ref = _model()
    quantized = t2s.quantize(_model(), bits)
    layer = quantized.layers[0]
    assert isinstance(layer.self_attn.in_proj, nn.QuantizedLinear) and "in_proj_weight" not in layer.self_attn
    assert isinstance(layer.linear1, nn.QuantizedLinear) and isinstance(quantized.ar_predict_layer, nn.QuantizedLinear)
    assert isinstance(quantized.bert_proj, nn.Linear) and layer.linear1.bits == bits
    codes = list(range(100, 120))
    a, b = _forced(ref, codes), _forced(quantized, codes)
    assert np.abs(a - b).max() / np.abs(a).max() < tol
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= (0.9 if bits == 8 else 0.5)
    rows = [(np.arange(7) % 40, np.zeros((16, 7), np.float32))] * 2
    out = generate.generate(quantized, rows, np.arange(5), seeds=[1, 2], top_k=5, max_tokens=12)
    assert [len(c) for c in out] == [12, 12]


def test_quantize_refuses_other_widths_and_native_twins():
    with pytest.raises(PrimeSpeechError, match="8 or 4 bits"):
        t2s.quantize(_model(), 16)
    model = _model()
    model.step = lambda *a: None  # what the CPU accelerator installs: its own decode step
    with pytest.raises(PrimeSpeechError, match="packed weights"):
        t2s.quantize(model, 8)
