"""Native CPU kernels of the encoders and the vocoder (native/encoder_kernels.c), loaded with ctypes.

MLX compiles its CPU kernels without -march (SSE2, no FMA) and runs each on one thread. The
encoders' CPU paths instead evaluate their matrix products lane by lane and run the softmax, GELU,
LayerNorm and grouped convolution between them in this C library (AVX-512/AVX2 clones, one POSIX
thread per lane), in place on the evaluated MLX arrays through NumPy views. The SoVITS vocoder
(models/hifigan.py) runs its convolutions here as direct register-blocked convolutions
(`native_vconv`, `native_transposed`). Optional: without the built library (no C compiler at
install time) the pure-MLX paths run.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import math
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx
import numpy as np

from ..native import library_path

logger = logging.getLogger(__name__)

_NATIVE: dict[str, Any] = {"lib": None, "tried": False, "enabled": True}
_NATIVE_VERSION = 2


def _load_native() -> ctypes.CDLL | None:
    path = library_path("_encoder_kernels")
    if path is None:
        logger.info("native encoder kernels not built (pip install -e . with a C compiler): pure-MLX paths")
        return None
    ptrs, longs = ctypes.c_void_p, ctypes.c_long
    signatures = {
        "ps_gelu": [ptrs, ptrs, ctypes.c_int, longs],
        "ps_add_layer_norm": [ptrs, ptrs, ptrs, ptrs, ctypes.c_int, longs, ptrs, ptrs, ctypes.c_float],
        "ps_grouped_conv": [ptrs, ptrs, longs, longs, longs, longs, ptrs, ptrs, ctypes.c_int],
        "ps_windows": [ptrs, ptrs, ptrs, ctypes.c_int, longs, longs],
        "ps_small_conv_gelu": [ptrs, ptrs, ptrs, ctypes.c_int, longs, longs, ptrs, ptrs, longs],
        "ps_bind_sgemm": [ptrs],
        "ps_attention": [ctypes.c_int, ptrs, ptrs, ptrs, ptrs, ctypes.c_int, longs, longs, ctypes.c_float,
                         ptrs],
        "ps_linear": [ptrs, ptrs, longs, longs, ptrs, ptrs, longs, ctypes.c_int, ctypes.c_int],
        "ps_pair_conv": [ptrs, ptrs, longs, longs, ptrs, ptrs, ptrs, longs, ctypes.c_int, longs, ptrs, ptrs,
                         ptrs, ctypes.c_int],
        "ps_vconv_pack": [ptrs, ptrs, longs, longs, longs],
        "ps_vconv_level": [ctypes.c_int],
        "ps_vconv": [ptrs, ptrs, ptrs, ptrs, ptrs, ptrs, longs, longs, longs, longs, longs, longs, longs,
                     ctypes.c_int, ctypes.c_float, ctypes.c_int, ctypes.c_float, ctypes.c_float, ctypes.c_int],
    }
    try:
        lib = ctypes.CDLL(path)
        if lib.ps_version() != _NATIVE_VERSION:
            raise OSError(f"version {lib.ps_version()}, expected {_NATIVE_VERSION}: rebuild it")
        for name, argtypes in signatures.items():
            getattr(lib, name).argtypes = argtypes
    except (OSError, AttributeError) as exc:
        logger.warning("native encoder kernels unusable (%s): pure-MLX paths", exc)
        return None
    sgemm = _mkl_sgemm()
    try:
        # else the cblas_sgemm that MLX's products resolve to (OpenBLAS, preloaded globally by runtime.py)
        if sgemm is None:
            sgemm = ctypes.cast(ctypes.CDLL(None).cblas_sgemm, ctypes.c_void_p)
            _NATIVE["blas"] = "global cblas_sgemm (MLX's BLAS)"
        _NATIVE["attention"] = lib.ps_bind_sgemm(sgemm) == 0
    except (OSError, AttributeError):
        _NATIVE["attention"] = False
    return lib


def _mkl_sgemm() -> ctypes.c_void_p | None:
    """MKL's cblas_sgemm, sequential, where the optional `mkl` wheel is installed (its libraries land
    in <prefix>/lib): 10-20% faster than OpenBLAS on the encoders' products on x86 (the kernels'
    own threads split the work). Loaded privately, so MLX's products keep their BLAS."""
    for path in sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*"))):
        try:
            mkl = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
            mkl.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
            mkl.MKL_Set_Threading_Layer(1)  # MKL_THREADING_SEQUENTIAL
            sgemm = ctypes.cast(mkl.cblas_sgemm, ctypes.c_void_p)
        except (OSError, AttributeError) as exc:
            logger.info("MKL at %s unusable (%s)", path, exc)
            continue
        _NATIVE.update(mkl=mkl, blas=f"MKL (sequential): {path}")
        return sgemm
    return None


def native_kernels() -> ctypes.CDLL | None:
    """The native encoder kernels when built, enabled and MLX runs on the CPU; otherwise None."""
    if not _NATIVE["enabled"] or mx.default_device() != mx.cpu:
        return None
    if not _NATIVE["tried"]:
        _NATIVE["lib"] = _load_native()
        _NATIVE["tried"] = True
    return _NATIVE["lib"]


def native_attention_available() -> bool:
    """Whether `native_attention` and `native_linear` can run: the kernels are available and the
    global cblas_sgemm (the one MLX's products use) was bound."""
    return native_kernels() is not None and bool(_NATIVE.get("attention"))


def native_blas() -> str:
    """Which cblas_sgemm the native kernels call ("" when they are unavailable)."""
    return _NATIVE.get("blas", "") if native_attention_available() else ""


