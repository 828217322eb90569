"""Batched T2S decoding against upstream's batch-1 `infer_panel_naive`, row by row.

Rows of different text lengths share the prompt and are left-padded in the batch; every row must get
the codes upstream makes for it alone (greedy: token-exact), and the batched logits must match
upstream's within REL_TOL = max|ours - upstream| / max|upstream|. Both decodings: pure MLX, and the
CPU accelerator's native one ("native", where it is built).
"""

from __future__ import annotations

import numpy as np
import pytest
from parity import rel_err

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS before MLX)
from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.models import t2s
from dora_primespeech_mlx.models.generate import generate, prefill_input
from primespeech_devtools.oracle import t2s as oracle

REL_TOL = 1e-4
GREEDY = dict(top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.0)
LENGTHS = (45, 28, 36)
DECODING = ["native", "mlx"]

import mlx.core as mx  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _single_thread(torch_single_thread):
    yield


def _model(request, size: str, decoding: str):
    return request.getfixturevalue(f"t2s_{size}" if decoding == "native" else f"t2s_{size}_mlx")


def _batched_logits(model, rows, prompt, codes_per_row):
    """Our batched logits [B, V] of the prefill and of each decode step fed `codes_per_row` (teacher
    forcing), through the model's decoding API as `generate` runs it."""
    prompt = np.zeros(0, np.int64) if prompt is None else prompt
    x, pads = prefill_input(model, [(mx.array(p.astype(np.int32)), mx.array(b)) for p, b in rows], prompt)
    cache = model.make_cache(pads)
    out = [model.prefill(x, x.shape[1] - len(prompt), cache)]
    for step in range(len(codes_per_row[0])):
        tokens = mx.array([codes[step] for codes in codes_per_row], dtype=mx.int32)
        out.append(model.step(tokens, len(prompt) + step, cache))
    return [np.array(o) for o in out]


_UPSTREAM: dict = {}  # (size, with_prompt) -> upstream's greedy run of each row


@pytest.mark.parametrize("decoding", DECODING)
@pytest.mark.parametrize("size,steps", [("small", 150), ("full", 60)])
@pytest.mark.parametrize("with_prompt", [True, False], ids=["prompt", "no-prompt"])
def test_batch_greedy_matches_upstream_row_by_row(request, size, steps, with_prompt, decoding):
    ref, model, _ = _model(request, size, decoding)
    rows, prompt = oracle.random_rows(LENGTHS, 90 if with_prompt else 0, seed=11)
    key = (size, with_prompt)  # both decodings share the upstream decoder: its rows are decoded once
    if key not in _UPSTREAM:
        _UPSTREAM[key] = [oracle.run_naive(ref, p, b, prompt, **GREEDY, early_stop_num=steps - 1) for p, b in rows]
    ups = _UPSTREAM[key]
    ours = generate(model, rows, prompt, seeds=[0, 1, 2], **GREEDY, early_stop_num=steps - 1)
    assert len({tuple(up.codes) for up in ups}) == len(rows), "rows too alike to catch a row mix-up"
    for up, codes in zip(ups, ours, strict=True):
        assert len(up.codes) == steps and len(set(up.codes)) >= 20, "random weights too degenerate"
        assert codes == up.codes

    forced = _batched_logits(model, rows, prompt, [up.codes[:5] for up in ups])
    for step, logits in enumerate(forced):
        for row, up in enumerate(ups):
            err = rel_err(logits[row], up.logits[step])
            assert err < REL_TOL, f"row {row} step {step}: REL {err:.2e}"


@pytest.mark.parametrize("decoding", DECODING)
def test_rows_that_stop_at_different_steps(t2s_small, load_t2s, decoding):
    """EOS's output row made a copy of code X's, scaled by 1.01: each row stops (EOS dropped) at its first
    greedy X from step 11 on, or runs to the limit; the batch drops stopped rows and goes on."""
    import torch

    from dora_primespeech_mlx.cpu import t2s as native

    ref, _, path = t2s_small
    rows, prompt = oracle.random_rows((30, 22, 41, 35), 10, seed=61)
    bases = [oracle.run_naive(ref, p, b, prompt, **GREEDY, early_stop_num=60).codes for p, b in rows]

    def stop_steps(x):
        return [next((k for k in range(11, len(c)) if c[k] == x), None) for c in bases]

    x_code = max(sorted({c for base in bases for c in base[11:]}), key=lambda x: len(set(stop_steps(x))))
    assert len(set(stop_steps(x_code))) >= 3
    w = ref.ar_predict_layer.weight
    saved = w[1024].clone()
    with torch.no_grad():
        w[1024] = (w[x_code] * 1.01).half().float()
    model = load_t2s(path, native=False)
    patched = np.array(model.ar_predict_layer.weight)
    patched[1024] = w[1024].detach().numpy()
    model.ar_predict_layer.weight = mx.array(patched)
    if decoding == "native":
        native.install(model)
    try:
        ups = [oracle.run_naive(ref, p, b, prompt, **GREEDY, early_stop_num=60).codes for p, b in rows]
        ours = generate(model, rows, prompt, seeds=[0] * 4, **GREEDY, early_stop_num=60)
    finally:
        with torch.no_grad():
            w[1024] = saved
    assert len({len(c) for c in ups}) >= 3, "rows should stop at different steps"
    assert ours == ups


@pytest.mark.parametrize("decoding", DECODING)
def test_sampled_rows_equal_one_row_at_a_time(request, decoding):
    _, model, _ = _model(request, "small", decoding)
    rows, prompt = oracle.random_rows((25, 31, 18), 20, seed=4)
    kw = dict(top_k=5, top_p=0.9, temperature=0.8, repetition_penalty=1.35, max_tokens=40)
    alone = [generate(model, [(p, b)], prompt, seeds=[10 + i], **kw)[0] for i, (p, b) in enumerate(rows)]
    assert generate(model, rows, prompt, seeds=[10, 11, 12], **kw) == alone
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
        generate(model, rows, prompt, seeds=[1, 2], **GREEDY, max_tokens=100, poll=poll, poll_every=4)
    assert len(calls) == 2
    with pytest.raises(PrimeSpeechError, match="one seed per row"):
        generate(model, rows, prompt, seeds=[1])
    assert generate(model, [], prompt, seeds=[]) == []
    assert generate(model, rows, prompt, seeds=[1, 2], max_tokens=0) == [[0], [0]]
    with pytest.raises(PrimeSpeechError, match="bert features"):
        generate(model, [(rows[0][0], rows[1][1])], prompt, seeds=[1])


def test_prefill_mask_layout():
    mask = np.array(t2s.prefill_mask(3, 2, [2, 0]))[:, 0]
    padded = mask[0]
    assert not padded[2:, :2].any()  # real rows never see the padding
    assert padded[0].tolist() == [True, False, False, False, False]  # a pad row sees itself only
    assert padded[2].tolist() == [False, False, True, False, False]  # text sees its text, no audio
    assert padded[4].tolist() == [False, False, True, True, True]  # audio: text + causal audio
    assert mask[1][1].tolist() == [True, True, True, False, False]
    assert t2s.prefill_mask(3, 0, [0, 0]) is None
