"""The T2S model's native twin on the CPU: decode steps in one native call (cpu/native/t2s.c).

A decode step is memory-bound: every weight and every cached key/value is read once per step. MLX's
CPU path reads the weights in float32 through one BLAS call per product and attends with one small
matrix product per row and head. The native step reads the weights from packed panels (float16
where the model's values are exactly float16: upstream's checkpoints are stored in half precision,
so nothing is rounded), streams each row's cache once, and computes in float32. Rows are
independent: a row gets bit-identical logits whatever else is in the batch.

`install(model)` swaps each product of the layers and the logits layer for a `PanelLinear` holding
only the packed panels (the float32 MLX weights are released: one copy of each weight), and gives
the model the native decoding API: `make_cache` returns a `DecodeSession` (the keys and values in
the native layout), `prefill` runs the products in MLX (large BLAS products) and attention natively,
and `step` is one native call. The model's `__call__` still runs in MLX, on the panels.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import PrimeSpeechError
from ..models import t2s
from ..runtime import blas_thread_count
from . import library
from .panels import pack_panels, unpack_panels

LANES = 16  # cache positions per key vector
GROW = 128  # cache positions added when a session's buffers are full
MAX_ROWS = 64
MAX_HEAD_DIM = 128


def _pointer(a: np.ndarray) -> int:
    return a.ctypes.data


def _array_of(values: Sequence[int]) -> ctypes.Array:
    return (ctypes.c_void_p * len(values))(*values)


def _threads() -> int:
    """Two threads (the caller and one pool worker) where BLAS may use two, else one."""
    return 2 if (blas_thread_count() or 1) > 1 else 1


def _return_freed_memory() -> None:
    """Hand the memory of the released weights back to the system: glibc keeps freed blocks of this
    size in its heap (the process would stay as large as with both copies)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _host(a: mx.array) -> np.ndarray:
    """A NumPy view of an evaluated MLX array (no copy)."""
    mx.eval(a)
    return np.array(a, copy=False)


class PanelLinear(nn.Module):
    """Twin of `nn.Linear` holding its weight only as packed panels [ceil(n / 32), k, 32]; called in
    MLX it unpacks them (exactly) to float32 for the product."""

    def __init__(self, panels: mx.array, bias: mx.array | None, out_features: int):
        super().__init__()
        self.panels = panels
        if bias is not None:
            self.bias = bias
        self.out_features = out_features

    @property
    def half(self) -> bool:
        return self.panels.dtype == mx.float16

    def __call__(self, x: mx.array) -> mx.array:
        w = unpack_panels(self.panels, self.out_features)
        return mx.addmm(self.bias, x, w) if "bias" in self else x @ w


class PanelAttention(t2s.MultiheadAttention):
    """Twin of `t2s.MultiheadAttention` with its q|k|v and output products on packed panels."""

    def __init__(self, heads: int, scale: float, in_proj: PanelLinear, out_proj: PanelLinear):
        nn.Module.__init__(self)
        self.heads = heads
        self.scale = scale
        self.in_proj = in_proj
        self.out_proj = out_proj

    def in_projection(self, x: mx.array) -> mx.array:
        return self.in_proj(x)


def _products(model: t2s.Model) -> list[tuple[mx.array, mx.array | None]]:
    """(weight [n, k], bias) of every product the native step runs, in its order."""
    out = []
    for layer in model.layers:
        att = layer.self_attn
        out += [(att.in_proj_weight, att.in_proj_bias), (att.out_proj.weight, att.out_proj.bias),
                (layer.linear1.weight, layer.linear1.bias), (layer.linear2.weight, layer.linear2.bias)]
    return out + [(model.ar_predict_layer.weight, None)]


def pack(model: t2s.Model, lib: ctypes.CDLL, half: bool | None = None) -> bool:
    """Swap the products of `model`'s layers and its logits layer for `PanelLinear` twins, releasing
    the MLX weights. The panels are float16 when every value of every matrix is a float16 (half None
    or True), else float32 (the native step reads one kind). Returns whether they are float16."""
    products = _products(model)
    panels = [] if half is False else [pack_panels(lib, w, half=True) for w, _ in products]
    if not panels or any(p is None for p in panels):
        panels = [pack_panels(lib, w, half=False) for w, _ in products]
    twins = []
    for i, (weight, bias) in enumerate(products):
        twins.append(PanelLinear(mx.array(panels[i]), bias, weight.shape[0]))
        panels[i] = None  # NumPy's copy goes as soon as MLX holds one
    del products
    for i, layer in enumerate(model.layers):
        in_proj, out_proj, layer.linear1, layer.linear2 = twins[4 * i:4 * i + 4]
        layer.self_attn = PanelAttention(layer.self_attn.heads, layer.self_attn.scale, in_proj, out_proj)
    model.ar_predict_layer = twins[-1]
    mx.eval(model.parameters())
    return model.ar_predict_layer.half


