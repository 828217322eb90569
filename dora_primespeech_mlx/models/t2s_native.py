"""T2S decode steps in one native call (native/t2s_decoder.c), for the CPU.

A decode step is memory-bound: every weight and every cached key/value is read once per step. MLX's
CPU path reads the weights in float32 through one BLAS call per product and attends with one small
matrix product per row and head. The native step reads the weights as float16 where the model's
values are exactly float16 (upstream's checkpoints are stored in half precision; nothing is
rounded), streams each row's cache once, and computes in float32. Rows are independent: a row gets
bit-identical logits whatever else is in the batch.

`NativeDecoder(model)` packs a model's weights once (cached on the model); `decoder.session(cache,
valid_from)` takes over the caches a prefill filled and then runs `step(tokens, position)` and
`keep(rows)`. Optional: without the built library, or off the CPU, `native_decoder(model)` is None and
callers use `Model.compiled_decode_step`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from ..errors import PrimeSpeechError
from ..runtime import blas_thread_count
from .panel_ops import exactly_half, pack_panels, panel_library

LANES = 16  # cache positions per key vector
GROW = 128  # cache positions added when a session's buffers are full
MAX_ROWS = 64
_STATE: dict = {"enabled": True}


def set_native_decoding(enabled: bool) -> None:
    """Allow (default) or forbid the native decode step, e.g. to run and test MLX's."""
    _STATE["enabled"] = bool(enabled)


def _pointer(a: np.ndarray) -> int:
    return a.ctypes.data


def _array_of(values: Sequence[int]) -> ctypes.Array:
    return (ctypes.c_void_p * len(values))(*values)


class NativeDecoder:
    """A T2S model's weights packed for the native step (float16 panels when that is exact)."""

    def __init__(self, model, lib: ctypes.CDLL, half: bool | None = None):
        args = model.args
        if model.ar_predict_layer.weight.dtype != mx.float32:
            raise PrimeSpeechError("the native T2S decode step runs float32 models only")
        self.lib = lib
        self.layers = len(model.layers)
        self.dims = args.hidden_dim
        self.heads = args.head
        self.ffn = model.layers[0].linear1.weight.shape[0]
        self.vocab = args.vocab_size
        self.eps = float(model.layers[0].norm1.eps)
        f32 = lambda a: np.ascontiguousarray(np.array(a, dtype=np.float32))  # noqa: E731
        matrices, vectors = [], []
        for layer in model.layers:
            att = layer.self_attn
            matrices.append([f32(att.in_proj_weight), f32(att.out_proj.weight), f32(layer.linear1.weight),
                             f32(layer.linear2.weight)])
            vectors.append([f32(att.in_proj_bias), f32(att.out_proj.bias), f32(layer.linear1.bias),
                            f32(layer.linear2.bias), f32(layer.norm1.weight), f32(layer.norm1.bias),
                            f32(layer.norm2.weight), f32(layer.norm2.bias)])
        predict = f32(model.ar_predict_layer.weight)
        exact = exactly_half([m for ms in matrices for m in ms] + [predict])
        # float16 panels only where no value changes; `half=False` forces float32 panels
        self.half = exact if half is None else bool(half) and exact
        self._keep = []  # every array the pointers below point into
        pointers = []
        for ms, vs in zip(matrices, vectors, strict=True):
            qkv_w, out_w, ff1_w, ff2_w = (pack_panels(m, self.half) for m in ms)
            qkv_b, out_b, ff1_b, ff2_b, ln1_w, ln1_b, ln2_w, ln2_b = vs
            layer = [qkv_w, qkv_b, out_w, out_b, ff1_w, ff1_b, ff2_w, ff2_b, ln1_w, ln1_b, ln2_w, ln2_b]
            self._keep += layer
            pointers += [_pointer(a) for a in layer]
        logits_w = pack_panels(predict, self.half)
        self._keep.append(logits_w)
        pointers.append(_pointer(logits_w))
        self.params = _array_of(pointers)
        self.embedding = f32(model.ar_audio_embedding.word_embeddings.weight)
        self.position_table = model.ar_audio_position

    def session(self, cache, valid_from: Sequence[int] | None = None) -> DecodeSession:
        """Take over the filled `cache` (list of t2s.KVCache, one per layer) of a prefill."""
        return DecodeSession(self, cache, valid_from)


