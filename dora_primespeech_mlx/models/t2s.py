"""The T2S "s1" GPT of GPT-SoVITS (AR/models/t2s_model.py) in MLX: phones + BERT features -> semantic codes.

Architecture: text tokens (phone embedding + projected BERT feature + alpha-scaled sinusoidal positions)
followed by audio tokens (code embedding + its own alpha-scaled positions, starting at 0 again) run
through a post-norm transformer encoder without a final norm; `ar_predict_layer` (no bias) gives the
logits of the next code. In the prefill, text rows attend to all text and no audio, audio rows to all
text and causally to audio; later steps attend to the whole cache.

Decoding reproduces upstream's `infer_panel_naive` sampling and stop rules exactly; see `stream_generate`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import PrimeSpeechError
from .base import BaseModelArgs, load_weights_strict
from .kernels import attention

logger = logging.getLogger(__name__)

KIND = "t2s"
FRAME_RATE = 50  # semantic codes per second; early_stop_num = FRAME_RATE * max_sec
EOS_BLOCKED_STEPS = 11  # upstream lets no EOS be produced before decode step 11
MAX_DECODE_STEPS = 1500  # upstream's hard cap on generated codes
WINDOW_STEP = 32  # granularity of the cache window a decode step attends over
_PREFIX = "model."


@dataclass
class ModelArgs(BaseModelArgs):
    """Hyper-parameters, from `config['model']` of the checkpoint (+ `config['data']['max_sec']`)."""

    vocab_size: int = 1025
    phoneme_vocab_size: int = 732
    embedding_dim: int = 512
    hidden_dim: int = 512
    head: int = 16
    n_layer: int = 24
    EOS: int = 1024
    max_sec: int = 54
    bert_dim: int = 1024
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.EOS != self.vocab_size - 1:
            raise PrimeSpeechError(f"unsupported T2S config: EOS {self.EOS} is not vocab_size - 1 "
                                   f"({self.vocab_size - 1}); is this a GPT-SoVITS s1 checkpoint?")
        if self.embedding_dim != self.hidden_dim or self.hidden_dim % self.head:
            raise PrimeSpeechError(f"unsupported T2S config: embedding_dim {self.embedding_dim}, hidden_dim "
                                   f"{self.hidden_dim}, head {self.head}")

    @property
    def early_stop_num(self) -> int:
        """Upstream's TTS stops after 50 * max_sec generated codes."""
        return FRAME_RATE * self.max_sec

    @classmethod
    def from_checkpoint_config(cls, config: dict[str, Any]) -> ModelArgs:
        """Build from an official checkpoint's `config` (the training yaml)."""
        if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
            raise PrimeSpeechError("the GPT checkpoint has no config['model']: not a GPT-SoVITS s1 .ckpt")
        params = dict(config["model"])
        max_sec = (config.get("data") or {}).get("max_sec")
        if max_sec is None:
            logger.warning("GPT checkpoint config has no data.max_sec; using %d", cls.max_sec)
        else:
            params["max_sec"] = int(max_sec)
        return cls.from_dict(params)


# ----------------------------------------------------------------------------------------------- layers


class TokenEmbedding(nn.Module):
    def __init__(self, vocab_size: int, dims: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dims)

    def __call__(self, ids: mx.array) -> mx.array:
        return self.word_embeddings(ids)


def sine_table(n: int, dims: int) -> np.ndarray:
    """Upstream's sinusoid table [n, dims]: sin on even, cos on odd channels, angles formed in float32."""
    position = np.arange(n, dtype=np.float32)[:, None]
    div = np.exp(np.arange(0, dims, 2, dtype=np.float32) * np.float32(-(math.log(10000.0) / dims)))
    angle = (position * div.astype(np.float32)).astype(np.float64)
    table = np.empty((n, dims), dtype=np.float32)
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle)
    return table


class SinePositionalEmbedding(nn.Module):
    """`x + alpha * pe[start:start+T]` (no sqrt(d) scaling of x); alpha is learned."""

    def __init__(self, dims: int):
        super().__init__()
        self.dims = dims
        self.alpha = mx.ones((1,))
        self._table = sine_table(4000, dims)

    def positions(self, start: int, n: int) -> mx.array:
        """alpha * pe[start:start+n], [n, dims]."""
        if start + n > self._table.shape[0]:
            self._table = sine_table(max(start + n, 2 * self._table.shape[0]), self.dims)
        return self.alpha * mx.array(self._table[start:start + n]).astype(self.alpha.dtype)

    def __call__(self, x: mx.array, start: int = 0) -> mx.array:
        return x + self.positions(start, x.shape[-2])


