"""T2S on MLX's GPU (CUDA on the accelerator machine, Metal on a Mac), against upstream and our CPU path.

Runs only where MLX's default device is a GPU. The decode step there is the model's own compiled
MLX step with sampling traced into it (`Model.step_then`); its greedy codes must be upstream's in
float32 (which tests/test_t2s.py holds our CPU path to), and batching must not change a row's codes. Half precision and quantized
weights are held to the drift measured on the same random weights (docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np
import pytest

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS before MLX)
from dora_primespeech_mlx import loading
from dora_primespeech_mlx.models import generate, t2s

N = 150

import mlx.core as mx  # noqa: E402

pytestmark = pytest.mark.skipif(mx.default_device() != mx.gpu,
                                reason="MLX's default device is not a GPU (CPU-only MLX build or no GPU)")

GREEDY = dict(top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.35, early_stop_num=N - 1)


@pytest.fixture(scope="module")
def full(tmp_path_factory, upstream):
    """Upstream's full-size decoder (seeded random fp16-exact weights), its checkpoint, and inputs."""
    from primespeech_devtools.oracle import t2s as oracle

    ref, path = oracle.write_random_checkpoint(tmp_path_factory.mktemp("gpu") / "full.ckpt", oracle.FULL_CONFIG, 0)
    phones, bert, prompt = oracle.random_inputs(45, 90, seed=11)
    return ref, path, (phones, bert, prompt)


def _load(path, dtype: str):
    return loading.load_model("t2s", path, dtype=dtype)


def _codes(model, phones, bert, prompt, seed=0, **kw):
    return generate.generate(model, [(phones, bert)], prompt, seeds=[seed], **(GREEDY | kw))[0]


def _forced(model, phones, bert, prompt, codes) -> np.ndarray:
    """Logits [len(codes), vocab] of the prefill and the steps fed `codes` (teacher forcing), float32."""
    x, pads = generate.prefill_input(model, [(mx.array(np.asarray(phones, np.int32)), mx.array(bert))], prompt)
    cache = model.make_cache(pads)
    out = [model.prefill(x, x.shape[1] - len(prompt), cache)]
    for i, code in enumerate(codes[:-1]):
        out.append(model.step(mx.array([code], dtype=mx.int32), len(prompt) + i, cache))
    return np.concatenate([np.array(o.astype(mx.float32)) for o in out])


def test_gpu_fp32_greedy_codes_are_upstreams(full):
    """Upstream's float32 codes (and so our CPU path's: tests/test_t2s.py holds those equal)."""
    from primespeech_devtools.oracle import t2s as oracle

    ref, path, (phones, bert, prompt) = full
    up = oracle.run_naive(ref, phones, bert, prompt, **GREEDY).codes
    model = _load(path, "float32")
    assert model.compiled_decoding and model.ar_predict_layer.weight.dtype == mx.float32
    assert len(up) == N and len(set(up)) >= 40, "random weights too degenerate for a meaningful comparison"
    assert _codes(model, phones, bert, prompt) == up


def test_gpu_batched_rows_get_their_codes_alone(full):
    from primespeech_devtools.oracle import t2s as oracle

    _, path, _ = full
    model = _load(path, "float32")
    rows, prompt = oracle.random_rows((45, 28, 36, 40), 90, seed=11)
    seeds = [5, 6, 7, 8]
    kw = GREEDY | dict(top_k=5, early_stop_num=59)  # sampled: each row draws from its own key
    batch = generate.generate(model, rows, prompt, seeds=seeds, **kw)
    alone = [generate.generate(model, [row], prompt, seeds=[seed], **kw)[0] for row, seed in zip(rows, seeds, strict=True)]
    assert batch == alone


def test_gpu_fp16_tracks_fp32(full):
    """float16 (the GPU default): teacher-forced on the float32 codes, its next-code choice agrees at
    nearly every step and its logits stay close."""
    _, path, (phones, bert, prompt) = full
    fp32 = _load(path, "float32")
    codes = _codes(fp32, phones, bert, prompt)
    a = _forced(fp32, phones, bert, prompt, codes)
    b = _forced(_load(path, "float16"), phones, bert, prompt, codes)
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.95
    assert np.abs(a - b).max() / np.abs(a).max() < 2e-2


@pytest.mark.parametrize("bits,min_top1,max_kl", [(8, 0.95, 1e-2), (4, 0.6, 0.5)])
def test_gpu_quantized_drift_is_bounded(full, bits, min_top1, max_kl):
    _, path, (phones, bert, prompt) = full
    fp16 = _load(path, "float16")
    codes = _codes(fp16, phones, bert, prompt)
    quantized = t2s.quantize(_load(path, "float16"), bits)
    assert len(_codes(quantized, phones, bert, prompt)) == N
    a = _forced(fp16, phones, bert, prompt, codes).astype(np.float64)
    b = _forced(quantized, phones, bert, prompt, codes).astype(np.float64)
    la = a - a.max(-1, keepdims=True)
    la -= np.log(np.exp(la).sum(-1, keepdims=True))
    lb = b - b.max(-1, keepdims=True)
    lb -= np.log(np.exp(lb).sum(-1, keepdims=True))
    kl = (np.exp(la) * (la - lb)).sum(-1).mean()
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= min_top1
    assert kl < max_kl
