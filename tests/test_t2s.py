"""T2S GPT: ours against upstream `Text2SemanticDecoder` on identical random weights.

The upstream decoder gets seeded random fp16-exact weights, is written with `torch.save` in the
official .ckpt layout and goes through our converter. Logits are compared with the relative error
REL = max|ours - upstream| / max|upstream| (float32), which must stay below REL_TOL. Decoding runs
both ways: pure MLX, and with the CPU accelerator's native decoding ("native", where it is built).
"""

from __future__ import annotations

import numpy as np
import pytest
from parity import rel_err

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS before MLX)
from dora_primespeech_mlx import loading
from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.models import generate, t2s
from primespeech_devtools.oracle import t2s as oracle

REL_TOL = 1e-4

import mlx.core as mx  # noqa: E402

GREEDY = dict(top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.0)
N_GREEDY = 150
DECODING = ["native", "mlx"]


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread(upstream):
    """One torch thread and one OpenBLAS thread while these tests run: torch's OpenMP threads, the
    OpenBLAS threads preloaded for MLX and MLX's own thread otherwise oversubscribe the 2 cores,
    and spinning BLAS threads made a 150-step decode 5x slower on a busy machine."""
    import ctypes

    import torch

    from dora_primespeech_mlx.runtime import _OPENBLAS_STATE

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    lib = ctypes.CDLL(_OPENBLAS_STATE["path"]) if _OPENBLAS_STATE["path"] else None
    blas_threads = lib.openblas_get_num_threads() if lib else None
    if lib:
        lib.openblas_set_num_threads(1)
    yield
    torch.set_num_threads(torch_threads)
    if lib:
        lib.openblas_set_num_threads(blas_threads)


def _generate(model, phones, bert, prompt, seed=None, **kw):
    """One row's codes."""
    return generate.generate(model, [(phones, bert)], prompt, seeds=[seed], **kw)[0]


def _model(request, size: str, decoding: str):
    """(ref, model, path) of the shared `size` decoder, our model decoding natively or in MLX."""
    return request.getfixturevalue(f"t2s_{size}" if decoding == "native" else f"t2s_{size}_mlx")


def _forced_logits(model, phones, bert, prompt, codes):
    """Our logits of the prefill and of each decode step fed with `codes` (teacher forcing), through the
    model's decoding API."""
    prompt = np.zeros(0, np.int64) if prompt is None else prompt
    x, pads = generate.prefill_input(model, [(mx.array(phones.astype(np.int32)), mx.array(bert))], prompt)
    cache = model.make_cache(pads)
    out = [model.prefill(x, len(phones), cache)[0]]
    for idx, code in enumerate(codes):
        out.append(model.step(mx.array([code], dtype=mx.int32), len(prompt) + idx, cache)[0])
    return [np.array(o) for o in out]


def _patched(load_t2s, path, decoding: str, rows: dict[int, np.ndarray]):
    """A fresh model from `path` with the given rows of `ar_predict_layer` replaced, decoding natively
    (the accelerator installed after the change) or in MLX."""
    from dora_primespeech_mlx.cpu import t2s as native

    model = load_t2s(path, native=False)
    patched = np.array(model.ar_predict_layer.weight)
    for index, row in rows.items():
        patched[index] = np.asarray(row, dtype=np.float32)
    model.ar_predict_layer.weight = mx.array(patched)
    if decoding == "native":
        native.install(model)
    return model


# ------------------------------------------------------------------------------- parity with upstream

_UPSTREAM: dict = {}  # (size, with_prompt) -> upstream's greedy run on the inputs below


