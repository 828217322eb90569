"""The native twin of the SoVITS HiFi-GAN generator (models/hifigan.py `Generator`).

`install(model)` swaps every `Generator` in a loaded model for a `NativeGenerator` with the same
call signature. After conv_pre + cond (left in MLX), each stage runs on the library's direct
convolutions (cpu/native/vocoder.c) over NumPy buffers: the transposed convolution as a
convolution on blocks of `stride` rows, every ResBlock convolution with its leaky ReLUs, bias,
residual and the stage's mean fused in, and conv_post with the final leaky ReLU; the rows of each
convolution are split over the worker pool. The kernels compute 16 channels at a time: a stage
whose width is not a multiple of 16 (v2ProPlus's last, 24; the test configs' 8 and 4) runs on zero
channels added up to the next multiple (zero weights and biases into them, zero weights out of them,
so they stay zero through the leaky ReLUs and residuals). The twin holds the packed weights only:
the MLX copies it replaces go with the original generator.
"""

from __future__ import annotations

import logging
import os
import threading

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_unflatten

from ..models.hifigan import LRELU_SLOPE, Generator, ResBlock1
from ..models.sovits import padded_rows
from ..models.vits_conv import ConvTranspose1d
from . import ops
from .ops import PackedConv, PackedTransposed, Scratch

logger = logging.getLogger(__name__)

MAX_THREADS = 16  # the library's pool: the caller and up to 15 workers


