"""HiFi-GAN generator (ResBlock1 variant) of SoVITS, channels-last.

On the CPU (float32, native kernels built: `Generator.native_ready`) everything after conv_pre runs
as direct convolutions of native/encoder_kernels.c on NumPy buffers (`native_ops.native_vconv`):
the leaky ReLUs, biases, residuals and each stage's mean fused into the convolutions, the
transposed convolutions computed as convolutions on blocks of `stride` rows, and the rows of each
convolution split over the threads that BLAS may use. The pure-MLX path serves the GPU, other
dtypes and `native_ops.set_native_kernels(False)`, and any stage whose widths the kernels do not
take (not multiples of 16).
"""

from __future__ import annotations

import logging

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .native_ops import (
    DerivedWeights,
    Scratch,
    native_kernels,
    native_transposed,
    native_transposed_pack,
    native_vconv,
    native_vconv_pack,
)
from .vits_conv import Conv1d, ConvTranspose1d

logger = logging.getLogger(__name__)

LRELU_SLOPE = 0.1
POST_SLOPE = 0.01  # upstream's final F.leaky_relu(x) uses PyTorch's default slope, not LRELU_SLOPE


def _leaky_relu(x: mx.array, slope: float = LRELU_SLOPE) -> mx.array:
    return mx.maximum(x, slope * x)


def _bias_leaky_relu(x: mx.array, bias: mx.array) -> mx.array:
    x = x + bias
    return mx.maximum(x, LRELU_SLOPE * x)


class _Fused:
    """Elementwise helpers compiled into single passes over memory (shape-independent kernels),
    or left as plain MLX ops where compilation is unavailable."""

    def __init__(self):
        self.leaky_relu = _leaky_relu
        self.bias_leaky_relu = _bias_leaky_relu
        try:
            leaky = mx.compile(_leaky_relu, shapeless=True)
            bias_leaky = mx.compile(_bias_leaky_relu, shapeless=True)
            probe = mx.ones((2, 3))
            mx.eval(leaky(probe), bias_leaky(probe, mx.ones((3,))))
        except Exception as exc:  # compilation needs a working JIT; fall back to plain ops
            logger.info("MLX compile unavailable (%s): using unfused elementwise ops", exc)
            return
        self.leaky_relu = leaky
        self.bias_leaky_relu = bias_leaky


_FUSED: _Fused | None = None


def _fused() -> _Fused:
    global _FUSED
    if _FUSED is None:
        _FUSED = _Fused()
    return _FUSED


