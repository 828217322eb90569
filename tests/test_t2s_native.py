"""The native T2S decode step (native/t2s_decoder.c) against upstream and against MLX's step.

Logits are compared with REL_TOL = max|ours - upstream| / max|upstream|; greedy codes token-exact.
Float16 and float32 weight panels, one and two threads, a row alone and in a batch must give
bit-identical logits (the same float32 arithmetic in the same order).
"""

from __future__ import annotations

import numpy as np
import pytest
from parity import rel_err

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS before MLX)
from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.models import t2s, t2s_native
from dora_primespeech_mlx.models.panel_ops import panel_library
from dora_primespeech_mlx.models.t2s_batch import _prefill, batch_prefill_mask, embed_batch, generate_batch
from dora_primespeech_mlx.oracle import t2s as oracle
from dora_primespeech_mlx.runtime import blas_threads

REL_TOL = 1e-4
GREEDY = dict(top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.0)

import mlx.core as mx  # noqa: E402

pytestmark = pytest.mark.skipif(panel_library() is None, reason="native panel kernels not built")


@pytest.fixture(scope="module", autouse=True)
def _single_thread(torch_single_thread):
    yield


@pytest.fixture(autouse=True)
def _native_on():
    t2s_native.set_native_decoding(True)
    yield
    t2s_native.set_native_decoding(True)


def _batch_input(model, rows, prompt):
    """(x [B, L, D], pads, n_text) of the prefill generate_batch runs."""
    prompt = np.zeros(0, np.int64) if prompt is None else prompt
    x, pads = embed_batch(model, [(mx.array(p.astype(np.int32)), mx.array(b)) for p, b in rows], prompt)
    return x, pads, x.shape[1] - len(prompt)


def _forced(model, rows, prompt, codes_per_row, *, native=True, mlx_prefill=False):
    """Logits [B, V] of the prefill and of every decode step fed `codes_per_row` (teacher forcing):
    prefill and steps native (`native`), or MLX's prefill handed to the native step (`mlx_prefill`),
    or all MLX."""
    t2s_native.set_native_decoding(native)
    x, pads, n_text = _batch_input(model, rows, prompt)
    steps = len(codes_per_row[0])
    positions = model.ar_audio_position.positions(x.shape[1] - n_text, steps)
    if mlx_prefill:
        logits, cache = _prefill(model, x, batch_prefill_mask(pads, n_text, x.shape[1] - n_text))
        decoder = t2s_native.native_decoder(model)
        stepper = (t2s.Stepper(model, positions, session=decoder.session(cache, pads)) if decoder
                   else t2s.Stepper(model, positions, cache=cache, valid_from=pads))
    else:
        logits, stepper = t2s.start_decoding(model, x, n_text, positions, pads)
    assert stepper.native == native
    out = [np.array(logits)]
    for step in range(steps):
        tokens = mx.array([codes[step] for codes in codes_per_row], dtype=mx.int32)
        out.append(np.array(stepper(tokens, step)))
    return out


def test_native_logits_match_upstream_full_size(t2s_full):
    """Full-size model, left-padded rows with a prompt: every decode step within REL_TOL of upstream."""
    ref, model, _ = t2s_full
    rows, prompt = oracle.random_rows((40, 23, 31), 60, seed=21)
    ups = [oracle.run_naive(ref, p, b, prompt, **GREEDY, early_stop_num=9) for p, b in rows]
    assert all(len(up.logits) > 8 for up in ups)
    for mlx_prefill in (False, True):  # native prefill, or MLX's prefill handed to the native step
        forced = _forced(model, rows, prompt, [up.codes[:8] for up in ups], mlx_prefill=mlx_prefill)
        for step, logits in enumerate(forced):  # step 0: the prefill
            for row, up in enumerate(ups):
                assert np.ptp(up.logits[step]) > 0.3, "random weights give flat logits"
                err = rel_err(logits[row], up.logits[step])
                assert err < REL_TOL, f"row {row} step {step} (MLX prefill: {mlx_prefill}): REL {err:.2e}"
    assert t2s_native.native_decoder(model).half, "official checkpoints hold float16 values"


def test_native_greedy_past_the_first_buffer(t2s_small):
    """More steps than the first buffer holds (GROW): the grown buffers keep every row token-exact."""
    ref, model, _ = t2s_small
    rows, prompt = oracle.random_rows((30, 17), 12, seed=5)
    steps = t2s_native.GROW + 40
    ups = [oracle.run_naive(ref, p, b, prompt, **GREEDY, early_stop_num=steps - 1).codes for p, b in rows]
    assert all(len(c) == steps for c in ups)
    assert generate_batch(model, rows, prompt, seeds=[0, 1], **GREEDY, early_stop_num=steps - 1) == ups