class NativeDecoding:
    """The native decoding API of a packed T2S model: `make_cache`, `prefill`, `step` (the signatures of
    `t2s.Model`'s)."""

    def __init__(self, model: t2s.Model, lib: ctypes.CDLL):
        args = model.args
        self.lib = lib
        self.layers = list(model.layers)
        self.head = model.ar_predict_layer
        self.half = self.head.half
        self.dims, self.heads, self.vocab = args.hidden_dim, args.head, args.vocab_size
        self.ffn = self.layers[0].linear1.out_features
        self.eps = float(self.layers[0].norm1.eps)
        self._keep = []  # every array the pointers below point into
        pointers = []
        for layer in self.layers:
            att = layer.self_attn
            entry = [_host(att.in_proj.panels), _host(att.in_proj.bias), _host(att.out_proj.panels),
                     _host(att.out_proj.bias), _host(layer.linear1.panels), _host(layer.linear1.bias),
                     _host(layer.linear2.panels), _host(layer.linear2.bias)]
            entry += [_host(p) for p in (layer.norm1.weight, layer.norm1.bias, layer.norm2.weight, layer.norm2.bias)]
            self._keep += entry
            pointers += [_pointer(a) for a in entry]
        head = _host(self.head.panels)
        self._keep.append(head)
        pointers.append(_pointer(head))
        self.params = _array_of(pointers)
        self.embedding = _host(model.ar_audio_embedding.word_embeddings.weight)
        self._alpha = np.float32(_host(model.ar_audio_position.alpha)[0])
        self._positions = np.zeros((0, self.dims), np.float32)
        self._spare: list[np.ndarray] | None = None

    def position(self, index: int) -> np.ndarray:
        """alpha * pe[index] [dims] of the audio positions (as `SinePositionalEmbedding.positions`)."""
        if index >= self._positions.shape[0]:
            self._positions = self._alpha * t2s.sine_table(max(index + 1, 2 * self._positions.shape[0], 2048),
                                                          self.dims)
        return self._positions[index]

    def take_buffers(self, count: int, size: int) -> list[np.ndarray]:
        """`count` float32 buffers of at least `size` values: the spare ones when they are large enough."""
        spare, self._spare = self._spare, None
        if spare is not None and len(spare) == count and all(b.size >= size for b in spare):
            return spare
        return [np.empty(size, np.float32) for _ in range(count)]

    def give_buffers(self, buffers: list[np.ndarray]) -> None:
        """Keep a finished session's buffers for the next one (the larger set, when there are two)."""
        if self._spare is None or buffers[0].size > self._spare[0].size:
            self._spare = buffers

    # -- the decoding API ----------------------------------------------------------------------------

    def make_cache(self, left_padding: Sequence[int] | None = None) -> DecodeSession:
        return DecodeSession(self, left_padding)

    def prefill(self, x: mx.array, n_text: int, cache: DecodeSession) -> mx.array:
        """The prefill of x [B, L, D] into `cache`: products and norms in MLX, attention here, writing
        the keys and values straight into the session's layout."""
        rows, length, dims = x.shape
        session = cache
        session.allocate(rows, length)
        shape = (ctypes.c_long * 7)(rows, length, dims, self.heads, session.capacity, n_text, _threads())
        scores = np.empty((2, session.capacity), np.float32)
        valid = None if session.valid_from is None else session.valid_from.ctypes.data
        for i, layer in enumerate(self.layers):
            att = layer.self_attn
            qkv = np.array(att.in_projection(x), dtype=np.float32)
            context = np.empty((rows, length, dims), np.float32)
            status = self.lib.t2s_prefill_attention(shape, qkv.ctypes.data, _pointer(session.caches[2 * i]),
                                                    _pointer(session.caches[2 * i + 1]), valid,
                                                    context.ctypes.data, scores.ctypes.data)
            if status != 0:
                raise PrimeSpeechError(f"native T2S prefill refused its arguments (status {status})")
            x = layer.feed_forward(layer.norm1(x + att.out_proj(mx.array(context))))
        return self.head(x[:, -1])

    def step(self, tokens: mx.array, position: int, cache: DecodeSession) -> mx.array:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        x = np.ascontiguousarray(self.embedding[tokens] + self.position(position)[None])
        return mx.array(cache.step(x))


