"""Batched T2S decoding: several segments of one request share the prompt and run as one batch.

At batch 1 a decode step streams every weight once per code; with B rows the same weight pass makes
B codes, which is where a CPU decode gets its throughput. Each row follows exactly the rules and the
random stream of `t2s.stream_generate` with its own seed, so a batch gives every row the codes it
would get alone (up to float rounding of the wider products).

Layout: rows are left-padded to the longest text, [pad | text_i | prompt codes | generated codes],
so the prompt and every generated code sit at the same cache position in all rows; text positions
are each row's own (0..T_i-1). Padded keys are masked out everywhere. Rows that stop are dropped from
the batch (cache included) at the next step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import mlx.core as mx
import numpy as np

from ..errors import PrimeSpeechError
from ..runtime import blas_threads
from .kernels import lanes, split_range
from .t2s import (
    EOS_BLOCKED_STEPS,
    MAX_DECODE_STEPS,
    KVCache,
    Model,
    _check_inputs,
    _make_token_step,
    _seen_mask,
    last_step,
    start_decoding,
)


def batch_prefill_mask(pads: Sequence[int], n_text: int, n_audio: int) -> mx.array | None:
    """Boolean mask [B, 1, L, L] (True = may attend) for rows left-padded by `pads` to `n_text` text
    positions, followed by `n_audio` prompt codes: text rows see their row's text, audio rows its text
    and the audio causally; pad rows see only themselves (their outputs are never used). None when
    nothing is padded and there is no audio."""
    if n_audio == 0 and not any(pads):
        return None
    n = n_text + n_audio
    row = np.arange(n)[:, None]
    col = np.arange(n)[None, :]
    masks = []
    for pad in pads:
        allowed = (row >= pad) & (col >= pad) & ((col < n_text) | ((row >= n_text) & (col <= row)))
        allowed |= (row < pad) & (col == row)
        masks.append(allowed)
    return mx.array(np.stack(masks)[:, None])


def embed_batch(model: Model, texts: Sequence[tuple[mx.array, mx.array]], prompt: np.ndarray
                ) -> tuple[mx.array, list[int]]:
    """The prefill input [B, L, D] of rows `(phones [T_i] int32, bert [1024, T_i])` left-padded to the
    longest text and followed by the shared `prompt` codes, and each row's padding."""
    lengths = [phones.shape[0] for phones, _ in texts]
    n_text = max(lengths)
    pads = [n_text - length for length in lengths]
    embedded = [model.embed_text(phones[None], bert[None]) for phones, bert in texts]
    x = mx.concatenate([mx.pad(t, [(0, 0), (pad, 0), (0, 0)]) for t, pad in zip(embedded, pads, strict=True)])
    if prompt.shape[0]:
        audio = model.embed_audio(mx.array(prompt.astype(np.int32))[None])
        x = mx.concatenate([x, mx.broadcast_to(audio, (len(texts), prompt.shape[0], audio.shape[-1]))], axis=1)
    return x, pads


def _prefill(model: Model, x: mx.array, mask: mx.array | None) -> tuple[mx.array, list[KVCache]]:
    """Last-position logits [B, vocab] and the filled caches. On the CPU the rows are split over the
    CPU lanes (one BLAS thread each): MLX runs element-wise work on one thread per stream, and the
    prefill's softmax, masks and norms over [B, heads, L, L] would otherwise leave a core idle."""
    streams = lanes()
    parts = split_range(x.shape[0], len(streams))
    if len(parts) == 1:
        cache = model.make_cache()
        return model(x, mask, cache, last_only=True), cache
    pieces = []
    with blas_threads(1):
        for (start, stop), stream in zip(parts, streams, strict=False):
            with mx.stream(stream):
                part_cache = model.make_cache()
                part_mask = None if mask is None else mask[start:stop]
                pieces.append((model(x[start:stop], part_mask, part_cache, last_only=True), part_cache))
        mx.eval([logits for logits, _ in pieces], [c.state for _, caches in pieces for c in caches])
    cache = model.make_cache()
    for i, layer_cache in enumerate(cache):
        layer_cache.keys = mx.concatenate([caches[i].keys for _, caches in pieces])
        layer_cache.values = mx.concatenate([caches[i].values for _, caches in pieces])
        layer_cache.offset = pieces[0][1][i].offset
    return mx.concatenate([logits for logits, _ in pieces]), cache


