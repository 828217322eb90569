"""Semantic codes from the T2S model with upstream's `infer_panel_naive` rules, for 1..N rows at once.

Rows (phones + BERT features of one segment each) share the prompt codes and decode as one batch:
each weight pass then makes a code for every row. Each row follows upstream's rules with its own
seed, so it gets the codes it would get alone. Rows are left-padded to the longest text,
[pad | text_i | prompt codes | generated codes], so the prompt and every generated code sit at the
same cache position in all rows; rows that stop leave the batch. Batch-1 streaming is the one-row case.

`generate_step` is the generator (mlx-lm's shape: step n+1 is queued with `mx.async_eval` before
step n's codes are read back); `generate` collects its codes. Both use only the model's decoding
API (`make_cache`, `prefill`, `step`, `cache.filter`), whichever implementation the model has.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence

import mlx.core as mx
import numpy as np

from ..errors import PrimeSpeechError
from .sampling import make_sampler, row_keys, seen_mask
from .t2s import Model

EOS_BLOCKED_STEPS = 11  # upstream lets no EOS be produced before decode step 11
MAX_DECODE_STEPS = 1500  # upstream's hard cap on generated codes


def last_step(max_tokens: int, early_stop_num: int) -> int:
    """The decode step whose code ends decoding when no EOS comes first: the one that crosses
    `early_stop_num` (-1: no limit) or the one at max_tokens - 1; its code is kept."""
    last = max_tokens - 1
    if early_stop_num != -1:
        last = min(last, max(early_stop_num, 0))
    return last


def upstream_kept_codes(codes: list[int], *, has_prompt: bool, early_stop_num: int = -1,
                        max_tokens: int = MAX_DECODE_STEPS) -> list[int]:
    """The part of a row's generated codes that upstream's TTS.run goes on with.

    TTS.run slices `(prompt + codes)[-idx:]` with idx the step decoding stopped at. After an EOS stop
    idx equals the number of codes, so all are kept; after a stop by `early_stop_num` or by the cap
    idx is one less, and the first code is dropped. Without a prompt upstream reports idx 0 and
    keeps everything.
    """
    if not has_prompt or codes == [0]:
        return list(codes)
    n = len(codes)
    if (early_stop_num >= 0 and n == early_stop_num + 1) or n == max_tokens:
        return list(codes[1:])
    return list(codes)


def _check_text(model: Model, phones, bert) -> tuple[mx.array, mx.array]:
    args = model.args
    phones = np.asarray(phones, dtype=np.int64).reshape(-1)
    T = phones.shape[0]
    if T == 0:
        raise PrimeSpeechError("T2S needs at least one phone")
    if phones.min() < 0 or phones.max() >= args.phoneme_vocab_size:
        raise PrimeSpeechError(f"phone ids must lie in [0, {args.phoneme_vocab_size})")
    bert = bert if isinstance(bert, mx.array) else mx.array(np.asarray(bert, dtype=np.float32))
    if bert.ndim != 2 or tuple(bert.shape) != (args.bert_dim, T):
        raise PrimeSpeechError(f"T2S bert features must be [{args.bert_dim}, {T}] (one column per "
                               f"phone), got {list(bert.shape)}")
    return mx.array(phones.astype(np.int32)), bert


def _check_prompt(model: Model, prompt) -> np.ndarray:
    prompt = np.zeros(0, np.int64) if prompt is None else np.asarray(prompt, dtype=np.int64).reshape(-1)
    if prompt.size and (prompt.min() < 0 or prompt.max() >= model.args.EOS):
        raise PrimeSpeechError(f"prompt semantic codes must lie in [0, {model.args.EOS})")
    return prompt


def prefill_input(model: Model, texts: Sequence[tuple[mx.array, mx.array]], prompt: np.ndarray
                  ) -> tuple[mx.array, list[int]]:
    """The prefill input [B, L, D] of rows `(phones [T_i] int32, bert [bert_dim, T_i])` left-padded to
    the longest text and followed by the shared `prompt` codes, and each row's left padding."""
    lengths = [phones.shape[0] for phones, _ in texts]
    pads = [max(lengths) - length for length in lengths]
    embedded = [model.embed_text(phones[None], bert[None]) for phones, bert in texts]
    x = mx.concatenate([mx.pad(t, [(0, 0), (pad, 0), (0, 0)]) for t, pad in zip(embedded, pads, strict=True)])
    if prompt.shape[0]:
        audio = model.embed_audio(mx.array(prompt.astype(np.int32))[None])
        x = mx.concatenate([x, mx.broadcast_to(audio, (len(texts), prompt.shape[0], audio.shape[-1]))], axis=1)
    return x, pads