class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention's parameters: q|k|v stacked in one `in_proj` [3*dims, dims]."""

    def __init__(self, dims: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dims // heads)
        self.in_proj_weight = mx.zeros((3 * dims, dims))
        self.in_proj_bias = mx.zeros((3 * dims,))
        self.out_proj = nn.Linear(dims, dims)

    def __call__(self, x: mx.array, mask: mx.array | None = None, cache: KVCache | None = None) -> mx.array:
        B, L, D = x.shape
        qkv = mx.addmm(self.in_proj_bias, x, self.in_proj_weight.T)
        qkv = qkv.reshape(B, L, 3, self.heads, D // self.heads).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        out = attention(q, k, v, self.scale, mask)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(B, L, D))

    def step(self, x: mx.array, keys: mx.array, values: mx.array, offset: mx.array,
             mask: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """One new position on whole preallocated buffers [B, heads, capacity, head_dim]: its k/v are
        written at `offset` (in place), and attention reads the first W = mask.shape[-1] positions,
        the additive `mask` hiding those beyond `offset`. Shapes depend on W only, so a compiled step
        is reused for many positions."""
        B, L, D = x.shape
        W = mask.shape[-1]
        qkv = mx.addmm(self.in_proj_bias, x, self.in_proj_weight.T)
        qkv = qkv.reshape(B, L, 3, self.heads, D // self.heads).transpose(2, 0, 3, 1, 4)
        keys = mx.slice_update(keys, qkv[1], offset, axes=(2,))
        values = mx.slice_update(values, qkv[2], offset, axes=(2,))
        out = attention(qkv[0], keys[..., :W, :], values[..., :W, :], self.scale, mask)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(B, L, D)), keys, values


class TransformerEncoderLayer(nn.Module):
    """Post-norm: x = LN1(x + MHA(x)); x = LN2(x + W2 relu(W1 x))."""

    def __init__(self, dims: int, heads: int, eps: float):
        super().__init__()
        self.self_attn = MultiheadAttention(dims, heads)
        self.linear1 = nn.Linear(dims, 4 * dims)
        self.linear2 = nn.Linear(4 * dims, dims)
        self.norm1 = nn.LayerNorm(dims, eps=eps)
        self.norm2 = nn.LayerNorm(dims, eps=eps)

    def __call__(self, x: mx.array, mask: mx.array | None = None, cache: KVCache | None = None) -> mx.array:
        x = self.norm1(x + self.self_attn(x, mask, cache))
        return self.norm2(x + self.linear2(nn.relu(self.linear1(x))))

    def step(self, x: mx.array, keys: mx.array, values: mx.array, offset: mx.array,
             mask: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        h, keys, values = self.self_attn.step(x, keys, values, offset, mask)
        x = self.norm1(x + h)
        return self.norm2(x + self.linear2(nn.relu(self.linear1(x)))), keys, values


class TransformerEncoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.layers = [TransformerEncoderLayer(args.hidden_dim, args.head, args.norm_eps)
                       for _ in range(args.n_layer)]


class KVCache:
    """Preallocated keys/values [B, heads, capacity, head_dim], grown `step` positions at a time."""

    step = 256

    def __init__(self):
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def reserve(self, n: int, like: mx.array) -> None:
        """Make room for `n` more positions (like: an array [B, heads, *, head_dim] of the right dtype)."""
        if self.offset + n <= self.capacity:
            return
        B, H, _, Dh = like.shape
        grow = ((self.offset + n - self.capacity + self.step - 1) // self.step) * self.step
        new_k = mx.zeros((B, H, grow, Dh), like.dtype)
        new_v = mx.zeros((B, H, grow, Dh), like.dtype)
        if self.keys is None:
            self.keys, self.values = new_k, new_v
        else:
            self.keys = mx.concatenate([self.keys, new_k], axis=2)
            self.values = mx.concatenate([self.values, new_v], axis=2)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        prev = self.offset
        self.reserve(keys.shape[2], keys)
        self.offset += keys.shape[2]
        self.keys[..., prev:self.offset, :] = keys
        self.values[..., prev:self.offset, :] = values
        return self.keys[..., :self.offset, :], self.values[..., :self.offset, :]

    @property
    def state(self) -> list[mx.array]:
        return [a for a in (self.keys, self.values) if a is not None]


def prefill_mask(n_text: int, n_audio: int) -> mx.array | None:
    """Boolean attention mask [T+P, T+P] (True = may attend): text rows see all text and no audio;
    audio rows see all text and audio causally. None when there is no audio (all text sees all text)."""
    if n_audio == 0:
        return None
    n = n_text + n_audio
    row = np.arange(n)[:, None]
    col = np.arange(n)[None, :]
    allowed = (col < n_text) | ((row >= n_text) & (col <= row))
    return mx.array(allowed)


# ------------------------------------------------------------------------------------------------ model


class Model(nn.Module):
    """Text2SemanticDecoder's inference path. Parameter names follow upstream's state dict."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        d = args.embedding_dim
        self.bert_proj = nn.Linear(args.bert_dim, d)
        self.ar_text_embedding = TokenEmbedding(args.phoneme_vocab_size, d)
        self.ar_text_position = SinePositionalEmbedding(d)
        self.ar_audio_embedding = TokenEmbedding(args.vocab_size, d)
        self.ar_audio_position = SinePositionalEmbedding(d)
        self.h = TransformerEncoder(args)
        self.ar_predict_layer = nn.Linear(args.hidden_dim, args.vocab_size, bias=False)
        self._compiled_step = None

    @property
    def layers(self) -> list[TransformerEncoderLayer]:
        return self.h.layers

    def make_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.layers]

    def embed_text(self, phones: mx.array, bert: mx.array) -> mx.array:
        """phones [B, T] int, bert [B, bert_dim, T] -> [B, T, D]."""
        bert = bert.swapaxes(1, 2).astype(self.bert_proj.weight.dtype)
        return self.ar_text_position(self.ar_text_embedding(phones) + self.bert_proj(bert))

    def embed_audio(self, codes: mx.array, start: int = 0) -> mx.array:
        """codes [B, P] int -> [B, P, D], positions start..start+P."""
        return self.ar_audio_position(self.ar_audio_embedding(codes), start)

    def __call__(self, x: mx.array, mask: mx.array | None = None, cache: list[KVCache] | None = None,
                 last_only: bool = False) -> mx.array:
        """Embedded tokens [B, L, D] -> logits [B, L, vocab] ([B, vocab] with last_only)."""
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, None if cache is None else cache[i])
        if last_only:
            x = x[:, -1]
        return self.ar_predict_layer(x)

    def decode_step(self, token: mx.array, position: mx.array, offset: mx.array, window: mx.array,
                    kv: list[mx.array], valid_from: mx.array | None = None) -> tuple[mx.array, list[mx.array]]:
        """Logits [B, vocab] for one new code per row. token: [B] int; position: alpha * pe row [1, D]
        of its audio position; offset: its index in the cache; window: arange(W), W > offset, the cache
        positions attention reads; kv: every layer's keys and values buffers [B, H, capacity, Dh],
        returned updated; valid_from: [B, 1] int, each row's first real cache position (rows of a batch
        are left-padded to a common text length), None when no row is padded."""
        x = (self.ar_audio_embedding(token) + position)[:, None]
        allowed = window <= offset
        if valid_from is not None:
            allowed = (allowed & (window >= valid_from))[:, None, None, :]
        mask = mx.where(allowed, 0.0, -mx.inf).astype(x.dtype)
        out = []
        for i, layer in enumerate(self.layers):
            x, k, v = layer.step(x, kv[2 * i], kv[2 * i + 1], offset, mask)
            out += [k, v]
        return self.ar_predict_layer(x[:, -1]), out

    def compiled_decode_step(self) -> Callable:
        """`decode_step` compiled (traced once per cache capacity and window). The parameters are
        implicit inputs, read at every call, so weights loaded or changed later are used."""
        if self._compiled_step is None:
            self._compiled_step = mx.compile(self.decode_step, inputs=[self.state])
        return self._compiled_step

    @staticmethod
    def sanitize(weights: dict[str, Any]) -> dict[str, Any]:
        """Map an official s1 state dict onto this model's parameter names.

        Strips the `model.` prefix of the Lightning module. The attention's packed `in_proj_weight`
        [3*D, D] / `in_proj_bias` are kept packed: at batch 1 a decode step is bound by per-product
        overhead and weight streaming, and one [D, 3D] product per layer beats three [D, D] ones;
        q, k and v are split from its output. Arrays keep their stored dtype (fp16 in official files,
        which is exact); `load_model` casts to the runtime dtype. Upstream's own training-only
        leftovers, if a file has them, are dropped; anything else unknown stays and strict loading
        reports it.
        """
        out = {}
        for key, value in weights.items():
            if key.startswith(_PREFIX):
                key = key[len(_PREFIX):]
            if key.startswith(("ar_accuracy_metric.", "loss_fct.")):
                continue
            out[key] = value
        return out


# --------------------------------------------------------------------------------------------- sampling


def apply_repetition_penalty(logits: mx.array, seen: mx.array, penalty: float) -> mx.array:
    """Upstream's penalty on every token seen so far (prompt included): s<0 ? s*p : s/p."""
    if penalty == 1.0:
        return logits
    return mx.where(seen, mx.where(logits < 0, logits * penalty, logits / penalty), logits)


def filter_logits(logits: mx.array, *, top_k: int | None, top_p: float | None,
                  temperature: float) -> mx.array:
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


def logits_to_probs(logits: mx.array, previous_tokens: Sequence[int] | mx.array | None = None, *,
                    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                    repetition_penalty: float = 1.0) -> mx.array:
    """The processed probability vector, as upstream's `logits_to_probs`: logits [V] or [1, V]."""
    seen = _seen_mask(np.asarray(previous_tokens if previous_tokens is not None else []), logits.shape[-1])
    penalized = apply_repetition_penalty(logits, seen, repetition_penalty)
    filtered = filter_logits(penalized, top_k=top_k, top_p=top_p, temperature=temperature)
    return mx.softmax(filtered, axis=-1, precise=True)


def _seen_mask(tokens, size: int) -> mx.array:
    mask = np.zeros(size, dtype=bool)
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    mask[tokens[tokens < size]] = True
    return mx.array(mask)


def exponential(shape: Sequence[int], key: mx.array) -> mx.array:
    """q ~ Exp(1), strictly positive (a zero would turn a zero probability into NaN)."""
    u = mx.random.uniform(shape=shape, key=key)
    return mx.maximum(-mx.log1p(-u), mx.array(1e-30, dtype=mx.float32))


def _sample_fn(top_k: int | None, top_p: float | None, temperature: float, repetition_penalty: float):
    def sample(logits: mx.array, seen: mx.array, key: mx.array) -> tuple[mx.array, mx.array]:
        penalized = apply_repetition_penalty(logits, seen, repetition_penalty)
        probs = mx.softmax(filter_logits(penalized, top_k=top_k, top_p=top_p, temperature=temperature),
                           axis=-1, precise=True)
        q = exponential(probs.shape, key)
        return mx.argmax(probs / q, axis=-1), mx.argmax(penalized, axis=-1)

    return sample


@functools.lru_cache(maxsize=32)
def make_sampler(*, top_k: int | None, top_p: float | None, temperature: float, repetition_penalty: float
                 ) -> Callable[[mx.array, mx.array, mx.array], tuple[mx.array, mx.array]]:
    """A compiled sampler `(logits [..., V], seen [V] bool, key) -> (sampled, argmax of penalized)`.

    Sampling is upstream's exponential race: argmax(probs / q), q ~ Exp(1) per entry, which draws
    from `probs` exactly. The key makes it reproducible: same key, same token.
    """
    return mx.compile(_sample_fn(top_k, top_p, temperature, repetition_penalty))


@functools.lru_cache(maxsize=32)
def _make_token_step(eos: int, vocab: int, top_k: int | None, top_p: float | None, temperature: float,
                     repetition_penalty: float) -> Callable:
    """Compiled: EOS blocking, sampling, the stop test and the repetition-penalty set of one step."""
    sample = _sample_fn(top_k, top_p, temperature, repetition_penalty)

    def token_step(logits, seen, key, block_eos):
        ids = mx.arange(vocab)
        # sampling always in float32 (the model may run in float16 on a GPU)
        logits = mx.where(block_eos & (ids == eos), -mx.inf, logits.astype(mx.float32))
        key, sub = mx.random.split(key)
        token, greedy = sample(logits, seen, sub)
        stop = (greedy == eos) | (token == eos)
        return token, stop, seen | (ids == token), key

    return mx.compile(token_step)


# ------------------------------------------------------------------------------------------- generation


def _check_inputs(model: Model, phones, bert, prompt) -> tuple[mx.array, mx.array, np.ndarray]:
    phones = np.asarray(phones, dtype=np.int64).reshape(-1)
    T = phones.shape[0]
    if T == 0:
        raise PrimeSpeechError("T2S needs at least one phone")
    if phones.min() < 0 or phones.max() >= model.args.phoneme_vocab_size:
        raise PrimeSpeechError(f"phone ids must lie in [0, {model.args.phoneme_vocab_size})")
    bert = bert if isinstance(bert, mx.array) else mx.array(np.asarray(bert, dtype=np.float32))
    if bert.ndim != 2 or tuple(bert.shape) != (model.args.bert_dim, T):
        raise PrimeSpeechError(f"T2S bert features must be [{model.args.bert_dim}, {T}] (one column per "
                               f"phone), got {list(bert.shape)}")
    prompt = np.zeros(0, np.int64) if prompt is None else np.asarray(prompt, dtype=np.int64).reshape(-1)
    if prompt.size and (prompt.min() < 0 or prompt.max() >= model.args.EOS):
        raise PrimeSpeechError(f"prompt semantic codes must lie in [0, {model.args.EOS})")
    return mx.array(phones.astype(np.int32)), bert, prompt


def last_step(max_tokens: int, early_stop_num: int) -> int:
    """The decode step whose code ends decoding when no EOS comes first: the one that crosses
    `early_stop_num` (-1: no limit) or the one at max_tokens - 1; its code is kept."""
    last = max_tokens - 1
    if early_stop_num != -1:
        last = min(last, max(early_stop_num, 0))
    return last


def decode_into_cache(decode: Callable, cache: list[KVCache], tokens: mx.array, position: mx.array,
                      windows: dict[int, mx.array], valid_from: mx.array | None = None) -> mx.array:
    """One decode step (`Model.compiled_decode_step`) of `tokens` [B] at audio `position` [1, D]: their
    keys and values go into the next cache position, and the logits [B, vocab] of the next codes come
    back. Attention reads a window growing WINDOW_STEP positions at a time, not the whole buffer: fewer
    masked-out scores to exponentiate, for one retrace every WINDOW_STEP steps (`windows` keeps the
    window index arrays between steps)."""
    offset = cache[0].offset
    for c in cache:
        c.reserve(1, c.keys)
        c.offset += 1
    width = min(-(-(offset + 1) // WINDOW_STEP) * WINDOW_STEP, cache[0].capacity)
    if width not in windows:
        windows[width] = mx.arange(width)
    kv = [a for c in cache for a in (c.keys, c.values)]
    call = (tokens, position, mx.array(offset, dtype=mx.int32), windows[width], kv)
    logits, kv = decode(*call) if valid_from is None else decode(*call, valid_from)
    for i, c in enumerate(cache):
        c.keys, c.values = kv[2 * i], kv[2 * i + 1]
    return logits


class Stepper:
    """Decode steps for the rows of a prefill: the native step of a `t2s_native.DecodeSession`, or
    MLX's compiled `decode_step` on an MLX prefill's `cache` (left padding `valid_from`).
    `stepper(tokens, idx)` -> logits [rows, vocab] of the codes after `tokens` [rows], the codes of
    decode step `idx`; `keep(positions)` narrows the rows. The stepper owns the cache or session."""

    def __init__(self, model: Model, positions: mx.array, *, cache: list[KVCache] | None = None,
                 valid_from: Sequence[int] | None = None, session=None):
        self.session = session
        if session is not None:
            self.positions = np.array(positions, dtype=np.float32)
            return
        padded = valid_from is not None and any(valid_from)
        self.cache, self.positions, self.windows = cache, positions, {}
        self.decode = model.compiled_decode_step()
        self.valid_from = mx.array(np.asarray(valid_from, dtype=np.int32)[:, None]) if padded else None

    @property
    def native(self) -> bool:
        return self.session is not None

    def __call__(self, tokens: mx.array, idx: int) -> mx.array:
        if self.session is not None:
            return mx.array(self.session.step(np.array(tokens), self.positions[idx]))
        return decode_into_cache(self.decode, self.cache, tokens, self.positions[idx:idx + 1], self.windows,
                                 self.valid_from)

    def keep(self, positions: Sequence[int]) -> None:
        if self.session is not None:
            self.session.keep(positions)
            return
        index = mx.array(np.asarray(positions, dtype=np.int32))
        if self.valid_from is not None:
            self.valid_from = self.valid_from[index]
        for c in self.cache:
            c.keys, c.values = c.keys[index], c.values[index]


def start_decoding(model: Model, x: mx.array, n_text: int, positions: mx.array, pads: Sequence[int] | None = None,
                   mlx_prefill: Callable | None = None) -> tuple[mx.array, Stepper]:
    """Prefill x [B, L, D] (rows left-padded by `pads` to `n_text` text positions, then the prompt
    codes): the last position's logits [B, vocab] and the Stepper that decodes after it. Natively
    where `t2s_native` is available; else in MLX, by `mlx_prefill(x, mask) -> (logits, cache)` (default:
    the model's own call)."""
    from .t2s_batch import batch_prefill_mask
    from .t2s_native import native_decoder

    native = native_decoder(model)
    if native is not None:
        logits, session = native.prefill(model, x, n_text, pads)
        return logits, Stepper(model, positions, session=session)
    if mlx_prefill is None:
        def mlx_prefill(x, mask):
            cache = model.make_cache()
            return model(x, mask, cache, last_only=True), cache
    n_audio = x.shape[1] - n_text
    mask = batch_prefill_mask(pads, n_text, n_audio) if pads is not None else prefill_mask(n_text, n_audio)
    logits, cache = mlx_prefill(x, mask)
    return logits, Stepper(model, positions, cache=cache, valid_from=pads)


def stream_generate(model: Model, phones, bert, prompt=None, *, top_k: int | None = 15,
                    top_p: float | None = 1.0, temperature: float = 1.0, repetition_penalty: float = 1.35,
                    early_stop_num: int = -1, max_tokens: int = MAX_DECODE_STEPS,
                    seed: int | None = None) -> Iterator[int]:
    """Yield semantic codes as they are produced, with upstream's `infer_panel_naive` rules.

    phones: int ids [T] of prompt + target phones; bert: float [1024, T]; prompt: the prompt's
    semantic codes [P] (None or empty: no prompt). Per step `idx`: EOS cannot be produced while
    idx < 11; the step stops without its code when argmax(penalized logits) or the sampled code is
    EOS; it stops keeping its code when more than `early_stop_num` (-1: no limit) codes have been
    made or at idx == max_tokens - 1. If no code at all was made, 0 is yielded.
    top_k None or <= 0 disables top-k; seed None draws one from MLX's global generator.
    """
    phones, bert, prompt = _check_inputs(model, phones, bert, prompt)
    if max_tokens <= 0:
        yield 0
        return
    args = model.args
    token_step = _make_token_step(args.EOS, args.vocab_size, top_k if top_k and top_k > 0 else None,
                                  1.0 if top_p is None else float(top_p), float(temperature),
                                  float(repetition_penalty))
    if seed is None:
        seed = int(mx.random.randint(0, 2**31 - 1, ()).item())
    key = mx.random.key(seed)
    blocked, free = mx.array(True), mx.array(False)

    n_text, n_prompt = phones.shape[0], prompt.shape[0]
    x = model.embed_text(phones[None], bert[None])
    if n_prompt:
        x = mx.concatenate([x, model.embed_audio(mx.array(prompt.astype(np.int32))[None])], axis=1)
    logits, stepper = start_decoding(model, x, n_text, model.ar_audio_position.positions(n_prompt, max_tokens))
    seen = _seen_mask(prompt, args.vocab_size)
    last = last_step(max_tokens, early_stop_num)

    def step(idx, logits, seen, key):
        token, stop, seen, key = token_step(logits, seen, key, blocked if idx < EOS_BLOCKED_STEPS else free)
        if idx == last:
            return token, stop, None, None, None
        return token, stop, stepper(token, idx), seen, key

    # Pipelined: the graph of step idx+1 is built and queued before step idx's code is read back.
    out = step(0, logits, seen, key)
    mx.async_eval(out[0], out[1])
    produced = False
    for idx in range(last + 1):
        token, stop, logits, seen, key = out
        if logits is not None:
            out = step(idx + 1, logits, seen, key)
            mx.async_eval(out[0], out[1])
        if stop.item():
            break
        produced = True
        yield token.item()
    if not produced:  # upstream returns [0] when nothing was generated
        yield 0


def generate(model: Model, phones, bert, prompt=None, *, top_k: int | None = 15, top_p: float | None = 1.0,
             temperature: float = 1.0, repetition_penalty: float = 1.35, early_stop_num: int = -1,
             max_tokens: int = MAX_DECODE_STEPS, seed: int | None = None) -> list[int]:
    """All newly generated semantic codes (see `stream_generate` for the rules); [0] if none."""
    return list(stream_generate(model, phones, bert, prompt, top_k=top_k, top_p=top_p,
                                temperature=temperature, repetition_penalty=repetition_penalty,
                                early_stop_num=early_stop_num, max_tokens=max_tokens, seed=seed))


def upstream_kept_codes(codes: list[int], *, has_prompt: bool, early_stop_num: int = -1,
                        max_tokens: int = MAX_DECODE_STEPS) -> list[int]:
    """The part of `generate`'s codes that upstream's TTS.run goes on with.

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


# ---------------------------------------------------------------------------------- convert and load


def _weights_and_config(source: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from ..checkpoint import read_checkpoint

    data = read_checkpoint(source)
    if not isinstance(data, dict) or not isinstance(data.get("weight"), dict):
        raise PrimeSpeechError(f"{source} is not a GPT-SoVITS GPT checkpoint (no 'weight' dict): "
                               "pass a GPT_weights*/*.ckpt file")
    return data["weight"], data.get("config") or {}


def convert(source: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Convert an official s1 `.ckpt` into `out_dir` (default: beside it) as safetensors + config.json."""
    from ..convert import converted_dir_for, save_converted

    source = Path(source)
    if not source.is_file():
        raise PrimeSpeechError(f"GPT checkpoint not found: {source}")
    raw, config = _weights_and_config(source)
    args = ModelArgs.from_checkpoint_config(config)
    weights = Model.sanitize({k: np.asarray(v) for k, v in raw.items()})
    # strict check before anything is written: a missing, unexpected or misshapen key is an error
    load_weights_strict(Model(args), {k: mx.array(v) for k, v in weights.items()}, f"T2S ({source})")
    out = Path(out_dir) if out_dir else converted_dir_for(source)
    return save_converted(out, weights, {"model_type": KIND, **args.to_dict()}, kind=KIND, source=source)


def load_model(path: str | os.PathLike, *, dtype: str | mx.Dtype | None = None) -> Model:
    """Load the T2S model from an official `.ckpt` (converted once, cached beside it) or a converted folder.

    dtype: None picks float32 on the CPU and float16 on a GPU.
    """
    from ..convert import CONFIG_FILE, ensure_converted, load_converted

    path = Path(path)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        folder = path
    elif path.is_file():
        folder = ensure_converted(path, KIND, convert)
    else:
        raise PrimeSpeechError(f"GPT model not found: {path} (give a .ckpt file or a converted folder)")
    weights, config = load_converted(folder)
    if config.get("model_type") != KIND:
        raise PrimeSpeechError(f"{folder} holds a {config.get('model_type')!r} model, not a T2S GPT")
    if dtype is None:
        dtype = mx.float32 if mx.default_device() == mx.cpu else mx.float16
    elif isinstance(dtype, str):
        dtype = getattr(mx, dtype)
    model = Model(ModelArgs.from_dict(config))
    weights = {k: v.astype(dtype) for k, v in Model.sanitize(weights).items()}
    load_weights_strict(model, weights, f"T2S ({folder})")
    model.eval()
    mx.eval(model.parameters())
    return model
