"""T2S sampling against upstream's `logits_to_probs`, seeded reproducibility, and tiny-config model checks
(mlx-lm style: shapes, dtypes, cached == uncached logits) that need no weights."""

from __future__ import annotations

import numpy as np
import pytest

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS before MLX)
from dora_primespeech_mlx.models import generate, sampling, t2s

PROB_TOL = 1e-5

import mlx.core as mx  # noqa: E402

V = 1025

SETTINGS = [
    dict(top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.0),
    dict(top_k=5, top_p=1.0, temperature=1.0, repetition_penalty=1.35),
    dict(top_k=15, top_p=1.0, temperature=0.6, repetition_penalty=1.35),
    dict(top_k=15, top_p=0.8, temperature=1.0, repetition_penalty=1.35),
    dict(top_k=50, top_p=0.5, temperature=1.5, repetition_penalty=1.2),
    dict(top_k=1025, top_p=0.95, temperature=0.8, repetition_penalty=1.0),
    dict(top_k=None, top_p=1.0, temperature=1.0, repetition_penalty=2.0),
    dict(top_k=None, top_p=0.3, temperature=0.0, repetition_penalty=1.35),  # temperature clamped to 1e-5
]


def _case(seed: int, size: int = V):
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.standard_normal(size)).astype(np.float32)
    previous = rng.integers(0, min(size, 1024), 80)  # duplicates included, as in real prompts
    return logits, previous


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_probs_match_upstream(setting, upstream):
    from primespeech_devtools.oracle.t2s import logits_to_probs as upstream_probs

    for seed in range(3):
        logits, previous = _case(seed)
        ref = upstream_probs(logits, previous, **setting)
        ours = np.array(sampling.logits_to_probs(mx.array(logits), previous, **setting))
        assert np.abs(ours - ref).max() < PROB_TOL
        assert (ours > 0).sum() == (ref > 0).sum()  # the same tokens survive the filters


@pytest.mark.parametrize("setting", SETTINGS[1:4], ids=str)
def test_eos_masking_equals_upstream_slice(setting, upstream):
    """Upstream drops the EOS column for steps < 11; we set it to -inf. Same distribution over the rest."""
    from primespeech_devtools.oracle.t2s import logits_to_probs as upstream_probs

    logits, previous = _case(7)
    ref = upstream_probs(logits[:-1], previous, **setting)
    masked = logits.copy()
    masked[-1] = -np.inf
    ours = np.array(sampling.logits_to_probs(mx.array(masked), previous, **setting))
    assert ours[-1] == 0.0 and np.abs(ours[:-1] - ref).max() < PROB_TOL


def test_sampler_draws_from_the_processed_distribution():
    logits, previous = _case(3)
    setting = dict(top_k=8, top_p=1.0, temperature=1.5, repetition_penalty=1.35)
    probs = np.array(sampling.logits_to_probs(mx.array(logits), previous, **setting))
    sampler = sampling.make_sampler(**setting)
    seen = mx.array(np.isin(np.arange(V), previous))
    n = 20000
    tokens, greedy = sampler(mx.broadcast_to(mx.array(logits), (n, V)), seen, mx.random.split(mx.random.key(0), n))
    freq = np.bincount(np.array(tokens), minlength=V) / n
    assert np.abs(freq - probs).max() < 0.015
    assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(probs))
    assert int(greedy[0]) == int(np.argmax(probs))


def test_sampler_is_reproducible():
    logits, previous = _case(4)
    sampler = sampling.make_sampler(top_k=50, top_p=0.9, temperature=1.0, repetition_penalty=1.35)
    seen = mx.array(np.isin(np.arange(V), previous))
    x = mx.array(logits)[None]
    draw = [int(sampler(x, seen, k[None])[0][0]) for k in mx.random.split(mx.random.key(5), 30)]
    again = [int(sampler(x, seen, k[None])[0][0]) for k in mx.random.split(mx.random.key(5), 30)]
    other = [int(sampler(x, seen, k[None])[0][0]) for k in mx.random.split(mx.random.key(6), 30)]
    assert draw == again and draw != other and len(set(draw)) > 3
    # a row draws from its own key: the same codes alone or beside other rows
    keys = mx.random.split(mx.random.key(7), 4)
    rows = sampler(mx.broadcast_to(x, (4, V)), seen, keys)[0].tolist()
    assert rows == [int(sampler(x, seen, keys[i:i + 1])[0][0]) for i in range(4)]