@pytest.mark.parametrize("decoding", DECODING)
@pytest.mark.parametrize("size", ["small", "full"])
@pytest.mark.parametrize("with_prompt", [True, False], ids=["prompt", "no-prompt"])
def test_greedy_matches_upstream(request, size, with_prompt, decoding):
    ref, model, _ = _model(request, size, decoding)
    phones, bert, prompt = oracle.random_inputs(45, 90 if with_prompt else 0, seed=11)
    prompt = prompt if with_prompt else None
    key = (size, with_prompt)  # both decodings share the upstream decoder: its codes are computed once
    if key not in _UPSTREAM:
        _UPSTREAM[key] = oracle.run_naive(ref, phones, bert, prompt, **GREEDY, early_stop_num=N_GREEDY - 1)
    up = _UPSTREAM[key]
    ours = _generate(model, phones, bert, prompt, **GREEDY, early_stop_num=N_GREEDY - 1)
    assert len(up.codes) == N_GREEDY
    assert len(set(up.codes)) >= 40, "random weights too degenerate for a meaningful comparison"
    assert ours == up.codes

    # logits of the prefill and of several decode steps, fed the same codes
    steps = 6
    ours_logits = _forced_logits(model, phones, bert, prompt, up.codes[:steps])
    for i, (o, u) in enumerate(zip(ours_logits, up.logits[: steps + 1], strict=True)):
        assert rel_err(o, u) < REL_TOL, f"step {i}: REL {rel_err(o, u):.2e}"


def test_uncached_logits_match_upstream(t2s_small_mlx):
    """The model's plain call (no cache, the prefill mask over text + prompt + codes) gives upstream's
    logits at every audio position."""
    ref, model, _ = t2s_small_mlx
    phones, bert, prompt = oracle.random_inputs(45, 90, seed=11)
    up = oracle.run_naive(ref, phones, bert, prompt, **GREEDY, early_stop_num=5)
    codes = np.concatenate([prompt, up.codes[:5]])
    x = mx.concatenate([model.embed_text(mx.array(phones.astype(np.int32))[None], mx.array(bert)[None]),
                        model.embed_audio(mx.array(codes.astype(np.int32))[None])], axis=1)
    logits = np.array(model(x, t2s.prefill_mask(len(phones), len(codes)))[0, len(phones) + len(prompt) - 1:])
    for i, u in enumerate(up.logits[:6]):
        assert rel_err(logits[i], u) < REL_TOL, f"step {i}: REL {rel_err(logits[i], u):.2e}"


def test_prefill_runs_layer_by_layer_with_the_same_logits_and_cache(t2s_small_mlx, monkeypatch):
    """The MLX prefill evaluates each layer (and its cache) before building the next, so that a batch's
    activations are not all alive at once on a GPU; the result is the one-graph forward's."""
    _, model, _ = t2s_small_mlx
    rows, prompt = oracle.random_rows((30, 22), 40, seed=5)
    from dora_primespeech_mlx.models.generate import prefill_input

    x, pads = prefill_input(model, [(mx.array(p.astype(np.int32)), mx.array(b)) for p, b in rows], prompt)
    n_text = x.shape[1] - len(prompt)
    whole = model.make_cache(pads)
    expected = model(x, t2s.prefill_mask(n_text, len(prompt), whole.left_padding), whole, last_only=True)
    mx.eval(expected, whole.state)
    evals = []
    real_eval = mx.eval
    monkeypatch.setattr(mx, "eval", lambda *a: (evals.append(len(a)), real_eval(*a))[1])
    cache = model.make_cache(pads)
    logits = model.prefill(x, n_text, cache)
    assert len(evals) == len(model.layers)
    monkeypatch.undo()
    np.testing.assert_array_equal(np.array(logits), np.array(expected))
    for ours, ref in zip(cache.state, whole.state, strict=True):
        np.testing.assert_array_equal(np.array(ours), np.array(ref))


@pytest.mark.parametrize("decoding", DECODING)
def test_greedy_with_repetition_penalty_matches_upstream(request, decoding):
    ref, model, _ = _model(request, "small", decoding)
    phones, bert, prompt = oracle.random_inputs(30, 40, seed=5)
    kw = dict(GREEDY, repetition_penalty=1.35)
    up = oracle.run_naive(ref, phones, bert, prompt, **kw, early_stop_num=80)
    assert _generate(model, phones, bert, prompt, **kw, early_stop_num=80) == up.codes


# ------------------------------------------------------------------------------------------ stop rules


def _set_eos_row(ref, row):
    """Upstream's model with the EOS row of ar_predict_layer set to `row` (rounded to fp16); returns
    (the row as set, an undo)."""
    import torch

    with torch.no_grad():
        w = ref.ar_predict_layer.weight
        saved = w[1024].clone()
        w[1024] = row.half().float()

    def restore():
        with torch.no_grad():
            w[1024] = saved

    return w[1024].detach().numpy().copy(), restore