def _width(channels: int) -> int:
    """Channels as the kernels run them: rounded up to a multiple of 16 (the extra ones hold zeros)."""
    return -(-channels // 16) * 16


def _padded(a, shape: tuple[int, ...]) -> np.ndarray:
    """`a` in a zero float32 array of `shape` (its leading corner)."""
    out = np.zeros(shape, dtype=np.float32)
    a = np.asarray(a, dtype=np.float32)
    out[tuple(slice(0, n) for n in a.shape)] = a
    return out


def _leaky_relu(x: mx.array) -> mx.array:
    return nn.leaky_relu(x, LRELU_SLOPE)


class _Stage(nn.Module):
    """One upsampling stage on the library's kernels: leaky ReLU, transposed convolution, mean of the
    ResBlocks, over `width` channels (the stage's own, rounded up to a multiple of 16)."""

    def __init__(self, up: ConvTranspose1d, blocks: list[ResBlock1], in_width: int):
        super().__init__()
        cout, kernel, cin = up.weight.shape
        self.width = width = _width(cout)
        bias = up.get("bias")
        self._up = PackedTransposed.pack(_padded(up.weight, (width, kernel, in_width)),
                                         None if bias is None else _padded(bias, (width,)),
                                         stride=up.stride, padding=up.padding)
        self._blocks = [[(self._conv(c1, width), self._conv(c2, width))
                         for c1, c2 in zip(block.convs1, block.convs2, strict=True)] for block in blocks]

    @staticmethod
    def _conv(conv, width: int) -> PackedConv:
        k = conv.weight.shape[1]
        return PackedConv.pack(_padded(conv.weight, (width, k, width)), _padded(conv.bias, (width,)),
                               dilation=conv.dilation, padding=conv.padding)

    def packed_bytes(self) -> int:
        return self._up.nbytes + sum(c.nbytes for block in self._blocks for pair in block for c in pair)

    def __call__(self, h: np.ndarray, work: Scratch, threads: int) -> np.ndarray:
        """The stage on one sequence h [T, in_width] -> [T', width] (a work buffer, valid until the next call)."""
        y = self._up(h, work("up", self._up.work_size(h.shape[0])), slope_in=LRELU_SLOPE, threads=threads)
        total = work("stage_total", *y.shape)
        n = len(self._blocks)
        for j, pairs in enumerate(self._blocks):
            _resblock(pairs, y, total, work, threads, total=total if j else None, scale=1.0 / n if j == n - 1 else 1.0)
        return total


def _resblock(pairs: list[tuple[PackedConv, PackedConv]], x: np.ndarray, out: np.ndarray, work: Scratch,
              threads: int, total: np.ndarray | None, scale: float) -> None:
    """ResBlock1 on x [T, C] into out (not x); with `total`, out = (total + block(x)) * scale instead
    (out may be total), the stage mean accumulated in place."""
    h = work("resblock_h", *x.shape)
    cur = x
    for i, (c1, c2) in enumerate(pairs):
        c1(h, cur, slope_in=LRELU_SLOPE, slope_out=LRELU_SLOPE, threads=threads)
        last = i == len(pairs) - 1
        dst = out if last else (work("resblock_x", *x.shape) if cur is x else cur)
        c2(dst, h, residual=cur, total=total if last else None, scale=scale if last else 1.0, threads=threads)
        cur = dst


class NativeGenerator(nn.Module):
    """`Generator` on the CPU library's convolutions (module docstring); built from a loaded
    float32 generator, whose stage and conv_post weights it packs (it keeps no reference to them)."""

    def __init__(self, generator: Generator, threads: int):
        super().__init__()
        self.conv_pre = generator.conv_pre
        self.cond = generator.cond
        n = generator.num_kernels
        self.in_width = width = _width(generator.conv_pre.weight.shape[0])
        self.stages = []
        for i, up in enumerate(generator.ups):
            self.stages.append(_Stage(up, generator.resblocks[i * n:(i + 1) * n], width))
            width = self.stages[-1].width
        post = generator.conv_post.weight  # [1, K, C]: the kernels write 16 outputs and read `width` inputs
        self._post = PackedConv.pack(_padded(post, (16, post.shape[1], width)), padding=generator.conv_post.padding)
        self.post_slope = generator.post_slope
        self.threads = threads
        self._work = Scratch()
        self._lock = threading.Lock()  # the work buffers are shared by the calls

    def packed_bytes(self) -> int:
        """Bytes of the packed weights the twin holds (besides its MLX parameters)."""
        return self._post.nbytes + sum(stage.packed_bytes() for stage in self.stages)

    def __call__(self, x: mx.array, g: mx.array, mask: mx.array | None = None) -> mx.array:
        """x [B, T, C], g [B, 1, gin] -> [B, T * prod(upsample_rates), 1], as `Generator`; rows of
        different lengths (mask [B, T, 1]) each run on their own frames, their tails left zero (a row
        with none, past its end in a window of the vocoder, is all zero)."""
        x = self.conv_pre(x) + self.cond(g)
        lengths = [x.shape[1]] * x.shape[0] if mask is None else np.asarray(mask[..., 0].sum(axis=1)).astype(int)
        mx.eval(x)
        with self._lock:
            rows = [self._row(np.array(row[:n])) if n else mx.zeros((0, 1))
                    for row, n in zip(np.array(x, copy=False), lengths, strict=True)]
        return padded_rows(rows)

    def _row(self, h: np.ndarray) -> mx.array:
        if h.shape[1] != self.in_width:
            h = _padded(h, (h.shape[0], self.in_width))
        for stage in self.stages:
            h = stage(h, self._work, self.threads)
        out = self._work("post", h.shape[0], 16)
        self._post(out, h, slope_in=self.post_slope, threads=self.threads)
        return mx.array(np.tanh(out[:, :1]))


def _threads() -> int:
    """Threads of each convolution: the cores this process may run on (the pool's limit at most)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cores))


def _twins(model: nn.Module) -> list[tuple[str, NativeGenerator]]:
    """(path, twin) for each float32 `Generator` below the root of `model`."""
    return [(path, NativeGenerator(module, _threads())) for path, module in model.named_modules()
            if path and isinstance(module, Generator) and module.conv_pre.weight.dtype == mx.float32]


def install(model: nn.Module) -> bool:
    """Swap every float32 `Generator` inside `model` for its `NativeGenerator` twin (the original
    generator, and with it the MLX weights the twin packed, is released); True when any was swapped.
    Nothing changes without the CPU library."""
    if ops.native_kernels() is None:
        return False
    swaps = _twins(model)
    if not swaps:
        return False
    model.update_modules(tree_unflatten(swaps))
    mx.clear_cache()  # the replaced weights' buffers go back to the system, not to MLX's cache
    return True