def generate_batch(model: Model, rows: Sequence[tuple[object, object]], prompt=None, *,
                   seeds: Sequence[int | None], top_k: int | None = 15, top_p: float | None = 1.0,
                   temperature: float = 1.0, repetition_penalty: float = 1.35, early_stop_num: int = -1,
                   max_tokens: int = MAX_DECODE_STEPS, poll: Callable[[], None] | None = None,
                   poll_every: int = 25) -> list[list[int]]:
    """The generated codes of each row `(phones [T_i], bert [1024, T_i])` after the shared `prompt`
    codes, as `t2s.generate` would make them one row at a time with `seed=seeds[i]`.

    `poll` is called every `poll_every` steps; an exception it raises abandons the batch.
    """
    if len(seeds) != len(rows):
        raise PrimeSpeechError(f"generate_batch needs one seed per row: {len(rows)} rows, {len(seeds)} seeds")
    if not rows:
        return []
    checked = [_check_inputs(model, phones, bert, prompt) for phones, bert in rows]
    prompt_codes = checked[0][2]
    batch = len(checked)
    if max_tokens <= 0:
        return [[0] for _ in range(batch)]
    args = model.args
    token_step = _make_token_step(args.EOS, args.vocab_size, top_k if top_k and top_k > 0 else None,
                                  1.0 if top_p is None else float(top_p), float(temperature),
                                  float(repetition_penalty))
    keys = [mx.random.key(int(mx.random.randint(0, 2**31 - 1, ()).item()) if s is None else s) for s in seeds]
    blocked, free = mx.array(True), mx.array(False)

    x, pads = embed_batch(model, [(phones, bert) for phones, bert, _ in checked], prompt_codes)
    n_prompt = prompt_codes.shape[0]
    logits, stepper = start_decoding(model, x, x.shape[1] - n_prompt,
                                     model.ar_audio_position.positions(n_prompt, max_tokens), pads,
                                     mlx_prefill=lambda x, mask: _prefill(model, x, mask))
    seen = [_seen_mask(prompt_codes, args.vocab_size)] * batch
    last = last_step(max_tokens, early_stop_num)

    def sample(idx: int, logits: mx.array, seen: list, keys: list):
        flag = blocked if idx < EOS_BLOCKED_STEPS else free
        out = [token_step(logits[i:i + 1], seen[i], keys[i], flag) for i in range(len(seen))]
        tokens = mx.concatenate([o[0] for o in out])
        stops = mx.concatenate([o[1] for o in out])
        return tokens, stops, [o[2] for o in out], [o[3] for o in out]

    results: list[list[int]] = [[] for _ in range(batch)]
    live = list(range(batch))  # original row index of each batch row
    tokens, stops, seen, keys = sample(0, logits, seen, keys)
    mx.async_eval(tokens, stops)
    for idx in range(last + 1):
        if poll is not None and idx and idx % poll_every == 0:
            poll()
        # queue step idx + 1 (all current rows) before reading step idx back
        nxt = None
        if idx < last:
            nxt = sample(idx + 1, stepper(tokens, idx), seen, keys)
            mx.async_eval(nxt[0], nxt[1])
        codes, stopped = np.array(tokens).tolist(), np.array(stops).tolist()
        keep = []
        for pos, row in enumerate(live):
            if stopped[pos]:
                continue
            results[row].append(int(codes[pos]))
            keep.append(pos)
        if nxt is None or not keep:
            break
        tokens, stops, seen, keys = nxt
        if len(keep) < len(live):
            live = [live[pos] for pos in keep]
            index = mx.array(np.asarray(keep, dtype=np.int32))
            tokens, stops = tokens[index], stops[index]
            seen, keys = [seen[pos] for pos in keep], [keys[pos] for pos in keep]
            stepper.keep(keep)
    return [codes if codes else [0] for codes in results]