@pytest.mark.parametrize("decoding", DECODING)
def test_eos_masked_before_step_11(t2s_small, load_t2s, decoding):
    """EOS made the argmax at every step: upstream and ours still produce the first 11 codes unchanged."""
    ref, _, path = t2s_small
    phones, bert, prompt = oracle.random_inputs(30, 40, seed=7)
    base = oracle.run_naive(ref, phones, bert, prompt, **GREEDY, early_stop_num=30).codes
    # the final LayerNorm's bias dominates every hidden state: a big multiple of it wins every step
    bias = ref.h.layers[-1].norm2.bias.detach()
    row, restore = _set_eos_row(ref, (50 * bias).half().float())
    try:
        up = oracle.run_naive(ref, phones, bert, prompt, **GREEDY)
        model = _patched(load_t2s, path, decoding, {1024: row})
        ours = _generate(model, phones, bert, prompt, **GREEDY)
    finally:
        restore()
    assert up.idx == 11 and up.codes == base[:11]
    assert ours == up.codes


@pytest.mark.parametrize("decoding", DECODING)
def test_eos_argmax_stop_matches_upstream(t2s_small, load_t2s, decoding):
    """EOS's row a copy of code X's, scaled by 1.01, X being the greedy code of a step >= 11 (and, when
    possible, also of a step < 11, where EOS is masked): decoding stops by that step, EOS dropped."""
    ref, _, path = t2s_small
    phones, bert, prompt = oracle.random_inputs(30, 40, seed=7)
    base = oracle.run_naive(ref, phones, bert, prompt, **GREEDY, early_stop_num=60).codes
    late = [k for k in range(11, len(base)) if base[k] in base[:11]] or [20]
    k = late[0]
    row, restore = _set_eos_row(ref, ref.ar_predict_layer.weight.detach()[base[k]] * 1.01)
    try:
        up = oracle.run_naive(ref, phones, bert, prompt, **GREEDY)
        model = _patched(load_t2s, path, decoding, {1024: row})
        ours = _generate(model, phones, bert, prompt, **GREEDY)
    finally:
        restore()
    assert 11 <= up.idx <= k and up.codes == base[: up.idx], "upstream did not stop on EOS"
    assert ours == up.codes
    assert generate.upstream_kept_codes(ours, has_prompt=True) == (list(prompt) + up.codes)[-up.idx:]


@pytest.mark.parametrize("decoding", DECODING)
def test_sampled_eos_stops(t2s_small, load_t2s, decoding):
    """Code X made the argmax at every step and EOS always the runner-up, within reach of sampling:
    decoding stops when EOS is sampled although it is not the argmax (upstream's second stop rule)."""
    import torch

    ref, _, path = t2s_small
    phones, bert, prompt = oracle.random_inputs(30, 40, seed=7)
    x_code = 77
    row = (50 * ref.h.layers[-1].norm2.bias.detach()).half().float()
    with torch.no_grad():
        w = ref.ar_predict_layer.weight
        saved_x = w[x_code].clone()
        w[x_code] = row
    eos_row, restore = _set_eos_row(ref, row * 0.99)
    model = _patched(load_t2s, path, decoding, {x_code: row.numpy(), 1024: eos_row})
    kw = dict(top_k=2, top_p=1.0, temperature=10.0, repetition_penalty=1.0)
    try:
        runs = [_generate(model, phones, bert, prompt, **kw, seed=s, max_tokens=200) for s in range(3)]
        up = [oracle.run_naive(ref, phones, bert, prompt, **kw, seed=s).codes for s in range(3)]
    finally:
        restore()
        with torch.no_grad():
            w[x_code] = saved_x
    for codes in runs + up:
        assert 11 <= len(codes) < 200 and set(codes) == {x_code}
    assert len({len(c) for c in runs}) > 1  # the stop step depends on the draws