class DecodeSession:
    """The keys and values of one batch in the native layout, and its decode steps.

    Rows keep their place in the buffers; `keep` narrows the rows that are decoded."""

    def __init__(self, decoder: NativeDecoder, cache, valid_from: Sequence[int] | None):
        self.decoder = decoder
        first = cache[0]
        rows, heads, _, head_dim = first.keys.shape
        if rows > MAX_ROWS:
            raise PrimeSpeechError(f"the native T2S decode step takes at most {MAX_ROWS} rows, got {rows}")
        self.offset = first.offset
        self.head_dim = head_dim
        self.capacity = -(-(self.offset + GROW) // LANES) * LANES
        self.caches: list[np.ndarray] = []
        for layer_cache in cache:
            keys = np.array(layer_cache.keys[:, :, :self.offset], dtype=np.float32)
            values = np.array(layer_cache.values[:, :, :self.offset], dtype=np.float32)
            self.caches += [self._key_tiles(keys), self._value_rows(values)]
        self.rows = np.arange(rows, dtype=np.int32)
        self.valid_from = None if valid_from is None else np.asarray(valid_from, dtype=np.int32).copy()
        self._scratch_rows = self._scratch_capacity = 0
        self._pointers()

    def _key_tiles(self, keys: np.ndarray) -> np.ndarray:
        """[B, H, T, Dh] -> [B, H, capacity / 16, Dh, 16] (zeros beyond T)."""
        b, h, t, dh = keys.shape
        out = np.zeros((b, h, self.capacity // LANES, LANES, dh), np.float32)
        out.reshape(b, h, self.capacity, dh)[:, :, :t] = keys
        return np.ascontiguousarray(out.transpose(0, 1, 2, 4, 3))

    def _value_rows(self, values: np.ndarray) -> np.ndarray:
        b, h, t, dh = values.shape
        out = np.zeros((b, h, self.capacity, dh), np.float32)
        out[:, :, :t] = values
        return out

    def _grow(self) -> None:
        old = self.capacity
        self.capacity = old + GROW
        grown = []
        for i, buf in enumerate(self.caches):
            shape = list(buf.shape)
            if i % 2 == 0:
                shape[2] = self.capacity // LANES
                new = np.zeros(shape, np.float32)
                new[:, :, :old // LANES] = buf
            else:
                shape[2] = self.capacity
                new = np.zeros(shape, np.float32)
                new[:, :, :old] = buf
            grown.append(new)
        self.caches = grown
        self._pointers()

    def _pointers(self) -> None:
        self._cache_pointers = _array_of([_pointer(a) for a in self.caches])

    def _scratch(self, rows: int) -> ctypes.Array:
        d = self.decoder
        if rows > self._scratch_rows or self._scratch_capacity != self.capacity:
            self._bufs = [np.zeros((rows, 3 * d.dims), np.float32), np.zeros((rows, d.dims), np.float32),
                          np.zeros((rows, d.dims), np.float32), np.zeros((rows, d.ffn), np.float32),
                          np.zeros((2, self.capacity), np.float32)]
            self._scratch_rows, self._scratch_capacity = rows, self.capacity
            self._scratch_pointers = _array_of([_pointer(a) for a in self._bufs])
        return self._scratch_pointers

    def keep(self, positions: Sequence[int]) -> None:
        """Decode only the current rows at `positions` from now on (in that order)."""
        index = np.asarray(positions, dtype=np.int64)
        self.rows = np.ascontiguousarray(self.rows[index])
        if self.valid_from is not None:
            self.valid_from = np.ascontiguousarray(self.valid_from[index])

    def step(self, tokens: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Logits [rows, vocab] for one new code per current row: `tokens` [rows] int, `position` the
        positional-embedding row [dims] (alpha included) of their audio position. Their keys and
        values go into the next cache position."""
        d = self.decoder
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        rows = len(self.rows)
        if tokens.shape[0] != rows:
            raise PrimeSpeechError(f"decode step got {tokens.shape[0]} codes for {rows} rows")
        if self.offset >= self.capacity:
            self._grow()
        x = np.ascontiguousarray(d.embedding[tokens] + np.asarray(position, np.float32).reshape(1, -1))
        logits = np.empty((rows, d.vocab), np.float32)
        threads = 2 if (blas_thread_count() or 1) > 1 else 1
        dims = (ctypes.c_long * 10)(d.layers, d.dims, d.heads, d.ffn, d.vocab, int(d.half), rows,
                                    self.capacity, self.offset, threads)
        valid = None if self.valid_from is None else self.valid_from.ctypes.data
        status = d.lib.t2s_step(dims, d.eps, d.params, self._cache_pointers, self.rows.ctypes.data, valid,
                                x.ctypes.data, logits.ctypes.data, self._scratch(rows))
        if status != 0:
            raise PrimeSpeechError(f"native T2S decode step refused its arguments (status {status})")
        self.offset += 1
        return logits


def native_decoder(model) -> NativeDecoder | None:
    """The model's packed native decoder (built once, kept on the model), or None where MLX decodes:
    not on the CPU, the library missing or disabled, a non-float32 model or an unsupported shape."""
    lib = panel_library() if _STATE["enabled"] else None
    if lib is None:
        return None
    sources = [a for _, a in tree_flatten(model.parameters())]
    cached = getattr(model, "_native_decoder", None)
    if cached is not None and len(cached.sources) == len(sources) and \
            all(a is b for a, b in zip(cached.sources, sources, strict=True)):
        return cached
    args = model.args
    head_dim = args.hidden_dim // args.head
    if args.hidden_dim % args.head or head_dim % LANES or head_dim > 128 or \
            model.ar_predict_layer.weight.dtype != mx.float32:
        return None
    decoder = NativeDecoder(model, lib)
    decoder.sources = sources  # rebuilt when any parameter array is replaced (e.g. load_weights)
    model._native_decoder = decoder
    return decoder
