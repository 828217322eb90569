"""T2S sampling against upstream's `logits_to_probs`, seeded reproducibility, and tiny-config model checks
(mlx-lm style: shapes, dtypes, cached == uncached logits) that need no weights."""

from __future__ import annotations

import numpy as np
import pytest

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS before MLX)
from dora_primespeech_mlx.models import t2s

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
    from dora_primespeech_mlx.oracle.t2s import logits_to_probs as upstream_probs

    for seed in range(3):
        logits, previous = _case(seed)
        ref = upstream_probs(logits, previous, **setting)
        ours = np.array(t2s.logits_to_probs(mx.array(logits), previous, **setting))
        assert np.abs(ours - ref).max() < PROB_TOL
        assert (ours > 0).sum() == (ref > 0).sum()  # the same tokens survive the filters


@pytest.mark.parametrize("setting", SETTINGS[1:4], ids=str)
def test_eos_masking_equals_upstream_slice(setting, upstream):
    """Upstream drops the EOS column for steps < 11; we set it to -inf. Same distribution over the rest."""
    from dora_primespeech_mlx.oracle.t2s import logits_to_probs as upstream_probs

    logits, previous = _case(7)
    ref = upstream_probs(logits[:-1], previous, **setting)
    masked = logits.copy()
    masked[-1] = -np.inf
    ours = np.array(t2s.logits_to_probs(mx.array(masked), previous, **setting))
    assert ours[-1] == 0.0 and np.abs(ours[:-1] - ref).max() < PROB_TOL


def test_sampler_draws_from_the_processed_distribution():
    logits, previous = _case(3)
    setting = dict(top_k=8, top_p=1.0, temperature=1.5, repetition_penalty=1.35)
    probs = np.array(t2s.logits_to_probs(mx.array(logits), previous, **setting))
    sampler = t2s.make_sampler(**setting)
    seen = mx.array(np.isin(np.arange(V), previous))
    n = 20000
    tokens, greedy = sampler(mx.broadcast_to(mx.array(logits), (n, V)), seen, mx.random.key(0))
    freq = np.bincount(np.array(tokens), minlength=V) / n
    assert np.abs(freq - probs).max() < 0.015
    assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(probs))
    assert int(greedy[0]) == int(np.argmax(probs))


def test_sampler_is_reproducible():
    logits, previous = _case(4)
    sampler = t2s.make_sampler(top_k=50, top_p=0.9, temperature=1.0, repetition_penalty=1.35)
    seen = mx.array(np.isin(np.arange(V), previous))
    x = mx.array(logits)[None]
    draw = [int(sampler(x, seen, k)[0][0]) for k in mx.random.split(mx.random.key(5), 30)]
    again = [int(sampler(x, seen, k)[0][0]) for k in mx.random.split(mx.random.key(5), 30)]
    other = [int(sampler(x, seen, k)[0][0]) for k in mx.random.split(mx.random.key(6), 30)]
    assert draw == again and draw != other and len(set(draw)) > 3


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
    for c in cache:
        c.step = 4  # exercise the growth of the preallocated buffers
    head = mx.concatenate([x, tiny.embed_audio(mx.array(codes[:4])[None])], axis=1)
    cached = [np.array(tiny(head, t2s.prefill_mask(9, 4), cache, last_only=True)[0])]
    for i in range(4, 12):
        step = tiny.embed_audio(mx.array(codes[i:i + 1])[None], start=i)
        cached.append(np.array(tiny(step, None, cache, last_only=True)[0]))
    assert cache[0].offset == 9 + 12 and cache[0].keys.shape[2] >= 21
    np.testing.assert_allclose(np.stack(cached), uncached, atol=1e-4, rtol=1e-4)


def test_tiny_compiled_decode_step_equals_uncached(tiny, monkeypatch):
    """The compiled fixed-capacity decode step (what generate uses), across several buffer growths."""
    monkeypatch.setattr(t2s.KVCache, "step", 8)
    phones, bert, codes = _inputs(n_prompt=30)
    x = tiny.embed_text(mx.array(phones)[None], mx.array(bert)[None])
    full = mx.concatenate([x, tiny.embed_audio(mx.array(codes)[None])], axis=1)
    uncached = np.array(tiny(full, t2s.prefill_mask(9, 30))[0, 9 + 2:])

    cache = tiny.make_cache()
    head = mx.concatenate([x, tiny.embed_audio(mx.array(codes[:3])[None])], axis=1)
    cached = [np.array(tiny(head, t2s.prefill_mask(9, 3), cache, last_only=True)[0])]
    positions = tiny.ar_audio_position.positions(0, 30)
    decode = tiny.compiled_decode_step()
    for i in range(3, 30):
        offset = cache[0].offset
        for c in cache:
            c.reserve(1, c.keys)
            c.offset += 1
        window = mx.arange(min(offset + 1 + i % 3, cache[0].capacity))  # any window that covers offset
        logits, kv = decode(mx.array([int(codes[i])]), positions[i:i + 1], mx.array(offset, dtype=mx.int32),
                            window, [a for c in cache for a in (c.keys, c.values)])
        for j, c in enumerate(cache):
            c.keys, c.values = kv[2 * j], kv[2 * j + 1]
        cached.append(np.array(logits[0]))
    assert cache[0].capacity == 40  # grown from 16 in steps of 8
    np.testing.assert_allclose(np.stack(cached), uncached, atol=1e-4, rtol=1e-4)


def test_tiny_generate_rules(tiny):
    phones, bert, prompt = _inputs()
    greedy = dict(top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.35)
    codes = t2s.generate(tiny, phones, bert, prompt, **greedy, early_stop_num=29)
    assert len(codes) == 30 and all(0 <= c < 1024 for c in codes)
    assert t2s.generate(tiny, phones, bert, None, **greedy, max_tokens=7) == \
        t2s.generate(tiny, phones, bert, [], **greedy, max_tokens=7)
    sampled = dict(top_k=20, top_p=0.9, temperature=1.0, repetition_penalty=1.35, max_tokens=40)
    a = t2s.generate(tiny, phones, bert, prompt, **sampled, seed=1)
    assert a == t2s.generate(tiny, phones, bert, prompt, **sampled, seed=1)
    assert a != t2s.generate(tiny, phones, bert, prompt, **sampled, seed=2)


def test_bad_inputs(tiny):
    from dora_primespeech_mlx.errors import PrimeSpeechError

    phones, bert, prompt = _inputs()
    with pytest.raises(PrimeSpeechError, match="bert"):
        t2s.generate(tiny, phones, bert[:, :-1], prompt, top_k=1, top_p=1.0, temperature=1.0,
                     repetition_penalty=1.0)
    with pytest.raises(PrimeSpeechError, match="prompt"):
        t2s.generate(tiny, phones, bert, [1024], top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.0)