@pytest.mark.parametrize("decoding", DECODING)
def test_early_stop_and_cap_match_upstream(request, monkeypatch, decoding):
    ref, model, _ = _model(request, "small", decoding)
    phones, bert, prompt = oracle.random_inputs(25, 20, seed=2)
    up = oracle.run_naive(ref, phones, bert, prompt, **GREEDY, early_stop_num=17)
    assert len(up.codes) == 18 and up.idx == 17  # the step that crosses the limit keeps its code
    assert _generate(model, phones, bert, prompt, **GREEDY, early_stop_num=17) == up.codes

    import AR.models.t2s_model as upstream_model

    # upstream's TTS keeps (prompt + codes)[-idx:]: here the first code goes
    kept = generate.upstream_kept_codes(up.codes, has_prompt=True, early_stop_num=17)
    assert kept == (list(prompt) + up.codes)[-up.idx:] == up.codes[1:]

    monkeypatch.setattr(upstream_model, "MAX_AR_DECODE_STEPS", 23)
    up = oracle.run_naive(ref, phones, bert, prompt, **GREEDY)
    assert len(up.codes) == 23
    assert _generate(model, phones, bert, prompt, **GREEDY, max_tokens=23) == up.codes
    assert _generate(model, phones, bert, prompt, **GREEDY, max_tokens=0) == [0]


def test_generate_step_yields_the_same_codes(t2s_small):
    _, model, _ = t2s_small
    phones, bert, prompt = oracle.random_inputs(25, 20, seed=4)
    kw = dict(top_k=5, top_p=0.9, temperature=0.8, repetition_penalty=1.35, max_tokens=40)
    steps = generate.generate_step(model, [(phones, bert)], prompt, seeds=[3], **kw)
    first = next(steps)
    assert first[0] == [0] and len(first[1]) == 1
    streamed = [first[1][0], *(codes[0] for _, codes in steps)]
    assert streamed == _generate(model, phones, bert, prompt, seed=3, **kw)


# ------------------------------------------------------------------------ conversion, config, loading


def test_args_from_checkpoint_config(t2s_small):
    _, model, _ = t2s_small
    assert model.args.n_layer == 2 and model.args.phoneme_vocab_size == 732 and model.args.head == 16
    assert model.args.early_stop_num == 50 * 54
    v1 = t2s.ModelArgs.from_checkpoint_config(oracle.make_config(phoneme_vocab_size=512, n_layer=12))
    assert (v1.phoneme_vocab_size, v1.n_layer) == (512, 12)


def test_load_model_caches_conversion_and_accepts_the_folder(t2s_small_mlx, load_t2s):
    _, model, path = t2s_small_mlx
    folder = path.with_suffix(".mlx")
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    again = load_t2s(folder, native=False)
    assert mx.array_equal(again.ar_predict_layer.weight, model.ar_predict_layer.weight)
    assert again.ar_predict_layer.weight.dtype == mx.float32


def test_cli_convert(t2s_small, tmp_path):
    from dora_primespeech_mlx.cli import main

    _, _, path = t2s_small
    assert main(["convert", "--gpt", str(path), "--out", str(tmp_path / "out")]) == 0
    assert loading.load_model("t2s", tmp_path / "out").args.n_layer == 2


@pytest.mark.parametrize("change", ["missing", "extra", "shape"])
def test_strict_loading(change, tmp_path, upstream):
    import torch

    ref = oracle.build_decoder(oracle.make_config(n_layer=1), seed=0)
    ckpt = tmp_path / "bad.ckpt"
    oracle.save_checkpoint(ref, oracle.make_config(n_layer=1), ckpt)
    data = torch.load(ckpt, weights_only=False)
    if change == "missing":
        del data["weight"]["model.h.layers.0.norm2.bias"]
    elif change == "extra":
        data["weight"]["model.h.layers.0.self_attn.extra"] = torch.zeros(3, dtype=torch.half)
    else:
        data["weight"]["model.bert_proj.bias"] = torch.zeros(7, dtype=torch.half)
    torch.save(data, ckpt)
    expected = {"missing": "missing", "extra": "unexpected", "shape": "wrong shape"}[change]
    with pytest.raises(PrimeSpeechError, match=expected):
        loading.convert("t2s", ckpt, tmp_path / "out")
    with pytest.raises(PrimeSpeechError, match=expected):
        loading.load_model("t2s", ckpt)