# --------------------------------------------------------------------------------- tiny random config

TINY = t2s.ModelArgs(vocab_size=1025, phoneme_vocab_size=40, embedding_dim=64, hidden_dim=64, head=4,
                     n_layer=2, max_sec=3)


@pytest.fixture(scope="module")
def tiny():
    mx.random.seed(0)
    model = t2s.Model(TINY)
    # larger embeddings than nn.Embedding's default so that tokens differ clearly
    model.ar_audio_embedding.word_embeddings.weight = mx.random.normal((1025, 64))
    model.ar_predict_layer.weight = mx.random.normal((1025, 64)) * 0.5
    mx.eval(model.parameters())
    return model


def _inputs(n_text=9, n_prompt=5, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 40, n_text), rng.standard_normal((1024, n_text)).astype(np.float32),
            rng.integers(0, 1024, n_prompt))


def test_tiny_shapes_and_dtypes(tiny):
    phones, bert, prompt = _inputs()
    x = tiny.embed_text(mx.array(phones)[None], mx.array(bert)[None])
    assert x.shape == (1, 9, 64) and x.dtype == mx.float32
    y = tiny.embed_audio(mx.array(prompt)[None])
    xy = mx.concatenate([x, y], axis=1)
    logits = tiny(xy, t2s.prefill_mask(9, 5))
    assert logits.shape == (1, 14, 1025) and logits.dtype == mx.float32
    assert tiny(xy, t2s.prefill_mask(9, 5), last_only=True).shape == (1, 1025)
    assert TINY.early_stop_num == 150


def test_prefill_mask():
    m = np.array(t2s.prefill_mask(3, 2))
    expected = np.array([[1, 1, 1, 0, 0],
                         [1, 1, 1, 0, 0],
                         [1, 1, 1, 0, 0],
                         [1, 1, 1, 1, 0],
                         [1, 1, 1, 1, 1]], dtype=bool)
    assert (m == expected).all()
    assert t2s.prefill_mask(4, 0) is None


def test_tiny_cached_equals_uncached(tiny):
    """Prefill of text + first audio codes, then one code at a time through the cache, against one
    uncached pass over the whole sequence with the prefill mask (audio rows causal)."""
    phones, bert, codes = _inputs(n_prompt=12)
    x = tiny.embed_text(mx.array(phones)[None], mx.array(bert)[None])
    full = mx.concatenate([x, tiny.embed_audio(mx.array(codes)[None])], axis=1)
    uncached = np.array(tiny(full, t2s.prefill_mask(9, 12))[0, 9 + 3:])

    cache = tiny.make_cache()
    for c in cache.layers:
        c.step = 4  # exercise the growth of the preallocated buffers
    head = mx.concatenate([x, tiny.embed_audio(mx.array(codes[:4])[None])], axis=1)
    cached = [np.array(tiny(head, t2s.prefill_mask(9, 4), cache, last_only=True)[0])]
    for i in range(4, 12):
        step = tiny.embed_audio(mx.array(codes[i:i + 1])[None], start=i)
        cached.append(np.array(tiny(step, None, cache, last_only=True)[0]))
    assert cache.offset == 9 + 12 and cache.layers[0].keys.shape[2] >= 21
    np.testing.assert_allclose(np.stack(cached), uncached, atol=1e-4, rtol=1e-4)


