"""The CPU accelerator's native T2S decoding (cpu/t2s.py over cpu/native/t2s.c) against upstream and
against MLX's decoding.

Logits are compared with REL_TOL = max|ours - upstream| / max|upstream|; greedy codes token-exact.
Float16 and float32 weight panels, one and two threads, a row alone and in a batch must give
bit-identical logits (the same float32 arithmetic in the same order).
"""

from __future__ import annotations

import numpy as np
import pytest
from mlx.utils import tree_flatten
from parity import rel_err

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS before MLX)
from dora_primespeech_mlx import cpu
from dora_primespeech_mlx.cpu import library
from dora_primespeech_mlx.cpu import t2s as native
from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.models.generate import generate, prefill_input
from dora_primespeech_mlx.runtime import blas_threads
from primespeech_devtools.oracle import t2s as oracle

REL_TOL = 1e-4
GREEDY = dict(top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.0)

import mlx.core as mx  # noqa: E402

pytestmark = pytest.mark.skipif(library.load() is None, reason="the CPU library is not built")


@pytest.fixture(scope="module", autouse=True)
def _single_thread(torch_single_thread):
    yield


def _forced(model, rows, prompt, codes_per_row, keep=None, threads=None):
    """Logits [B, V] of the prefill and of every decode step fed `codes_per_row` (teacher forcing),
    through the model's decoding API; `keep`: the rows decoded after the prefill; `threads`: the BLAS
    threads (and so the native step's) while stepping."""
    prompt = np.zeros(0, np.int64) if prompt is None else prompt
    x, pads = prefill_input(model, [(mx.array(p.astype(np.int32)), mx.array(b)) for p, b in rows], prompt)
    cache = model.make_cache(pads)
    out = [np.array(model.prefill(x, x.shape[1] - len(prompt), cache))]
    if keep is not None:
        cache.filter(keep)
    codes = np.asarray(codes_per_row)[keep if keep is not None else slice(None)]
    for step in range(codes.shape[1]):
        tokens = mx.array(codes[:, step].astype(np.int32))
        if threads is None:
            out.append(np.array(model.step(tokens, len(prompt) + step, cache)))
        else:
            with blas_threads(threads):
                out.append(np.array(model.step(tokens, len(prompt) + step, cache)))
    return out


def test_native_logits_match_upstream_full_size(t2s_full):
    """Full-size model, left-padded rows with a prompt: the prefill and every decode step within
    REL_TOL of upstream."""
    ref, model, _ = t2s_full
    assert isinstance(model.ar_predict_layer, native.PanelLinear), "the loader installs the native decoding"
    rows, prompt = oracle.random_rows((40, 23, 31), 60, seed=21)
    ups = [oracle.run_naive(ref, p, b, prompt, **GREEDY, early_stop_num=9) for p, b in rows]
    assert all(len(up.logits) > 8 for up in ups)
    forced = _forced(model, rows, prompt, [up.codes[:8] for up in ups])
    for step, logits in enumerate(forced):  # step 0: the prefill
        for row, up in enumerate(ups):
            assert np.ptp(up.logits[step]) > 0.3, "random weights give flat logits"
            err = rel_err(logits[row], up.logits[step])
            assert err < REL_TOL, f"row {row} step {step}: REL {err:.2e}"
    assert model.ar_predict_layer.half, "official checkpoints hold float16 values"


def test_native_greedy_past_the_first_buffer(t2s_small):
    """More steps than the first buffer holds (GROW): the grown buffers keep every row token-exact."""
    ref, model, _ = t2s_small
    rows, prompt = oracle.random_rows((30, 17), 12, seed=5)
    steps = native.GROW + 40
    ups = [oracle.run_naive(ref, p, b, prompt, **GREEDY, early_stop_num=steps - 1).codes for p, b in rows]
    assert all(len(c) == steps for c in ups)
    assert generate(model, rows, prompt, seeds=[0, 1], **GREEDY, early_stop_num=steps - 1) == ups


def test_generic_kernel_decodes_like_upstream(t2s_small):
    """The generic (non-AVX-512) product kernel, forced on this machine, stays token-exact."""
    ref, model, _ = t2s_small
    rows, prompt = oracle.random_rows((26, 19), 15, seed=9)
    ups = [oracle.run_naive(ref, p, b, prompt, **GREEDY, early_stop_num=79).codes for p, b in rows]
    lib = library.load()
    assert lib.panel_force_generic(1) == 0
    try:
        assert generate(model, rows, prompt, seeds=[0, 1], **GREEDY, early_stop_num=79) == ups
    finally:
        lib.panel_force_generic(0)


def test_switched_off_the_model_stays_mlx_and_matches_upstream(t2s_small, load_t2s):
    """With the accelerator off, loading leaves the model pure MLX, which decodes as upstream too."""
    ref, _, path = t2s_small
    model = load_t2s(path, native=False)
    assert not isinstance(model.ar_predict_layer, native.PanelLinear) and "step" not in vars(model)
    rows, prompt = oracle.random_rows((26, 19, 33), 15, seed=8)
    ups = [oracle.run_naive(ref, p, b, prompt, **GREEDY, early_stop_num=99).codes for p, b in rows]
    assert generate(model, rows, prompt, seeds=[0, 1, 2], **GREEDY, early_stop_num=99) == ups
    assert generate(model, rows[:1], prompt, seeds=[0], **GREEDY, early_stop_num=99) == ups[:1]


