"""Channels-last 1-D convolutions for the SoVITS decoder, written as BLAS matrix products.

MLX's CPU convolution is slow for the decoder's shapes (dilated, long and narrow, transposed).
These layers keep MLX's weight layout (`[out, kernel, in]`) and compute with matrix products:

- a kernel-k convolution as k products, one per tap, accumulated with `addmm`;
- for narrow layers (<= 128 channels, no dilation) the time axis is folded in pairs
  ([T, C] -> [T/2, 2C]) and the taps regrouped into block-Toeplitz matrices, which halves the
  passes over memory and doubles the width BLAS works on;
- a strided convolution whose kernel equals its stride as one product on reshaped frames;
- a transposed convolution as one product followed by an overlap-add.

Weights derived from a layer's parameters are cached on the layer and rebuilt when the
parameter array changes (e.g. after `load_weights`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..runtime import blas_thread_count, blas_threads, usable_cores

FOLD_MAX_CHANNELS = 128
FOLD_ROWS = 2


def fold_rows(channels: int, kernel_size: int, dilation: int) -> int:
    """Rows of time folded together for a 'same' convolution (1: plain per-tap products)."""
    if kernel_size > 1 and dilation == 1 and channels <= FOLD_MAX_CHANNELS:
        return FOLD_ROWS
    return 1


class _Derived:
    """Arrays computed from a parameter, remembered together with the parameter they came from."""

    def __init__(self):
        self.source = None
        self.value = None

    def get(self, param: mx.array, build):
        if self.source is not param:
            self.value = build(param)
            self.source = param
        return self.value


def conv_taps(weight: mx.array) -> mx.array:
    """[Cout, K, Cin] -> contiguous per-tap matrices [K, Cin, Cout]."""
    return mx.contiguous(mx.transpose(weight, (1, 2, 0)))


def folded_taps(weight: mx.array, rows: int) -> mx.array:
    """[Cout, K, Cin] -> block-Toeplitz taps [B, rows * Cin, rows * Cout] for a 'same' convolution
    on time folded by `rows`: output row r of a block reads input row r + j (block-local, after
    the left padding), which lands in block (r + j) // rows."""
    w = np.array(weight, dtype=np.float32)
    cout, k, cin = w.shape
    blocks = (rows - 1 + k - 1) // rows + 1
    big = np.zeros((blocks, rows, cin, rows, cout), dtype=np.float32)
    for r in range(rows):
        for j in range(k):
            big[(r + j) // rows, (r + j) % rows, :, r, :] = w[:, j, :].T
    return mx.array(big.reshape(blocks, rows * cin, rows * cout))


def _product(init: mx.array | None, a: mx.array, b: mx.array) -> mx.array:
    return a @ b if init is None else mx.addmm(init, a, b)


def conv1d_taps(x: mx.array, taps: mx.array, init: mx.array | None, padding: int, dilation: int) -> mx.array:
    """init + cross-correlation of x [B, T, Cin] with taps [K, Cin, Cout], zero padding on both
    sides; `init` (broadcastable to the output, or None) seeds the accumulation."""
    k = taps.shape[0]
    if padding:
        x = mx.pad(x, [(0, 0), (padding, padding), (0, 0)])
    t_out = x.shape[1] - dilation * (k - 1)
    y = _product(init, x[:, 0:t_out], taps[0])
    for j in range(1, k):
        y = mx.addmm(y, x[:, j * dilation:j * dilation + t_out], taps[j])
    return y


def conv1d_folded(x: mx.array, big: mx.array, init: mx.array | None, kernel_size: int, rows: int) -> mx.array:
    """init + 'same' convolution (odd kernel, no dilation) of x [B, T, Cin] with `folded_taps`
    weights; `init` is constant over time ([Cout] or [B, 1, Cout]) or shaped like the output."""
    b, t, cin = x.shape
    blocks = big.shape[0]
    cout = big.shape[2] // rows
    n = -(-t // rows)
    left = (kernel_size - 1) // 2
    total = (n + blocks - 1) * rows
    x = mx.pad(x, [(0, 0), (left, total - t - left), (0, 0)]).reshape(b, n + blocks - 1, rows * cin)
    if init is not None:
        if init.ndim == 1 or init.shape[-2] == 1:  # constant over time: repeat it for each folded row
            init = mx.tile(init, (1,) * (init.ndim - 1) + (rows,))
        else:
            if n * rows != t:
                init = mx.pad(init, [(0, 0), (0, n * rows - t), (0, 0)])
            init = init.reshape(b, n, rows * cout)
    y = _product(init, x[:, 0:n], big[0])
    for m in range(1, blocks):
        y = mx.addmm(y, x[:, m:m + n], big[m])
    y = y.reshape(b, n * rows, cout)
    return y[:, :t] if n * rows != t else y


class Conv1d(nn.Module):
    """PyTorch-style Conv1d on channels-last input [B, T, C]; weight [Cout, K, Cin]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, dilation: int = 1, bias: bool = True):
        super().__init__()
        self.weight = mx.zeros((out_channels, kernel_size, in_channels))
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        same = stride == 1 and kernel_size % 2 == 1 and padding == dilation * (kernel_size - 1) // 2
        self.fold = fold_rows(max(in_channels, out_channels), kernel_size, dilation) if same else 1
        self._derived = _Derived()

    def __call__(self, x: mx.array, *, add: mx.array | None = None, use_bias: bool = True) -> mx.array:
        """conv(x) + bias, plus `add` (an array shaped like the output) folded into the
        accumulation; `use_bias=False` leaves the bias out (for callers that fuse it elsewhere)."""
        bias = self.get("bias") if use_bias else None
        init = bias if add is None else (add if bias is None else add + bias)
        out_ch, k, in_ch = self.weight.shape
        if k == 1 and self.stride == 1 and self.padding == 0:
            w = self._derived.get(self.weight, lambda p: mx.contiguous(p.reshape(out_ch, in_ch).T))
            return _product(init, x, w)
        if self.stride != 1:
            if k == self.stride and self.padding == 0 and self.dilation == 1:
                b, t, _ = x.shape
                frames = x[:, : t // k * k].reshape(b, t // k, k * in_ch)
                w = self._derived.get(self.weight, lambda p: mx.contiguous(p.reshape(out_ch, k * in_ch).T))
                return _product(init, frames, w)
            y = mx.conv1d(x, self.weight, stride=self.stride, padding=self.padding, dilation=self.dilation)
            return y if init is None else y + init
        if self.fold > 1:
            big = self._derived.get(self.weight, lambda p: folded_taps(p, self.fold))
            return conv1d_folded(x, big, init, k, self.fold)
        taps = self._derived.get(self.weight, conv_taps)
        return conv1d_taps(x, taps, init, self.padding, self.dilation)


class ConvTranspose1d(nn.Module):
    """PyTorch-style ConvTranspose1d on channels-last input; weight [Cout, K, Cin] as in MLX.

    Output length (T - 1) * stride - 2 * padding + K. Computed as x @ W ([Cin, K * Cout]) and an
    overlap-add of the K taps, grouped by the output block of `stride` samples they land in.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = mx.zeros((out_channels, kernel_size, in_channels))
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.stride = stride
        self.padding = padding
        self._derived = _Derived()

    def _matrices(self, weight: mx.array) -> mx.array:
        """[groups, Cin, stride * Cout]: the taps landing `a` output blocks after their input."""
        out_ch, k, in_ch = weight.shape
        groups = -(-k // self.stride)
        w = mx.transpose(weight, (2, 1, 0))  # [Cin, K, Cout]
        if groups * self.stride != k:
            w = mx.pad(w, [(0, 0), (0, groups * self.stride - k), (0, 0)])
        w = w.reshape(in_ch, groups, self.stride * out_ch)
        return mx.contiguous(mx.transpose(w, (1, 0, 2)))

    def __call__(self, x: mx.array, streams: tuple | None = None) -> mx.array:
        """`streams`: optional CPU streams over which the tap groups' products are spread."""
        out_ch, k, _ = self.weight.shape
        s = self.stride
        b, t, _ = x.shape
        mats = self._derived.get(self.weight, self._matrices)
        groups = mats.shape[0]
        ys = []
        for a in range(groups):
            with mx.stream(streams[a % len(streams)]) if streams else contextlib.nullcontext():
                ys.append(x @ mats[a])
        full = mx.pad(ys[0], [(0, 0), (0, groups - 1), (0, 0)])
        for a in range(1, groups):
            full = full + mx.pad(ys[a], [(0, 0), (a, groups - 1 - a), (0, 0)])
        full = full.reshape(b, (t + groups - 1) * s, out_ch)
        out = full[:, self.padding:self.padding + (t - 1) * s + k - 2 * self.padding]
        bias = self.get("bias")
        return out if bias is None else out + bias


def cpu_streams() -> tuple | None:
    """Two CPU streams (the default one and a new one) when MLX computes on the CPU, else None."""
    if mx.default_device() != mx.cpu:
        return None
    return (mx.default_stream(mx.cpu), mx.new_stream(mx.cpu))


class CpuParallel:
    """On the CPU: two MLX streams for independent work, each running single-threaded BLAS
    (multi-threaded BLAS on the decoder's many small products loses badly, worst on a busy
    machine). Elsewhere (GPU) it yields None. Evaluate the arrays inside the block.

    `threads` is what BLAS could use on entering the block (OpenBLAS's load-adapted setting, else
    the usable cores): the thread count for native kernels run inside it (0 off the CPU)."""

    def __init__(self):
        self._streams: tuple | None = None
        self.threads = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[tuple | None]:
        if mx.default_device() != mx.cpu:
            self.threads = 0
            yield None
            return
        if self._streams is None:
            self._streams = cpu_streams()
        self.threads = max(1, min(16, blas_thread_count() or len(usable_cores())))
        with blas_threads(1):
            yield self._streams