def test_tiny_compiled_step_equals_uncached(tiny, monkeypatch):
    """`prefill` then the compiled fixed-capacity `step` (what generate uses), across several buffer
    growths and attention windows, against the uncached pass."""
    monkeypatch.setattr(t2s.KVCache, "step", 8)
    monkeypatch.setattr(t2s, "WINDOW_STEP", 4)
    phones, bert, codes = _inputs(n_prompt=30)
    x = tiny.embed_text(mx.array(phones)[None], mx.array(bert)[None])
    full = mx.concatenate([x, tiny.embed_audio(mx.array(codes)[None])], axis=1)
    uncached = np.array(tiny(full, t2s.prefill_mask(9, 30))[0, 9 + 2:])

    cache = tiny.make_cache()
    head = mx.concatenate([x, tiny.embed_audio(mx.array(codes[:3])[None])], axis=1)
    cached = [np.array(tiny.prefill(head, 9, cache)[0])]
    for i in range(3, 30):
        cached.append(np.array(tiny.step(mx.array([int(codes[i])]), i, cache)[0]))
    assert cache.layers[0].capacity == 40  # grown from 16 in steps of 8
    np.testing.assert_allclose(np.stack(cached), uncached, atol=1e-4, rtol=1e-4)


def test_tiny_left_padded_rows_equal_rows_alone(tiny):
    """Rows of different lengths, left-padded into one batch: each row's prefill and step logits are
    its logits alone; dropping a row (`cache.filter`) leaves the others unchanged."""
    rows = [_inputs(n_text=n, n_prompt=0, seed=n)[:2] for n in (9, 5, 7)]
    prompt = _inputs(n_prompt=4)[2]
    texts = [(mx.array(p.astype(np.int32)), mx.array(b)) for p, b in rows]

    def run(texts, drop_after=None):
        x, pads = generate.prefill_input(tiny, texts, prompt)
        cache = tiny.make_cache(pads)
        out = [np.array(tiny.prefill(x, x.shape[1] - 4, cache))]
        for i in range(6):
            if drop_after is not None and i == drop_after:
                cache.filter([0, 2])
            n = cache.layers[0].keys.shape[0]
            out.append(np.array(tiny.step(mx.array([10 + i] * n), 4 + i, cache)))
        return out

    batch = run(texts)
    dropped = run(texts, drop_after=3)
    for row, text in enumerate(texts):
        alone = run([text])
        for a, b in zip(batch, alone, strict=True):
            np.testing.assert_allclose(a[row], b[0], atol=1e-5, rtol=1e-5)
    for i in range(4, 7):
        np.testing.assert_allclose(dropped[i], batch[i][[0, 2]], atol=1e-5, rtol=1e-5)


def _generate(model, phones, bert, prompt, seed=None, **kw):
    return generate.generate(model, [(phones, bert)], prompt, seeds=[seed], **kw)[0]


def test_tiny_generate_rules(tiny):
    phones, bert, prompt = _inputs()
    greedy = dict(top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.35)
    codes = _generate(tiny, phones, bert, prompt, **greedy, early_stop_num=29)
    assert len(codes) == 30 and all(0 <= c < 1024 for c in codes)
    assert _generate(tiny, phones, bert, None, **greedy, max_tokens=7) == \
        _generate(tiny, phones, bert, [], **greedy, max_tokens=7)
    sampled = dict(top_k=20, top_p=0.9, temperature=1.0, repetition_penalty=1.35, max_tokens=40)
    a = _generate(tiny, phones, bert, prompt, **sampled, seed=1)
    assert a == _generate(tiny, phones, bert, prompt, **sampled, seed=1)
    assert a != _generate(tiny, phones, bert, prompt, **sampled, seed=2)


def test_bad_inputs(tiny):
    from dora_primespeech_mlx.errors import PrimeSpeechError

    phones, bert, prompt = _inputs()
    with pytest.raises(PrimeSpeechError, match="bert"):
        _generate(tiny, phones, bert[:, :-1], prompt, top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.0)
    with pytest.raises(PrimeSpeechError, match="prompt"):
        _generate(tiny, phones, bert, [1024], top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.0)
