"""NumPy/ctypes helpers over the CPU library's kernels (cpu/native/encoders.c, vocoder.c), loaded
by `library.load()`.

The encoder kernels (GELU, LayerNorm, windows, small and grouped convolutions, attention, products
through the BLAS that MLX uses) and the vocoder's direct convolutions (`PackedConv`,
`PackedTransposed`) work in place on NumPy buffers, or on evaluated MLX arrays through NumPy views;
each call spreads over the library's worker pool.
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from . import library


def native_kernels() -> ctypes.CDLL | None:
    """The CPU library when built, switched on and MLX runs on the CPU; otherwise None."""
    if mx.default_device() != mx.cpu:
        return None
    return library.load()


def native_attention_available() -> bool:
    """Whether the kernels that call BLAS (`native_attention`, `native_linear`, `native_pair_conv`)
    can run: the library is loaded and the global cblas_sgemm (the one MLX's products use) bound."""
    return native_kernels() is not None and library.sgemm_bound()


def set_native_kernels(enabled: bool) -> None:
    """Switch the CPU kernels on (default) or off (`library.set_enabled`)."""
    library.set_enabled(enabled)


Buffer = mx.array | np.ndarray
"""An evaluated MLX array or a NumPy array, as the native kernels take them."""


def host_view(a: Buffer) -> np.ndarray:
    """A writable NumPy view of an evaluated, row-contiguous float32 array (no copy; NumPy arrays
    pass through).

    Writing through it changes an MLX array in place: only for arrays the caller made itself (the
    fresh output of a product or a copy) and that nothing else reads yet."""
    view = a if isinstance(a, np.ndarray) else np.array(a, copy=False)
    if view.dtype != np.float32 or not view.flags.c_contiguous or not view.flags.writeable:
        raise ValueError(f"expected a writable row-contiguous float32 array, got {view.dtype} {view.shape}")
    return view


def _input_view(a: Buffer, needed: int) -> np.ndarray:
    """A NumPy view, only read, of an evaluated row-contiguous float32 array of >= `needed` values."""
    view = a if isinstance(a, np.ndarray) else np.array(a, copy=False)
    if view.dtype != np.float32 or not view.flags.c_contiguous or view.size < needed:
        raise ValueError(f"expected a row-contiguous float32 array of >= {needed} values, got {view.dtype} "
                         f"{view.shape}")
    return view


def _outputs(rows: Sequence[int], cols: int) -> tuple[list[mx.array], list[np.ndarray]]:
    """Fresh evaluated float32 MLX arrays [rows[i], cols] and their writable views."""
    outs = [mx.zeros((r, cols), dtype=mx.float32) for r in rows]
    mx.eval(outs)
    return outs, [host_view(o) for o in outs]


def _pointers(views: Sequence[np.ndarray]) -> ctypes.Array:
    return (ctypes.c_void_p * len(views))(*[v.ctypes.data for v in views])


def _rows(views: Sequence[np.ndarray], cols: int) -> ctypes.Array:
    return (ctypes.c_long * len(views))(*[v.size // cols for v in views])


def _check(status: int, what: str) -> None:
    if status == -1:
        raise MemoryError(f"native {what}: out of memory")
    if status != 0:
        raise ValueError(f"native {what}: unsupported arguments")


def native_gelu_(arrays: Sequence[Buffer]) -> None:
    """Exact-erf GELU in place, one thread per array."""
    views = [host_view(a) for a in arrays]
    _check(native_kernels().ps_gelu(_pointers(views), _rows(views, 1), len(views), 1), "GELU")


def native_add_layer_norm_(outs: Sequence[Buffer], xs: Sequence[Buffer], residuals: Sequence[Buffer],
                           weight: Buffer, bias: Buffer, eps: float) -> None:
    """outs[i] = LayerNorm(xs[i] + residuals[i]) over the last axis (a multiple of 16), in place
    (outs[i] may be xs[i] or residuals[i]), one thread per array."""
    out = [host_view(a) for a in outs]
    cols = out[0].shape[-1]
    x, r = ([_input_view(a, o.size) for a, o in zip(group, out, strict=True)] for group in (xs, residuals))
    w, b = _input_view(weight, cols), _input_view(bias, cols)
    if any(v.shape[-1] != cols for v in out + x + r):
        raise ValueError("native LayerNorm: rows of different widths")
    _check(native_kernels().ps_add_layer_norm(_pointers(out), _pointers(x), _pointers(r), _rows(out, cols),
                                              len(out), cols, w.ctypes.data, b.ctypes.data, eps), "LayerNorm")


def native_windows(xs: Sequence[Buffer], rows: Sequence[int], hop: int, width: int,
                   outs: Sequence[np.ndarray]) -> None:
    """outs[i] [rows[i], width] = overlapping windows of xs[i] (read flat): row t is
    x.flat[t * hop: t * hop + width], i.e. the frames of a channels-last strided convolution
    (hop = stride * channels, width = kernel * channels). One thread per array."""
    views = [_input_view(x, (r - 1) * hop + width) for x, r in zip(xs, rows, strict=True)]
    out_views = [host_view(o) for o in outs]
    if any(o.size != r * width for o, r in zip(out_views, rows, strict=True)):
        raise ValueError("native windows: output sizes do not match")
    _check(native_kernels().ps_windows(_pointers(out_views), _pointers(views), _rows(out_views, width),
                                       len(views), hop, width), "windows")


def native_small_conv_gelu(xs: Sequence[Buffer], rows: Sequence[int], hop: int, weight: Buffer, shift: Buffer,
                           outs: Sequence[np.ndarray]) -> None:
    """outs[i] [rows[i], C] = GELU(frames @ weight + shift) for each one-channel signal xs[i], where
    frame t is x.flat[t * hop: t * hop + K] and weight is [K, C] (C a multiple of 16). One thread
    per signal."""
    k, c = weight.shape
    w, b = _input_view(weight, k * c), _input_view(shift, c)
    views = [_input_view(x, (r - 1) * hop + k) for x, r in zip(xs, rows, strict=True)]
    out_views = [host_view(o) for o in outs]
    if any(o.size != r * c for o, r in zip(out_views, rows, strict=True)):
        raise ValueError("native small conv: output sizes do not match")
    _check(native_kernels().ps_small_conv_gelu(_pointers(out_views), _pointers(views), _rows(out_views, c),
                                               len(views), hop, k, w.ctypes.data, b.ctypes.data, c),
           "small conv")


def native_attention(qs: Sequence[Buffer], ks: Sequence[Buffer], vs: Sequence[Buffer], heads: int,
                     scale: float, outs: Sequence[np.ndarray] | None = None) -> list[Buffer]:
    """Softmax self-attention of a sequence held as consecutive time pieces: qs[i], ks[i], vs[i] are
    the [..., T_i, heads * head_dim] projections of piece i; returns each piece's attention output over
    the keys of all pieces, [T_i, heads * head_dim] (heads side by side, as before the output
    projection), as new MLX arrays or in `outs`. One thread per piece, head by head through the
    BLAS that MLX uses (`native_attention_available`)."""
    dims = qs[0].shape[-1]
    rows = [q.size // dims for q in qs]
    views = [[_input_view(a, r * dims) for a, r in zip(group, rows, strict=True)] for group in (qs, ks, vs)]
    if any(v.size != r * dims for group in views for v, r in zip(group, rows, strict=True)):
        raise ValueError("native attention: query, key and value pieces must all be [T_i, heads * head_dim]")
    if outs is None:
        outs, out_views = _outputs(rows, dims)
    else:
        out_views = [host_view(o) for o in outs]
    status = native_kernels().ps_attention(len(rows), *(_pointers(v) for v in views), _rows(out_views, dims),
                                           heads, dims // heads, dims, scale, _pointers(out_views))
    _check(status, "attention")
    return list(outs)


def native_linear(x: Buffer, weight: Buffer, bias: Buffer, gelu: bool = False, threads: int = 1,
                  out: np.ndarray | None = None) -> np.ndarray:
    """x [M, K] @ weight [N, K]^T + bias (then exact GELU) as a NumPy array [M, N] (N a multiple of
    16; new, or `out`), the output columns split over `threads` threads, each calling the BLAS that
    MLX uses (`native_attention_available`) for its share (reading only its rows of the weight)."""
    n, k = weight.shape
    m = x.size // k
    xv, w, b = _input_view(x, m * k), _input_view(weight, n * k), _input_view(bias, n)
    out = np.empty((m, n), dtype=np.float32) if out is None else host_view(out)
    if out.size != m * n:
        raise ValueError(f"native linear: output of {out.size} values for [{m}, {n}]")
    _check(native_kernels().ps_linear(out.ctypes.data, xv.ctypes.data, m, k, w.ctypes.data, b.ctypes.data, n,
                                      int(gelu), threads), "linear")
    return out


def native_pair_conv(x: Buffer, weight: Buffer, outer_sum: Buffer, bias: Buffer, out: np.ndarray,
                     work: Callable[..., np.ndarray], gelu: bool = True, threads: int = 1) -> np.ndarray:
    """A kernel-3 stride-2 convolution of x [T, C_in] (channels-last, weight [C_out, 3, C_in],
    outer_sum = weight[:, 0] + weight[:, 2], then bias and GELU) into out [2 P, C_out] with
    P = ceil(((T - 3) // 2 + 1) / 2) output pairs, in five products per pair instead of six (both
    outputs of a pair share the middle input row's product with W0 + W2); rows of out past the
    convolution's (T - 3) // 2 + 1 are not valid. `work(name, *shape)` gives the work buffers
    (e.g. a `Scratch`)."""
    n, _, c = weight.shape
    t = x.size // c
    pairs = -(-((t - 3) // 2 + 1) // 2)
    xv, w, w02, b = (_input_view(x, t * c), _input_view(weight, n * 3 * c), _input_view(outer_sum, n * c),
                     _input_view(bias, n))
    out = host_view(out)
    if out.size != 2 * pairs * n:
        raise ValueError(f"native pair conv: output of {out.size} values for [{2 * pairs}, {n}]")
    even, odd = work("pair_even", pairs, 2 * c), work("pair_odd", pairs, 2 * c)
    mid = work("pair_mid", pairs, c)
    pointers = (v.ctypes.data for v in (out, xv, w, w02, b, even, odd, mid))
    y_p, x_p, w_p, w02_p, b_p, even_p, odd_p, mid_p = pointers
    status = native_kernels().ps_pair_conv(y_p, x_p, t, c, w_p, w02_p, b_p, n, int(gelu), pairs, even_p, odd_p,
                                           mid_p, threads)
    _check(status, "pair conv")
    return out


def native_conv_rows() -> int:
    """Output rows per block of the native grouped convolution (its input needs that many - 1 extra rows)."""
    return int(native_kernels().ps_conv_rows())


def native_grouped_conv(xp: Buffer, weight: Buffer, bias: Buffer, t_out: int, threads: int) -> mx.array:
    """Grouped 1-D convolution [t_out, C] of one padded channels-last sequence xp [>= t_out + kernel - 1 +
    native_conv_rows() - 1, C] with weight [groups, kernel, C / groups, C / groups] (as `x @ w`) and
    bias [C], the output rows split over `threads` threads."""
    groups, kernel, c_in, c_out = weight.shape
    channels = groups * c_in
    x = _input_view(xp, (t_out + kernel + native_conv_rows() - 2) * channels)
    w, b = _input_view(weight, groups * kernel * c_in * c_out), _input_view(bias, channels)
    if c_in != c_out or x.shape[-1] != channels:
        raise ValueError(f"native grouped conv: unsupported input {x.shape} / weight {w.shape}")
    outs, out_views = _outputs([t_out], channels)
    _check(native_kernels().ps_grouped_conv(out_views[0].ctypes.data, x.ctypes.data, t_out, channels, groups,
                                            kernel, w.ctypes.data, b.ctypes.data, threads), "grouped conv")
    return outs[0]


@dataclass(frozen=True)
class PackedConv:
    """A Conv1d (weight [C_out, K, C_in] in MLX's layout, C_out a multiple of 16) re-laid out once for
    the library's direct convolution `ps_vconv` ([C_out / NR, K, C_in, NR], NR = 32 or 16), with its
    bias and geometry, so that a call cannot pair the weights with another kernel size or width."""

    weights: np.ndarray
    bias: np.ndarray | None
    cout: int
    kernel: int
    cin: int
    dilation: int = 1
    padding: int = 0  # zero rows before the input; dilation * (kernel - 1) // 2 is a 'same' convolution

    @classmethod
    def pack(cls, weight: Buffer, bias: Buffer | None = None, *, dilation: int = 1,
             padding: int | None = None) -> PackedConv:
        """Pack `weight` (and copy `bias` [C_out]); padding defaults to 'same'. ValueError when
        C_out is not a multiple of 16."""
        cout, kernel, cin = weight.shape
        w = _input_view(weight, cout * kernel * cin)
        packed = np.empty(cout * kernel * cin, dtype=np.float32)
        _check(native_kernels().ps_vconv_pack(packed.ctypes.data, w.ctypes.data, cout, kernel, cin), "conv packing")
        b = None if bias is None else np.array(_input_view(bias, cout)[:cout], dtype=np.float32)
        pad = dilation * (kernel - 1) // 2 if padding is None else padding
        return cls(packed, b, cout, kernel, cin, dilation, pad)

    @property
    def nbytes(self) -> int:
        return self.weights.nbytes + (0 if self.bias is None else self.bias.nbytes)

    def __call__(self, out: np.ndarray, x: Buffer, *, residual: Buffer | None = None,
                 total: Buffer | None = None, scale: float = 1.0, slope_in: float | None = None,
                 slope_out: float | None = None, threads: int = 1) -> np.ndarray:
        """out [T_out, C_out] = the convolution of x [T, C_in] (channels-last, zero outside its rows):
        leaky ReLU (slope_in) on the input where given, then + bias + residual, leaky ReLU
        (slope_out) where given, then (total + that) * scale where `total` is given. out may be
        `residual` or `total` but must not overlap x. Chunks of rows go to `threads` threads."""
        out = host_view(out)
        t = x.size // self.cin
        t_out = out.size // self.cout
        xv = _input_view(x, t * self.cin)
        extra = [None if a is None else _input_view(a, t_out * self.cout) for a in (residual, total)]
        if out.shape[-1] != self.cout or x.shape[-1] != self.cin or any(
                a is not None and a.size != t_out * self.cout for a in extra):
            raise ValueError(f"native conv [{self.cout}, {self.kernel}, {self.cin}]: output {out.shape}, input "
                             f"{x.shape}, residual / total {[None if a is None else a.shape for a in extra]}")
        if np.may_share_memory(out, xv):
            raise ValueError("native conv: the output must not overlap the input")
        residual_p, total_p = (None if a is None else a.ctypes.data for a in extra)
        status = native_kernels().ps_vconv(
            out.ctypes.data, xv.ctypes.data, residual_p, total_p, self.weights.ctypes.data,
            None if self.bias is None else self.bias.ctypes.data,
            t, t_out, self.cin, self.cout, self.kernel, self.dilation, self.padding,
            slope_in is not None, slope_in or 0.0, slope_out is not None, slope_out or 0.0, scale, threads)
        _check(status, "conv")
        return out


@dataclass(frozen=True)
class PackedTransposed:
    """A ConvTranspose1d (weight [C_out, K, C_in] in MLX's layout, bias [C_out]) as a `PackedConv`
    on blocks of `stride` output rows: output row u = q * stride + r of the full transposed
    convolution gets x[i] @ tap u - i * stride, so block q = the sum over a < G = ceil(K / stride)
    of x[q - a] @ [tap a * stride + r for each r], a convolution with G (reversed) taps, 'full'
    padding G - 1 and stride * C_out outputs ordered (r, channel). stride * C_out must be a
    multiple of 16."""

    conv: PackedConv
    kernel: int
    stride: int
    padding: int

    @classmethod
    def pack(cls, weight: Buffer, bias: Buffer | None, *, stride: int, padding: int) -> PackedTransposed:
        cout, k, cin = weight.shape
        groups = -(-k // stride)
        w = np.zeros((cout, groups * stride, cin), dtype=np.float32)
        w[:, :k] = _input_view(weight, cout * k * cin).reshape(cout, k, cin)
        w = w.reshape(cout, groups, stride, cin)[:, ::-1].transpose(2, 0, 1, 3)  # [r, co, tap, ci]
        tiled = None if bias is None else np.tile(_input_view(bias, cout)[:cout], stride)
        conv = PackedConv.pack(np.ascontiguousarray(w.reshape(stride * cout, groups, cin)), tiled,
                               padding=groups - 1)
        return cls(conv, k, stride, padding)

    @property
    def nbytes(self) -> int:
        return self.conv.nbytes

    def work_size(self, t: int) -> int:
        """Floats of the work buffer a call on T input rows needs."""
        return (t + self.conv.kernel - 1) * self.conv.cout

    def __call__(self, x: Buffer, work: np.ndarray, *, slope_in: float | None = None, threads: int = 1) -> np.ndarray:
        """PyTorch's ConvTranspose1d of x [T, C_in] (leaky ReLU with slope_in on the input where
        given): rows [padding, padding + (T - 1) * stride + K - 2 * padding) of the full output, a
        view into `work` (>= `work_size(T)` floats)."""
        t = x.size // self.conv.cin
        blocks = t + self.conv.kernel - 1
        width = self.conv.cout
        if work.size < blocks * width:
            raise ValueError(f"native transposed conv: work buffer of {work.size} floats, needs {blocks * width}")
        full = self.conv(work.reshape(-1)[:blocks * width].reshape(blocks, width), x, slope_in=slope_in,
                         threads=threads)
        length = (t - 1) * self.stride + self.kernel - 2 * self.padding
        return full.reshape(blocks * self.stride, width // self.stride)[self.padding:self.padding + length]


class Scratch:
    """Float32 work buffers kept between calls, one per name: large temporaries would otherwise be
    freshly mapped by the allocator and page-faulted in on every call. `lock` serialises the
    callers that share them."""

    def __init__(self):
        self.buffers: dict[str, np.ndarray] = {}
        self.lock = threading.Lock()

    def __call__(self, name: str, *shape: int) -> np.ndarray:
        """A [*shape] float32 buffer (contents undefined) that stays valid until `name` is asked again."""
        size = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.size < size:
            buffer = self.buffers[name] = np.empty(size, dtype=np.float32)
        return buffer[:size].reshape(shape)


class DerivedWeights:
    """Arrays computed once from parameters (e.g. re-laid out for a native kernel), recomputed when
    those parameters are replaced (compared by identity; the sources are held, so ids stay unique)."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.sources: tuple[mx.array, ...] | None = None
        self.value: Any = None

    def __call__(self, *sources: mx.array) -> Any:
        if self.sources is None or any(a is not b for a, b in zip(self.sources, sources, strict=True)):
            self.value = self.fn(*sources)
            mx.eval(self.value)
            self.sources = sources
        return self.value