@functools.lru_cache(maxsize=32)
def _token_step(eos: int, vocab: int, top_k: int | None, top_p: float, temperature: float,
                repetition_penalty: float) -> Callable:
    """EOS blocking, sampling, the stop test and the seen-codes update of one step, all rows (traced into
    the model's compiled step, or compiled alone for a model whose step is a native twin)."""
    sample = make_sampler(top_k=top_k, top_p=top_p, temperature=temperature,
                          repetition_penalty=repetition_penalty)

    def token_step(logits, seen, keys, block_eos):
        ids = mx.arange(vocab)
        # sampling always in float32 (the model may run in float16 on a GPU)
        logits = mx.where(block_eos & (ids == eos), -mx.inf, logits.astype(mx.float32))
        pairs = mx.vmap(mx.random.split)(keys)
        tokens, greedy = sample(logits, seen, pairs[:, 1])
        stops = (greedy == eos) | (tokens == eos)
        return tokens, stops, seen | (ids == tokens[:, None]), pairs[:, 0]

    return token_step


@functools.lru_cache(maxsize=32)
def _compiled(token_step: Callable) -> Callable:
    return mx.compile(token_step)


def generate_step(model: Model, rows: Sequence[tuple[object, object]], prompt=None, *,
                  seeds: Sequence[int | None], top_k: int | None = 15, top_p: float | None = 1.0,
                  temperature: float = 1.0, repetition_penalty: float = 1.35, early_stop_num: int = -1,
                  max_tokens: int = MAX_DECODE_STEPS) -> Iterator[tuple[list[int], list[int]]]:
    """Yield, for each decode step, `(rows, codes)`: the indices of the rows that keep a code at
    that step and their codes.

    rows: `(phones [T_i] int, bert [bert_dim, T_i])` per row; prompt: the prompt's semantic codes [P]
    (None or empty: no prompt), shared by all rows; seeds: one per row (None: drawn from MLX's global
    generator). Upstream's rules, per row and step idx: EOS cannot be produced while idx < 11; the
    row stops without its code when argmax(penalized logits) or the sampled code is EOS; it stops
    keeping its code at the step that crosses `early_stop_num` (-1: no limit) or at
    idx == max_tokens - 1. top_k None or <= 0 disables top-k.
    """
    if len(seeds) != len(rows):
        raise PrimeSpeechError(f"T2S generation needs one seed per row: {len(rows)} rows, {len(seeds)} seeds")
    texts = [_check_text(model, phones, bert) for phones, bert in rows]
    prompt = _check_prompt(model, prompt)
    if not texts or max_tokens <= 0:
        return
    args = model.args
    token_step = _token_step(args.EOS, args.vocab_size, top_k if top_k and top_k > 0 else None,
                             1.0 if top_p is None else float(top_p), float(temperature), float(repetition_penalty))
    blocked, free = mx.array(True), mx.array(False)
    if model.compiled_decoding:  # one compiled graph per token: the model's step, then sampling
        def advance(tokens, position, seen, keys, block):
            return model.step_then(token_step, (seen, keys, block), tokens, position, cache)
    else:
        def advance(tokens, position, seen, keys, block):
            return _compiled(token_step)(model.step(tokens, position, cache), seen, keys, block)

    x, pads = prefill_input(model, texts, prompt)
    n_prompt = prompt.shape[0]
    cache = model.make_cache(pads)
    logits = model.prefill(x, x.shape[1] - n_prompt, cache)
    seen = mx.broadcast_to(seen_mask(prompt, args.vocab_size), (len(texts), args.vocab_size))
    last = last_step(max_tokens, early_stop_num)

    live = list(range(len(texts)))  # the row index of each batch row
    tokens, stops, seen, keys = _compiled(token_step)(logits, seen, row_keys(seeds), blocked)
    mx.async_eval(tokens, stops)
    for idx in range(last + 1):
        # queue step idx + 1 (all current rows) before reading step idx back
        nxt = None
        if idx < last:
            nxt = advance(tokens, n_prompt + idx, seen, keys, blocked if idx + 1 < EOS_BLOCKED_STEPS else free)
            mx.async_eval(nxt[0], nxt[1])
        codes, stopped = tokens.tolist(), stops.tolist()
        keep = [pos for pos in range(len(live)) if not stopped[pos]]
        if keep:
            yield [live[pos] for pos in keep], [codes[pos] for pos in keep]
        if nxt is None or not keep:
            return
        tokens, stops, seen, keys = nxt
        if len(keep) < len(live):
            live = [live[pos] for pos in keep]
            index = mx.array(np.asarray(keep, dtype=np.int32))
            tokens, stops, seen, keys = tokens[index], stops[index], seen[index], keys[index]
            cache.filter(keep)


def generate(model: Model, rows: Sequence[tuple[object, object]], prompt=None, *, seeds: Sequence[int | None],
             poll: Callable[[], None] | None = None, poll_every: int = 25, **options) -> list[list[int]]:
    """Every row's generated codes (`generate_step`'s rules and `options`); [0] for a row that made
    none, as upstream. `poll` is called every `poll_every` steps; an exception it raises abandons the
    batch."""
    results: list[list[int]] = [[] for _ in rows]
    for count, (live, codes) in enumerate(generate_step(model, rows, prompt, seeds=seeds, **options), 1):
        for row, code in zip(live, codes, strict=True):
            results[row].append(code)
        if poll is not None and count % poll_every == 0:
            poll()
    return [codes or [0] for codes in results]