def test_native_and_mlx_steps_agree(t2s_small, t2s_small_mlx):
    rows, prompt = oracle.random_rows((20, 35), 9, seed=3)
    codes = [list(range(5, 45)), list(range(100, 140))]
    native_logits = _forced(t2s_small[1], rows, prompt, codes)
    mlx_logits = _forced(t2s_small_mlx[1], rows, prompt, codes)
    for a, b in zip(native_logits, mlx_logits, strict=True):
        assert rel_err(a, b) < REL_TOL


def test_rows_panels_and_threads_are_bit_identical(t2s_small, load_t2s):
    """The decode step gives the same bits to a row alone or in a batch, with float16 or float32
    panels, on one or two threads."""
    _, model, path = t2s_small
    wide = load_t2s(path, native=False)
    assert native.install(wide, half=False) and not wide.ar_predict_layer.half
    assert model.ar_predict_layer.half
    rows, prompt = oracle.random_rows((20, 35, 12), 9, seed=3)
    codes = np.stack([np.arange(5, 25), np.arange(100, 120), np.arange(300, 320)])

    batch = _forced(model, rows, prompt, codes, threads=1)
    for a, b in zip(batch[1:], _forced(model, rows, prompt, codes, keep=[1], threads=1)[1:], strict=True):
        np.testing.assert_array_equal(a[1:2], b)
    for a, b in zip(batch, _forced(model, rows, prompt, codes, threads=2), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(batch, _forced(wide, rows, prompt, codes, threads=1), strict=True):
        np.testing.assert_array_equal(a, b)


def test_weights_that_are_not_half_stay_float32(t2s_small, load_t2s):
    _, _, path = t2s_small
    model = load_t2s(path, native=False)
    layer = model.layers[0].linear1
    layer.weight = layer.weight * (1.0 + 1e-6)  # values off the float16 grid
    assert native.install(model)
    assert not model.ar_predict_layer.half and not model.layers[1].linear2.half
    assert t2s_small[1].ar_predict_layer.half


def test_install_keeps_one_exact_copy_of_each_weight(t2s_small, load_t2s):
    """install swaps the products for panels holding exactly the same values and releases the float32
    MLX weights: the products' parameters take half the bytes (float16 panels) and no `weight` of
    theirs is left; it installs once, only into a T2S model, and the dispatch point calls it."""
    _, _, path = t2s_small
    model = load_t2s(path, native=False)
    before = dict(tree_flatten(model.parameters()))
    products = {k: v for k, v in before.items() if k.startswith(("h.layers.", "ar_predict_layer.")) and
                k.endswith(("in_proj_weight", "out_proj.weight", "linear1.weight", "linear2.weight",
                            "ar_predict_layer.weight"))}
    assert cpu.accelerate(model) is model and isinstance(model.ar_predict_layer, native.PanelLinear)
    after = dict(tree_flatten(model.parameters()))
    panels = {k: v for k, v in after.items() if k.endswith(".panels")}
    assert not set(products) & set(after) and len(panels) == len(products)
    assert sum(v.nbytes for v in panels.values()) < 0.55 * sum(v.nbytes for v in products.values())
    eye = mx.eye(model.args.hidden_dim)  # the product with the identity reads the weights back exactly
    assert mx.array_equal(model.ar_predict_layer(eye).T, before["ar_predict_layer.weight"])
    qkv = mx.addmm(before["h.layers.1.self_attn.in_proj_bias"], eye, before["h.layers.1.self_attn.in_proj_weight"].T)
    assert mx.array_equal(model.layers[1].self_attn.in_proj(eye), qkv)
    assert not native.install(model) and not native.install(object())


def test_filter_narrows_rows_and_bad_calls_are_refused(t2s_small):
    _, model, _ = t2s_small
    rows, prompt = oracle.random_rows((20, 35, 12), 9, seed=3)
    codes = [[7, 8, 9], [100, 101, 102], [300, 301, 302]]
    full = _forced(model, rows, prompt, codes)
    x, pads = prefill_input(model, [(mx.array(p.astype(np.int32)), mx.array(b)) for p, b in rows], prompt)
    cache = model.make_cache(pads)
    np.testing.assert_array_equal(np.array(model.prefill(x, x.shape[1] - len(prompt), cache)), full[0])
    n = len(prompt)
    np.testing.assert_array_equal(np.array(model.step(mx.array([7, 100, 300]), n, cache)), full[1])
    cache.filter([2, 0])
    np.testing.assert_array_equal(np.array(model.step(mx.array([301, 8]), n + 1, cache)), full[2][[2, 0]])
    with pytest.raises(PrimeSpeechError, match="2 rows"):
        model.step(mx.array([1, 2, 3]), n + 2, cache)