class ResBlock1(nn.Module):
    """Three pairs x <- x + c2(lrelu(c1(lrelu(x)))) (dilated c1), leaky ReLU slope 0.1."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.kernel_size = kernel_size
        self.convs1 = [Conv1d(channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2)
                       for d in dilations]
        self.convs2 = [Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
                       for _ in dilations]
        self._packed = DerivedWeights(lambda *ws: [native_vconv_pack(w) for w in ws])

    def __call__(self, x: mx.array) -> mx.array:
        fused = _fused()
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            h = fused.bias_leaky_relu(c1(fused.leaky_relu(x), use_bias=False), c1.bias)
            x = c2(h, add=x)  # the residual seeds c2's accumulation
        return x

    def native_ready(self) -> bool:
        """Whether `native` can run this block (its width a multiple of 16, float32 weights)."""
        w = self.convs1[0].weight
        return w.shape[0] % 16 == 0 and w.dtype == mx.float32

    def native(self, x: np.ndarray, out: np.ndarray, work: Scratch, threads: int, total: np.ndarray | None = None,
               scale: float = 1.0) -> np.ndarray:
        """This block on x [T, C] by the native convolutions into out [T, C] (not x); with `total`,
        out = (total + block(x)) * scale instead (out may be total), for the stage mean."""
        packed = self._packed(*(c.weight for c in self.convs1), *(c.weight for c in self.convs2))
        n = len(self.convs1)
        h = work("resblock_h", *x.shape)
        cur = x
        for i, (c1, c2) in enumerate(zip(self.convs1, self.convs2, strict=True)):
            k = self.kernel_size
            native_vconv(h, cur, packed[i], c1.bias, k, dilation=c1.dilation, slope_in=LRELU_SLOPE,
                         slope_out=LRELU_SLOPE, threads=threads)
            last = i == n - 1
            dst = out if last else (work("resblock_x", *x.shape) if cur is x else cur)
            native_vconv(dst, h, packed[n + i], c2.bias, k, residual=cur, total=total if last else None,
                         scale=scale if last else 1.0, threads=threads)
            cur = dst
        return out


class Generator(nn.Module):
    """conv_pre + cond(g); per stage: leaky ReLU, transposed conv, mean of the ResBlocks; then
    leaky ReLU with slope 0.01 (PyTorch's default, as upstream), conv_post without bias, tanh.

    With `streams` (two MLX CPU streams), each stage's ResBlocks run on both streams at once
    (the widest kernel on one, the rest on the other: 11 vs 3 + 7 taps), as do the transposed
    convolutions' tap groups; run it with single-threaded BLAS (see `vits_conv.CpuParallel`).
    With `threads` > 0 on the CPU the native kernels run the stages instead (module docstring).
    """

    def __init__(self, initial_channel: int, resblock_kernel_sizes: list[int],
                 resblock_dilation_sizes: list[list[int]], upsample_rates: list[int],
                 upsample_initial_channel: int, upsample_kernel_sizes: list[int], gin_channels: int):
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)
        self.conv_pre = Conv1d(initial_channel, upsample_initial_channel, 7, padding=3)
        self.cond = Conv1d(gin_channels, upsample_initial_channel, 1)
        self.ups = []
        self.resblocks = []
        ch = upsample_initial_channel
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes, strict=True)):
            ch = upsample_initial_channel // (2 ** (i + 1))
            self.ups.append(ConvTranspose1d(2 * ch, ch, k, stride=u, padding=(k - u) // 2))
            for kernel, dilations in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True):
                self.resblocks.append(ResBlock1(ch, kernel, tuple(dilations)))
        self.conv_post = Conv1d(ch, 1, 7, padding=3, bias=False)
        self.post_slope = POST_SLOPE
        self._native_weights = DerivedWeights(self._pack_native)
        self._work = Scratch()

    def __call__(self, x: mx.array, g: mx.array, streams: tuple | None = None, threads: int = 0) -> mx.array:
        """x [B, T, C], g [B, 1, gin] -> [B, T * prod(upsample_rates), 1]. `threads` > 0 runs the
        stages on the native kernels with that many threads where `native_ready`."""
        fused = _fused()
        x = self.conv_pre(x, add=self.cond(g))
        if threads > 0 and self.native_ready():
            mx.eval(x)
            with self._work.lock:
                return mx.stack([self._native_row(np.ascontiguousarray(row), streams, threads)
                                 for row in np.array(x, copy=False)])
        n = self.num_kernels
        for i, up in enumerate(self.ups):
            x = self._mean_of(self.resblocks[i * n:(i + 1) * n], up(fused.leaky_relu(x), streams), streams)
        return mx.tanh(self.conv_post(_leaky_relu(x, self.post_slope)))

    def native_ready(self) -> bool:
        """Whether the native kernels are built, enabled and MLX computes on the CPU, in float32."""
        return native_kernels() is not None and self.conv_pre.weight.dtype == mx.float32

    def _pack_native(self, *params: mx.array) -> tuple[list, np.ndarray]:
        """([(weights, bias) of each transposed conv for `native_transposed`, or None where its
        stride * C_out is not a multiple of 16], conv_post's weights padded to 16 outputs, packed)."""
        ups = []
        for up, weight, bias in zip(self.ups, params[0:-1:2], params[1:-1:2], strict=True):
            ok = weight.shape[0] * up.stride % 16 == 0
            ups.append(native_transposed_pack(weight, bias, up.stride) if ok else None)
        post = np.zeros((16,) + params[-1].shape[1:], dtype=np.float32)
        post[:1] = np.array(params[-1], copy=False)
        return ups, native_vconv_pack(post)

    def _native_row(self, h: np.ndarray, streams: tuple | None, threads: int) -> mx.array:
        """One sequence [T, C] after conv_pre through the stages and the output layer -> [N, 1]."""
        ups, post = self._native_weights(*(p for up in self.ups for p in (up.weight, up.get("bias"))),
                                         self.conv_post.weight)
        n = self.num_kernels
        for i, up in enumerate(self.ups):
            blocks = self.resblocks[i * n:(i + 1) * n]
            if ups[i] is not None:
                cout, k, _ = up.weight.shape
                work = self._work("up", (h.shape[0] + -(-k // up.stride) - 1) * up.stride * cout)
                y = native_transposed(h, *ups[i], k, up.stride, up.padding, work, slope_in=LRELU_SLOPE,
                                      threads=threads)
            else:
                y = np.array(up(_fused().leaky_relu(mx.array(h)[None]), streams)[0])
            if all(block.native_ready() for block in blocks):
                h = self._native_mean_of(blocks, y, threads)
            else:
                h = np.array(self._mean_of(blocks, mx.array(y)[None], streams)[0])
        out = self._work("post", h.shape[0], 16)
        native_vconv(out, h, post, None, self.conv_post.kernel_size, slope_in=self.post_slope, threads=threads)
        return mx.array(np.tanh(out[:, :1]))

    def _native_mean_of(self, blocks: list[ResBlock1], x: np.ndarray, threads: int) -> np.ndarray:
        """`_mean_of` of x [T, C] by the native kernels: ((r_0 + r_1) + ...) * (1 / n) accumulated in
        one work buffer (valid until the next call)."""
        total = self._work("stage_total", *x.shape)
        for j, block in enumerate(blocks):
            last = j == len(blocks) - 1
            block.native(x, total, self._work, threads, total=total if j else None,
                         scale=1.0 / len(blocks) if last else 1.0)
        return total

    @staticmethod
    def _mean_of(blocks: list[ResBlock1], x: mx.array, streams: tuple | None) -> mx.array:
        """(r_0 + r_1 + ... + r_last) / n, summed in upstream's order."""
        if streams is None or len(blocks) < 2:
            xs = blocks[0](x)
            for block in blocks[1:]:
                xs = xs + block(x)
            return xs * (1.0 / len(blocks))
        with mx.stream(streams[1]):
            last = blocks[-1](x)
        with mx.stream(streams[0]):
            xs = blocks[0](x)
            for block in blocks[1:-1]:
                xs = xs + block(x)
            return (xs + last) * (1.0 / len(blocks))