def test_generic_kernel_decodes_like_upstream(t2s_small):
    """The generic (non-AVX-512) product kernel, forced on this machine, stays token-exact."""
    ref, model, _ = t2s_small
    rows, prompt = oracle.random_rows((26, 19), 15, seed=9)
    ups = [oracle.run_naive(ref, p, b, prompt, **GREEDY, early_stop_num=79).codes for p, b in rows]
    lib = panel_library()
    assert lib.panel_force_generic(1) == 0
    try:
        assert generate_batch(model, rows, prompt, seeds=[0, 1], **GREEDY, early_stop_num=79) == ups
    finally:
        lib.panel_force_generic(0)


def test_mlx_step_still_matches_upstream(t2s_small):
    """With the native step switched off, MLX's compiled step decodes (and stays token-exact)."""
    ref, model, _ = t2s_small
    rows, prompt = oracle.random_rows((26, 19, 33), 15, seed=8)
    ups = [oracle.run_naive(ref, p, b, prompt, **GREEDY, early_stop_num=99).codes for p, b in rows]
    t2s_native.set_native_decoding(False)
    assert t2s_native.native_decoder(model) is None
    assert generate_batch(model, rows, prompt, seeds=[0, 1, 2], **GREEDY, early_stop_num=99) == ups
    assert t2s.generate(model, *rows[0], prompt, seed=0, **GREEDY, early_stop_num=99) == ups[0]


def test_native_and_mlx_steps_agree(t2s_small):
    _, model, _ = t2s_small
    rows, prompt = oracle.random_rows((20, 35), 9, seed=3)
    codes = [list(range(5, 45)), list(range(100, 140))]
    native = _forced(model, rows, prompt, codes, native=True)
    mlx_steps = _forced(model, rows, prompt, codes, native=False)
    for a, b in zip(native, mlx_steps, strict=True):
        assert rel_err(a, b) < REL_TOL


def test_rows_panels_and_threads_are_bit_identical(t2s_small):
    """From the same prefilled caches, the decode step gives the same bits to a row alone or in a
    batch, with float16 or float32 panels, on one or two threads."""
    _, model, _ = t2s_small
    rows, prompt = oracle.random_rows((20, 35, 12), 9, seed=3)
    x, pads, n_text = _batch_input(model, rows, prompt)
    _, cache = _prefill(model, x, batch_prefill_mask(pads, n_text, x.shape[1] - n_text))
    positions = np.array(model.ar_audio_position.positions(x.shape[1] - n_text, 20))
    codes = np.stack([np.arange(5, 25), np.arange(100, 120), np.arange(300, 320)], axis=1)

    def run(decoder, threads, keep=None):
        session = decoder.session(cache, pads)
        if keep is not None:
            session.keep(keep)
        with blas_threads(threads):
            return [session.step(codes[i] if keep is None else codes[i][keep], positions[i]) for i in range(20)]

    decoder = t2s_native.native_decoder(model)
    assert decoder.half
    batch = run(decoder, 1)
    for a, b in zip(batch, run(decoder, 1, keep=[1]), strict=True):
        np.testing.assert_array_equal(a[1:2], b)
    for a, b in zip(batch, run(decoder, 2), strict=True):
        np.testing.assert_array_equal(a, b)
    wide = t2s_native.NativeDecoder(model, decoder.lib, half=False)
    assert not wide.half
    for a, b in zip(batch, run(wide, 1), strict=True):
        np.testing.assert_array_equal(a, b)


def test_weights_that_are_not_half_stay_float32(t2s_small):
    _, model, _ = t2s_small
    layer = model.layers[0].linear1
    saved = layer.weight
    layer.weight = saved * (1.0 + 1e-6)  # values off the float16 grid
    try:
        decoder = t2s_native.native_decoder(model)
        assert decoder is not None and not decoder.half
    finally:
        layer.weight = saved
    assert t2s_native.native_decoder(model).half


def test_keep_narrows_rows_and_bad_calls_are_refused(t2s_small):
    _, model, _ = t2s_small
    rows, prompt = oracle.random_rows((20, 35, 12), 9, seed=3)
    codes = [[7, 8, 9], [100, 101, 102], [300, 301, 302]]
    full = _forced(model, rows, prompt, codes)
    x, pads, n_text = _batch_input(model, rows, prompt)
    logits, session = t2s_native.native_decoder(model).prefill(model, x, n_text, pads)
    np.testing.assert_array_equal(np.array(logits), full[0])
    positions = np.array(model.ar_audio_position.positions(x.shape[1] - n_text, 3))
    np.testing.assert_array_equal(session.step(np.array([7, 100, 300]), positions[0]), full[1])
    session.keep([2, 0])
    np.testing.assert_array_equal(session.step(np.array([301, 8]), positions[1]), full[2][[2, 0]])
    with pytest.raises(PrimeSpeechError, match="2 rows"):
        session.step(np.array([1, 2, 3]), positions[2])
