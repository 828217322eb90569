"""T2S decode steps in one native call (native/panel_kernels.c, through `panel_ops`), for the CPU.

A decode step is memory-bound: every weight and every cached key/value is read once per step. MLX's
CPU path reads the weights in float32 through one BLAS call per product and attends with one small
matrix product per row and head. The native step reads the weights as float16 where the model's
values are exactly float16 (upstream's checkpoints are stored in half precision; nothing is
rounded), streams each row's cache once, and computes in float32. Rows are independent: a row gets
bit-identical logits whatever else is in the batch.

`native_decoder(model)` packs a model's weights once (kept on the model); `decoder.prefill(...)` fills a
`DecodeSession` (or `decoder.session(cache, valid_from)` takes over the caches of an MLX prefill), which
then runs `step(tokens, position)` and `keep(rows)`. Optional: without the built library, or off the
CPU, `native_decoder(model)` is None and callers use `Model.compiled_decode_step`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from ..errors import PrimeSpeechError
from ..runtime import blas_thread_count
from .panel_ops import pack_panels, panel_library

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


def _threads() -> int:
    """Two threads (the caller and the library's helper) where BLAS may use two, else one."""
    return 2 if (blas_thread_count() or 1) > 1 else 1


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
        f32 = lambda a: np.array(a, dtype=np.float32)  # noqa: E731  (a copy: nothing aliases MLX's buffers)
        layers = model.layers
        matrices = [m for layer in layers for m in (layer.self_attn.in_proj_weight, layer.self_attn.out_proj.weight,
                                                     layer.linear1.weight, layer.linear2.weight)]
        matrices.append(model.ar_predict_layer.weight)
        # float16 panels only where no value of any matrix changes; `half=False` forces float32
        panels = []
        for m in matrices if half is not False else []:
            packed = pack_panels(lib, m, half=True)
            if packed is None:
                panels = []
                break
            panels.append(packed)
        self.half = bool(panels)
        if not self.half:
            panels = [pack_panels(lib, m, half=False) for m in matrices]
        self._keep = []  # every array the pointers below point into
        pointers = []
        for i, layer in enumerate(layers):
            att = layer.self_attn
            qkv_w, out_w, ff1_w, ff2_w = panels[4 * i:4 * i + 4]
            vectors = [f32(v) for v in (att.in_proj_bias, att.out_proj.bias, layer.linear1.bias, layer.linear2.bias,
                                        layer.norm1.weight, layer.norm1.bias, layer.norm2.weight, layer.norm2.bias)]
            qkv_b, out_b, ff1_b, ff2_b, ln1_w, ln1_b, ln2_w, ln2_b = vectors
            entry = [qkv_w, qkv_b, out_w, out_b, ff1_w, ff1_b, ff2_w, ff2_b, ln1_w, ln1_b, ln2_w, ln2_b]
            self._keep += entry
            pointers += [_pointer(a) for a in entry]
        self._keep.append(panels[-1])
        pointers.append(_pointer(panels[-1]))
        self.params = _array_of(pointers)
        self.embedding = f32(model.ar_audio_embedding.word_embeddings.weight)

    def take_buffers(self, count: int, size: int) -> list[np.ndarray]:
        """`count` float32 buffers of at least `size` values: the spare ones when they are large enough."""
        spare, self._spare = getattr(self, "_spare", None), None
        if spare is not None and len(spare) == count and all(b.size >= size for b in spare):
            return spare
        return [np.empty(size, np.float32) for _ in range(count)]

    def give_buffers(self, buffers: list[np.ndarray]) -> None:
        """Keep a finished session's buffers for the next one (the larger set, when there are two)."""
        spare = getattr(self, "_spare", None)
        if spare is None or buffers[0].size > spare[0].size:
            self._spare = buffers

    def session(self, cache, valid_from: Sequence[int] | None = None) -> DecodeSession:
        """Take over the filled `cache` (list of t2s.KVCache, one per layer) of an MLX prefill."""
        return DecodeSession.from_cache(self, cache, valid_from)

    def prefill(self, model, x: mx.array, n_text: int, pads: Sequence[int] | None = None
                ) -> tuple[mx.array, DecodeSession]:
        """The prefill of x [B, L, D] (rows left-padded by `pads` to `n_text` text positions, then the
        prompt codes): the last position's logits [B, vocab] and the session holding every layer's
        keys and values. Products and norms run in MLX (large BLAS products); attention runs here,
        writing the keys and values straight into the session's layout."""
        rows, length, dims = x.shape
        session = DecodeSession(self, rows, length, pads if pads is not None and any(pads) else None)
        shape = (ctypes.c_long * 7)(rows, length, dims, self.heads, session.capacity, n_text, _threads())
        scores = np.empty((2, session.capacity), np.float32)
        valid = None if session.valid_from is None else session.valid_from.ctypes.data
        for i, layer in enumerate(model.layers):
            att = layer.self_attn
            qkv = np.array(mx.addmm(att.in_proj_bias, x, att.in_proj_weight.T), dtype=np.float32)
            context = np.empty((rows, length, dims), np.float32)
            status = self.lib.t2s_prefill_attention(shape, qkv.ctypes.data, _pointer(session.caches[2 * i]),
                                                    _pointer(session.caches[2 * i + 1]), valid,
                                                    context.ctypes.data, scores.ctypes.data)
            if status != 0:
                raise PrimeSpeechError(f"native T2S prefill refused its arguments (status {status})")
            x = layer.norm1(x + att.out_proj(mx.array(context)))
            x = layer.norm2(x + layer.linear2(nn.relu(layer.linear1(x))))
        return model.ar_predict_layer(x[:, -1]), session


class DecodeSession:
    """The keys and values of one batch in the native layout, and its decode steps.

    Rows keep their place in the buffers; `keep` narrows the rows that are decoded."""

    def __init__(self, decoder: NativeDecoder, rows: int, length: int, valid_from: Sequence[int] | None):
        """Empty buffers for `rows` rows whose first `length` positions a prefill fills."""
        if not 1 <= rows <= MAX_ROWS:
            raise PrimeSpeechError(f"the native T2S decode step takes 1 to {MAX_ROWS} rows, got {rows}")
        self.decoder = decoder
        self.offset = length
        self.capacity = -(-(length + GROW) // LANES) * LANES
        blocks, h, dh = self.capacity // LANES, decoder.heads, decoder.dims // decoder.heads
        size = rows * h * self.capacity * dh
        # Positions no prefill or step has written are never attended to, so the buffers need no
        # clearing: they are the decoder's spare ones where those are large enough (fresh memory
        # costs a page fault per 4 KiB, ~0.5 s for a 12-row batch).
        self._buffers = decoder.take_buffers(2 * decoder.layers, size)
        self.caches = []
        for i in range(decoder.layers):
            self.caches += [self._buffers[2 * i][:size].reshape(rows, h, blocks, dh, LANES),
                            self._buffers[2 * i + 1][:size].reshape(rows, h, self.capacity, dh)]
        self.rows = np.arange(rows, dtype=np.int32)
        self.valid_from = None if valid_from is None else np.asarray(valid_from, dtype=np.int32).copy()
        self._scratch_rows = self._scratch_capacity = 0
        self._pointers()

    def __del__(self):
        buffers = getattr(self, "_buffers", None)
        if buffers is not None:
            self.decoder.give_buffers(buffers)

    @classmethod
    def from_cache(cls, decoder: NativeDecoder, cache, valid_from: Sequence[int] | None) -> DecodeSession:
        """A session holding the caches (t2s.KVCache per layer) an MLX prefill filled."""
        rows, _, _, _ = cache[0].keys.shape
        session = cls(decoder, rows, cache[0].offset, valid_from)
        n = session.offset
        for i, layer_cache in enumerate(cache):
            keys = np.array(layer_cache.keys[:, :, :n], dtype=np.float32)
            tiles = session.caches[2 * i]
            b, h, blocks, dh, _ = tiles.shape
            padded = np.zeros((b, h, blocks * LANES, dh), np.float32)
            padded[:, :, :n] = keys
            tiles[...] = padded.reshape(b, h, blocks, LANES, dh).transpose(0, 1, 2, 4, 3)
            session.caches[2 * i + 1][:, :, :n] = np.array(layer_cache.values[:, :, :n], dtype=np.float32)
        return session

    def _grow(self) -> None:
        old = self.capacity
        self.capacity = old + GROW
        self._buffers = [np.empty(buf.size // old * self.capacity, np.float32) for buf in self.caches]
        grown = []
        for i, buf in enumerate(self.caches):
            shape = list(buf.shape)
            shape[2] = self.capacity // LANES if i % 2 == 0 else self.capacity
            new = self._buffers[i].reshape(shape)
            new[:, :, :buf.shape[2]] = buf
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
        dims = (ctypes.c_long * 10)(d.layers, d.dims, d.heads, d.ffn, d.vocab, int(d.half), rows,
                                    self.capacity, self.offset, _threads())
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
