"""Batched T2S decoding against upstream's batch-1 `infer_panel_naive`, row by row.

Rows of different text lengths share the prompt and are left-padded in the batch; every row must get
the codes upstream makes for it alone (greedy: token-exact), and the batched logits must match
upstream's within REL_TOL = max|ours - upstream| / max|upstream|.
"""

from __future__ import annotations

import numpy as np
import pytest
from parity import rel_err

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS before MLX)
from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.models import t2s
from dora_primespeech_mlx.models.t2s_batch import batch_prefill_mask, embed_batch, generate_batch
from dora_primespeech_mlx.oracle import t2s as oracle

REL_TOL = 1e-4
GREEDY = dict(top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.0)
LENGTHS = (45, 28, 36)

import mlx.core as mx  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _single_thread(torch_single_thread):
    yield


def _batched_logits(model, rows, prompt, codes_per_row):
    """Our batched logits [B, V] of the prefill and of each decode step fed `codes_per_row` (teacher
    forcing), through the same masks and decode step `generate_batch` uses."""
    prompt = np.zeros(0, np.int64) if prompt is None else prompt
    x, pads = embed_batch(model, [(mx.array(p.astype(np.int32)), mx.array(b)) for p, b in rows], prompt)
    n_prompt = len(prompt)
    n_text = x.shape[1] - n_prompt
    cache = model.make_cache()
    out = [model(x, batch_prefill_mask(pads, n_text, n_prompt), cache, last_only=True)]
    for c in cache:
        c.reserve(len(codes_per_row[0]), c.keys)
    kv = [a for c in cache for a in (c.keys, c.values)]
    valid_from = mx.array(np.asarray(pads, dtype=np.int32)[:, None])
    positions = model.ar_audio_position.positions(n_prompt, len(codes_per_row[0]))
    window = mx.arange(cache[0].capacity)
    for step in range(len(codes_per_row[0])):
        tokens = mx.array([codes[step] for codes in codes_per_row], dtype=mx.int32)
        logits, kv = model.decode_step(tokens, positions[step:step + 1], mx.array(n_text + n_prompt + step),
                                       window, kv, valid_from)
        out.append(logits)
    return [np.array(o) for o in out]


@pytest.mark.parametrize("size,steps", [("small", 150), ("full", 60)])
@pytest.mark.parametrize("with_prompt", [True, False], ids=["prompt", "no-prompt"])
def test_batch_greedy_matches_upstream_row_by_row(request, size, steps, with_prompt):
    ref, model, _ = request.getfixturevalue(f"t2s_{size}")
    rows, prompt = oracle.random_rows(LENGTHS, 90 if with_prompt else 0, seed=11)
    ups = [oracle.run_naive(ref, p, b, prompt, **GREEDY, early_stop_num=steps - 1) for p, b in rows]
    ours = generate_batch(model, rows, prompt, seeds=[0, 1, 2], **GREEDY, early_stop_num=steps - 1)
    assert len({tuple(up.codes) for up in ups}) == len(rows), "rows too alike to catch a row mix-up"
    for up, codes in zip(ups, ours, strict=True):
        assert len(up.codes) == steps and len(set(up.codes)) >= 20, "random weights too degenerate"
        assert codes == up.codes

    forced = _batched_logits(model, rows, prompt, [up.codes[:5] for up in ups])
    for step, logits in enumerate(forced):
        for row, up in enumerate(ups):
            err = rel_err(logits[row], up.logits[step])
            assert err < REL_TOL, f"row {row} step {step}: REL {err:.2e}"


def test_rows_that_stop_at_different_steps(t2s_small):
    """EOS's output row made a copy of code X's, scaled by 1.01: each row stops (EOS dropped) at its first
    greedy X from step 11 on, or runs to the limit; the batch drops stopped rows and goes on."""
    import torch

    ref, model, _ = t2s_small
    rows, prompt = oracle.random_rows((30, 22, 41, 35), 10, seed=61)
    bases = [oracle.run_naive(ref, p, b, prompt, **GREEDY, early_stop_num=60).codes for p, b in rows]

    def stop_steps(x):
        return [next((k for k in range(11, len(c)) if c[k] == x), None) for c in bases]

    x_code = max(sorted({c for base in bases for c in base[11:]}), key=lambda x: len(set(stop_steps(x))))
    assert len(set(stop_steps(x_code))) >= 3
    w = ref.ar_predict_layer.weight
    saved, ours_w = w[1024].clone(), model.ar_predict_layer.weight
    with torch.no_grad():
        w[1024] = (w[x_code] * 1.01).half().float()
    patched = np.array(ours_w)
    patched[1024] = w[1024].detach().numpy()
    model.ar_predict_layer.weight = mx.array(patched)
    try:
        ups = [oracle.run_naive(ref, p, b, prompt, **GREEDY, early_stop_num=60).codes for p, b in rows]
        ours = generate_batch(model, rows, prompt, seeds=[0] * 4, **GREEDY, early_stop_num=60)
    finally:
        with torch.no_grad():
            w[1024] = saved
        model.ar_predict_layer.weight = ours_w
    assert len({len(c) for c in ups}) >= 3, "rows should stop at different steps"
    assert ours == ups


def test_sampled_rows_equal_one_row_at_a_time(t2s_small):
    _, model, _ = t2s_small
    rows, prompt = oracle.random_rows((25, 31, 18), 20, seed=4)
    kw = dict(top_k=5, top_p=0.9, temperature=0.8, repetition_penalty=1.35, max_tokens=40)
    alone = [t2s.generate(model, p, b, prompt, seed=10 + i, **kw) for i, (p, b) in enumerate(rows)]
    assert generate_batch(model, rows, prompt, seeds=[10, 11, 12], **kw) == alone
    assert len({tuple(c) for c in alone}) == 3


def test_poll_abandons_the_batch_and_arguments_are_checked(t2s_small):
    _, model, _ = t2s_small
    rows, prompt = oracle.random_rows((10, 12), 8, seed=11)
    calls = []

    class Stop(Exception):
        pass

    def poll():
        calls.append(1)
        if len(calls) == 2:
            raise Stop

    with pytest.raises(Stop):
        generate_batch(model, rows, prompt, seeds=[1, 2], **GREEDY, max_tokens=100, poll=poll, poll_every=4)
    assert len(calls) == 2
    with pytest.raises(PrimeSpeechError, match="one seed per row"):
        generate_batch(model, rows, prompt, seeds=[1])
    assert generate_batch(model, [], prompt, seeds=[]) == []
    assert generate_batch(model, rows, prompt, seeds=[1, 2], max_tokens=0) == [[0], [0]]
    with pytest.raises(PrimeSpeechError, match="bert features"):
        generate_batch(model, [(rows[0][0], rows[1][1])], prompt, seeds=[1])


def test_prefill_mask_layout():
    mask = np.array(batch_prefill_mask([2, 0], n_text=3, n_audio=2))[:, 0]
    padded = mask[0]
    assert not padded[2:, :2].any()  # real rows never see the padding
    assert padded[0].tolist() == [True, False, False, False, False]  # a pad row sees itself only
    assert padded[2].tolist() == [False, False, True, False, False]  # text sees its text, no audio
    assert padded[4].tolist() == [False, False, True, True, True]  # audio: text + causal audio
    assert mask[1][1].tolist() == [True, True, True, False, False]
    assert batch_prefill_mask([0, 0], n_text=3, n_audio=0) is None
