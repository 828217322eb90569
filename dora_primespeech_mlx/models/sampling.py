"""T2S sampling in upstream's order (AR/models/utils.py `logits_to_probs` + `multinomial_sample_one_no_sync`).

Per row: repetition penalty on every code seen so far (prompt included), top-p on the penalized
logits, division by the temperature, top-k, softmax, and the exponential race argmax(probs / q),
q ~ Exp(1), which draws from `probs` exactly. Each row has its own random key, so a row draws the
same codes whatever else is in its batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import mlx.core as mx
import numpy as np


def apply_repetition_penalty(logits: mx.array, seen: mx.array, penalty: float) -> mx.array:
    """Upstream's penalty on every code seen so far (prompt included): s<0 ? s*p : s/p."""
    if penalty == 1.0:
        return logits
    return mx.where(seen, mx.where(logits < 0, logits * penalty, logits / penalty), logits)


def filter_logits(logits: mx.array, *, top_k: int | None, top_p: float | None, temperature: float) -> mx.array:
    """Upstream's order after the penalty: top-p (if < 1) on the pre-temperature logits, then
    division by max(temperature, 1e-5), then top-k. logits [..., V]; removed entries become -inf."""
    if top_p is not None and top_p < 1.0:
        order = mx.argsort(-logits, axis=-1)
        sorted_logits = mx.take_along_axis(logits, order, axis=-1)
        cum = mx.cumsum(mx.softmax(sorted_logits, axis=-1, precise=True), axis=-1)
        first = mx.arange(cum.shape[-1]) == 0
        remove_sorted = (cum > top_p) & ~first
        remove = mx.take_along_axis(remove_sorted, mx.argsort(order, axis=-1), axis=-1)
        logits = mx.where(remove, -mx.inf, logits)
    logits = logits / max(temperature, 1e-5)
    if top_k is not None and top_k > 0:
        k = min(top_k, logits.shape[-1])
        pivot = mx.min(mx.topk(logits, k, axis=-1), axis=-1, keepdims=True)
        logits = mx.where(logits < pivot, -mx.inf, logits)
    return logits


def seen_mask(codes, size: int) -> mx.array:
    """Boolean [size]: True at every code in `codes` (codes >= size ignored)."""
    mask = np.zeros(size, dtype=bool)
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    mask[codes[codes < size]] = True
    return mx.array(mask)


def logits_to_probs(logits: mx.array, previous_tokens: Sequence[int] | mx.array | None = None, *,
                    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                    repetition_penalty: float = 1.0) -> mx.array:
    """The processed probability vector, as upstream's `logits_to_probs`: logits [V] or [1, V]."""
    seen = seen_mask(np.asarray(previous_tokens if previous_tokens is not None else []), logits.shape[-1])
    penalized = apply_repetition_penalty(logits, seen, repetition_penalty)
    filtered = filter_logits(penalized, top_k=top_k, top_p=top_p, temperature=temperature)
    return mx.softmax(filtered, axis=-1, precise=True)


def exponential(shape: Sequence[int], key: mx.array) -> mx.array:
    """q ~ Exp(1), strictly positive (a zero would turn a zero probability into NaN)."""
    u = mx.random.uniform(shape=shape, key=key)
    return mx.maximum(-mx.log1p(-u), mx.array(1e-30, dtype=mx.float32))


def row_keys(seeds: Sequence[int | None]) -> mx.array:
    """One random key per row [B, 2]; a None seed is drawn from MLX's global generator."""
    return mx.stack([mx.random.key(int(mx.random.randint(0, 2**31 - 1, ()).item()) if seed is None else seed)
                     for seed in seeds])


@functools.lru_cache(maxsize=32)
def make_sampler(*, top_k: int | None, top_p: float | None, temperature: float, repetition_penalty: float
                 ) -> Callable[[mx.array, mx.array, mx.array], tuple[mx.array, mx.array]]:
    """A compiled sampler `(logits [B, V], seen [B, V] bool, keys [B, 2]) -> (sampled [B], greedy [B])`,
    greedy being the argmax of the penalized logits (upstream's EOS test looks at both).

    mlx-lm compiles its samplers over MLX's global random state; here every row draws from its own
    key instead (vmapped), so that a row's codes depend on its seed only, not on its batch.
    """
    def race(probs: mx.array, key: mx.array) -> mx.array:
        return mx.argmax(probs / exponential(probs.shape, key), axis=-1)

    def sample(logits: mx.array, seen: mx.array, keys: mx.array) -> tuple[mx.array, mx.array]:
        penalized = apply_repetition_penalty(logits, seen, repetition_penalty)
        probs = mx.softmax(filter_logits(penalized, top_k=top_k, top_p=top_p, temperature=temperature),
                           axis=-1, precise=True)
        return mx.vmap(race)(probs, keys), mx.argmax(penalized, axis=-1)

    return mx.compile(sample)
