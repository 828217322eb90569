"""The native twin of the SoVITS HiFi-GAN generator (models/hifigan.py `Generator`).

`install(model)` swaps every `Generator` in a loaded model for a `NativeGenerator` with the same
call signature. After conv_pre + cond (left in MLX), each stage runs on the library's direct
convolutions (cpu/native/vocoder.c) over NumPy buffers: the transposed convolution as a
convolution on blocks of `stride` rows, every ResBlock convolution with its leaky ReLUs, bias,
residual and the stage's mean fused in, and conv_post with the final leaky ReLU; the rows of each
convolution are split over the worker pool. A stage whose widths the kernels do not take (not
multiples of 16) keeps its MLX modules. The twin holds the packed weights only: the MLX copies it
replaces go with the original generator.
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
from ..models.vits_conv import ConvTranspose1d
from . import ops
from .ops import PackedConv, PackedTransposed, Scratch

logger = logging.getLogger(__name__)

MAX_THREADS = 16  # the library's pool: the caller and up to 15 workers


def _serves(width: int) -> bool:
    return width % 16 == 0


def _leaky_relu(x: mx.array) -> mx.array:
    return nn.leaky_relu(x, LRELU_SLOPE)


class _Stage(nn.Module):
    """One upsampling stage: leaky ReLU, transposed convolution, mean of the ResBlocks, each part
    native where the kernels take its widths, else its MLX module."""

    def __init__(self, up: ConvTranspose1d, blocks: list[ResBlock1]):
        super().__init__()
        cout, _, _ = up.weight.shape
        if _serves(up.stride * cout):
            self._up = PackedTransposed.pack(up.weight, up.get("bias"), stride=up.stride, padding=up.padding)
        else:
            self._up = None
            self.up = up
        if all(_serves(block.convs1[0].weight.shape[0]) for block in blocks):
            self._blocks = [[(PackedConv.pack(c1.weight, c1.bias, dilation=c1.dilation, padding=c1.padding),
                              PackedConv.pack(c2.weight, c2.bias, padding=c2.padding))
                             for c1, c2 in zip(block.convs1, block.convs2, strict=True)] for block in blocks]
        else:
            self._blocks = None
            self.resblocks = blocks

    @property
    def native(self) -> bool:
        """Whether every part of the stage runs natively."""
        return self._up is not None and self._blocks is not None

    def packed_bytes(self) -> int:
        up = 0 if self._up is None else self._up.nbytes
        return up + sum(c.nbytes for block in self._blocks or [] for pair in block for c in pair)

    def __call__(self, h: np.ndarray, work: Scratch, threads: int) -> np.ndarray:
        """The stage on one sequence h [T, C] -> [T', C / 2] (a work buffer, valid until the next call)."""
        if self._up is not None:
            y = self._up(h, work("up", self._up.work_size(h.shape[0])), slope_in=LRELU_SLOPE, threads=threads)
        else:
            y = np.array(self.up(_leaky_relu(mx.array(h)[None]))[0])
        if self._blocks is None:
            x = mx.array(y)[None]
            xs = self.resblocks[0](x)
            for block in self.resblocks[1:]:
                xs = xs + block(x)
            return np.array((xs / len(self.resblocks))[0])
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
        self.stages = [_Stage(up, generator.resblocks[i * n:(i + 1) * n]) for i, up in enumerate(generator.ups)]
        post = generator.conv_post.weight
        padded = np.zeros((16,) + post.shape[1:], dtype=np.float32)  # the kernels write 16 outputs
        padded[:1] = np.array(post)
        self._post = PackedConv.pack(padded, padding=generator.conv_post.padding)
        self.post_slope = generator.post_slope
        self.threads = threads
        self._work = Scratch()
        self._lock = threading.Lock()  # the work buffers are shared by the calls

    def packed_bytes(self) -> int:
        """Bytes of the packed weights the twin holds (besides its MLX parameters)."""
        return self._post.nbytes + sum(stage.packed_bytes() for stage in self.stages)

    def __call__(self, x: mx.array, g: mx.array) -> mx.array:
        """x [B, T, C], g [B, 1, gin] -> [B, T * prod(upsample_rates), 1], as `Generator`."""
        x = self.conv_pre(x) + self.cond(g)
        mx.eval(x)
        with self._lock:
            return mx.stack([self._row(np.array(row)) for row in np.array(x, copy=False)])

    def _row(self, h: np.ndarray) -> mx.array:
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
    """(path, twin) for each float32 `Generator` below the root of `model` that has a native stage."""
    swaps = []
    for path, module in model.named_modules():
        if not path or not isinstance(module, Generator) or module.conv_pre.weight.dtype != mx.float32:
            continue
        twin = NativeGenerator(module, _threads())
        if any(stage.native for stage in twin.stages):
            swaps.append((path, twin))
        else:
            logger.info("no stage of the generator at %s has widths the CPU kernels take: left in MLX", path)
    return swaps


def install(model: nn.Module) -> bool:
    """Swap every float32 `Generator` inside `model` for its `NativeGenerator` twin (the original
    generator, and with it the MLX weights the twin packed, is released); True when any was swapped.
    Nothing changes without the CPU library or where no stage's widths are multiples of 16."""
    if ops.native_kernels() is None:
        return False
    swaps = _twins(model)
    if not swaps:
        return False
    model.update_modules(tree_unflatten(swaps))
    mx.clear_cache()  # the replaced weights' buffers go back to the system, not to MLX's cache
    return True