def set_native_kernels(enabled: bool) -> None:
    """Allow (default) or forbid the native encoder kernels, e.g. to run and test the pure-MLX paths."""
    _NATIVE["enabled"] = bool(enabled)


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


def native_vconv_pack(weight: Buffer) -> np.ndarray:
    """A Conv1d weight [C_out, K, C_in] (MLX layout, C_out a multiple of 16) re-laid out for
    `native_vconv` (blocks of 32 output channels, or 16: [C_out / NR, K, C_in, NR])."""
    cout, k, cin = weight.shape
    w = _input_view(weight, cout * k * cin)
    packed = np.empty(cout * k * cin, dtype=np.float32)
    _check(native_kernels().ps_vconv_pack(packed.ctypes.data, w.ctypes.data, cout, k, cin), "conv packing")
    return packed


def native_vconv(out: np.ndarray, x: Buffer, packed: Buffer, bias: Buffer | None, kernel: int, *,
                 dilation: int = 1, padding: int | None = None, residual: Buffer | None = None,
                 slope_in: float | None = None, slope_out: float | None = None, total: Buffer | None = None,
                 scale: float = 1.0, threads: int = 1) -> np.ndarray:
    """Direct 1-D convolution of x [T, C_in] (channels-last, zero outside its rows, `padding` rows
    on the left, default dilation * (kernel - 1) // 2: 'same') with `packed` (`native_vconv_pack`)
    into out [T_out, C_out] (T_out = T for a 'same' convolution): leaky ReLU (slope_in) on the input
    where given, then + bias + residual, leaky ReLU (slope_out) where given, then (total + result)
    * scale where `total` is given. out may be `residual` or `total` but must not overlap x. Chunks
    of rows go to `threads` threads."""
    t, cin = x.shape[-2], x.shape[-1]
    out = host_view(out)
    cout = out.shape[-1]
    t_out = out.size // cout
    xv = _input_view(x, t * cin)
    pv = _input_view(packed, cout * kernel * cin)
    extra = [None if a is None else _input_view(a, n)
             for a, n in ((residual, t_out * cout), (total, t_out * cout), (bias, cout))]
    if xv.size != t * cin or pv.size != cout * kernel * cin or any(
            a is not None and a.size != n for a, n in zip(extra, (t_out * cout, t_out * cout, cout), strict=True)):
        raise ValueError(f"native conv: output {out.shape}, input {xv.shape}, {pv.size} weights for kernel "
                         f"{kernel}, residual / total / bias of {[None if a is None else a.shape for a in extra]}")
    if np.may_share_memory(out, xv):
        raise ValueError("native conv: the output must not overlap the input")
    pad = dilation * (kernel - 1) // 2 if padding is None else padding
    res_p, total_p, bias_p = (None if a is None else a.ctypes.data for a in extra)
    status = native_kernels().ps_vconv(out.ctypes.data, xv.ctypes.data, res_p, total_p, pv.ctypes.data, bias_p,
                                       t, t_out, cin, cout, kernel, dilation, pad, slope_in is not None,
                                       slope_in or 0.0, slope_out is not None, slope_out or 0.0, scale, threads)
    _check(status, "conv")
    return out


def native_transposed_pack(weight: Buffer, bias: Buffer | None, stride: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A ConvTranspose1d weight [C_out, K, C_in] (MLX layout) and bias [C_out] as the weights and bias
    of the equivalent `native_vconv` on blocks of `stride` output rows (`native_transposed`).

    Output row u = q * stride + r of the full transposed convolution gets x[i] @ tap u - i * stride,
    so block q = sum over a < G = ceil(K / stride) of x[q - a] @ [tap a * stride + r for each r]:
    a convolution with G taps (reversed), 'full' padding G - 1 and stride * C_out output channels
    ordered (r, channel)."""
    cout, k, cin = weight.shape
    groups = -(-k // stride)
    w = np.zeros((cout, groups * stride, cin), dtype=np.float32)
    w[:, :k] = _input_view(weight, cout * k * cin).reshape(cout, k, cin)
    w = w.reshape(cout, groups, stride, cin)[:, ::-1].transpose(2, 0, 1, 3)  # [r, co, tap, ci]
    tiled = None if bias is None else np.tile(_input_view(bias, cout), stride)
    return native_vconv_pack(np.ascontiguousarray(w.reshape(stride * cout, groups, cin))), tiled


def native_transposed(x: Buffer, packed: Buffer, bias: np.ndarray | None, kernel: int, stride: int, padding: int,
                      out: np.ndarray, slope_in: float | None = None, threads: int = 1) -> np.ndarray:
    """PyTorch's ConvTranspose1d (stride, padding) of x [T, C_in] with `native_transposed_pack`'s
    weights, leaky ReLU (slope_in) on the input where given: rows [padding, padding + (T - 1) *
    stride + kernel - 2 padding) of the full output, a view into `out` (a work buffer of at least
    (T + ceil(kernel / stride) - 1) * stride * C_out floats; C_out = len(bias) or from the weights)."""
    t, cin = x.shape[-2], x.shape[-1]
    groups = -(-kernel // stride)
    width = packed.size // (groups * cin)  # stride * C_out
    blocks = t + groups - 1
    full = native_vconv(out.reshape(-1)[:blocks * width].reshape(blocks, width), x, packed, bias, groups,
                        padding=groups - 1, slope_in=slope_in, threads=threads)
    length = (t - 1) * stride + kernel - 2 * padding
    return full.reshape(blocks * stride, width // stride)[padding:padding + length]


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