class DecodeSession:
    """The keys and values of one batch in the native layout, and its decode steps.

    Layout per layer: keys [rows, heads, capacity / 16, head_dim, 16] (16 positions per vector),
    values [rows, heads, capacity, head_dim]. Rows keep their place in the buffers; `filter` narrows
    the rows that are decoded."""

    def __init__(self, decoding: NativeDecoding, left_padding: Sequence[int] | None):
        self.decoding = decoding
        self.valid_from = None if left_padding is None or not any(left_padding) else \
            np.asarray(left_padding, dtype=np.int32).copy()
        self.offset = self.capacity = 0
        self.caches: list[np.ndarray] = []
        self._buffers: list[np.ndarray] | None = None

    def allocate(self, rows: int, length: int) -> None:
        """Buffers for `rows` rows whose first `length` positions the prefill fills."""
        d = self.decoding
        if not 1 <= rows <= MAX_ROWS:
            raise PrimeSpeechError(f"the native T2S decode step takes 1 to {MAX_ROWS} rows, got {rows}")
        self.offset = length
        self.capacity = -(-(length + GROW) // LANES) * LANES
        blocks, h, dh = self.capacity // LANES, d.heads, d.dims // d.heads
        size = rows * h * self.capacity * dh
        # Positions no prefill or step has written are never attended to, so the buffers need no
        # clearing: they are the spare ones of an earlier session where those are large enough
        # (fresh memory costs a page fault per 4 KiB, ~0.5 s for a 12-row batch).
        self._buffers = d.take_buffers(2 * len(d.layers), size)
        self.caches = []
        for i in range(len(d.layers)):
            self.caches += [self._buffers[2 * i][:size].reshape(rows, h, blocks, dh, LANES),
                            self._buffers[2 * i + 1][:size].reshape(rows, h, self.capacity, dh)]
        self.rows = np.arange(rows, dtype=np.int32)
        self._scratch_rows = self._scratch_capacity = 0
        self._pointers()

    def __del__(self):
        if getattr(self, "_buffers", None) is not None:
            self.decoding.give_buffers(self._buffers)

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
        d = self.decoding
        if rows > self._scratch_rows or self._scratch_capacity != self.capacity:
            self._bufs = [np.zeros((rows, 3 * d.dims), np.float32), np.zeros((rows, d.dims), np.float32),
                          np.zeros((rows, d.dims), np.float32), np.zeros((rows, d.ffn), np.float32),
                          np.zeros((2, self.capacity), np.float32)]
            self._scratch_rows, self._scratch_capacity = rows, self.capacity
            self._scratch_pointers = _array_of([_pointer(a) for a in self._bufs])
        return self._scratch_pointers

    def filter(self, rows: Sequence[int]) -> None:
        """Decode only the current rows at positions `rows` from now on (in that order)."""
        index = np.asarray(rows, dtype=np.int64)
        self.rows = np.ascontiguousarray(self.rows[index])
        if self.valid_from is not None:
            self.valid_from = np.ascontiguousarray(self.valid_from[index])

    def step(self, x: np.ndarray) -> np.ndarray:
        """Logits [rows, vocab] for one new code per current row, x [rows, dims] float32 their embedded
        codes (position included); their keys and values go into the next cache position."""
        d = self.decoding
        rows = len(self.rows)
        if x.shape != (rows, d.dims):
            raise PrimeSpeechError(f"decode step got {x.shape[0]} codes for {rows} rows")
        if self.offset >= self.capacity:
            self._grow()
        logits = np.empty((rows, d.vocab), np.float32)
        dims = (ctypes.c_long * 10)(len(d.layers), d.dims, d.heads, d.ffn, d.vocab, int(d.half), rows,
                                    self.capacity, self.offset, _threads())
        valid = None if self.valid_from is None else self.valid_from.ctypes.data
        status = d.lib.t2s_step(dims, d.eps, d.params, self._cache_pointers, self.rows.ctypes.data, valid,
                                x.ctypes.data, logits.ctypes.data, self._scratch(rows))
        if status != 0:
            raise PrimeSpeechError(f"native T2S decode step refused its arguments (status {status})")
        self.offset += 1
        return logits


def supported(model) -> bool:
    """Whether the native step serves `model`: a float32 T2S model of a head size it handles."""
    if not isinstance(model, t2s.Model) or isinstance(model.ar_predict_layer, PanelLinear):
        return False
    args = model.args
    head_dim = args.hidden_dim // args.head
    return (args.hidden_dim % args.head == 0 and head_dim % LANES == 0 and head_dim <= MAX_HEAD_DIM
            and model.ar_predict_layer.weight.dtype == mx.float32)


def install(model, *, half: bool | None = None) -> bool:
    """Give a T2S model the native decoding (see the module's docstring); False where it does not
    apply: another model, already installed, an unsupported shape or dtype, or no library."""
    lib = library.load()
    if lib is None or not supported(model):
        return False
    pack(model, lib, half)
    decoding = NativeDecoding(model, lib)
    model.make_cache, model.prefill, model.step = decoding.make_cache, decoding.prefill, decoding.step
    mx.clear_cache()
    _return_freed_memory()
    return True
