"""HiFi-GAN generator (ResBlock1 variant) of SoVITS, channels-last."""

from __future__ import annotations

import logging

import mlx.core as mx
import mlx.nn as nn

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

    def __call__(self, x: mx.array) -> mx.array:
        fused = _fused()
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            h = fused.bias_leaky_relu(c1(fused.leaky_relu(x), use_bias=False), c1.bias)
            x = c2(h, add=x)  # the residual seeds c2's accumulation
        return x


class Generator(nn.Module):
    """conv_pre + cond(g); per stage: leaky ReLU, transposed conv, mean of the ResBlocks; then
    leaky ReLU with slope 0.01 (PyTorch's default, as upstream), conv_post without bias, tanh.

    With `streams` (two MLX CPU streams), each stage's ResBlocks run on both streams at once
    (the widest kernel on one, the rest on the other: 11 vs 3 + 7 taps), as do the transposed
    convolutions' tap groups; run it with single-threaded BLAS (see `vits_conv.CpuParallel`).
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

    def __call__(self, x: mx.array, g: mx.array, streams: tuple | None = None) -> mx.array:
        """x [B, T, C], g [B, 1, gin] -> [B, T * prod(upsample_rates), 1]."""
        fused = _fused()
        x = self.conv_pre(x, add=self.cond(g))
        n = self.num_kernels
        for i, up in enumerate(self.ups):
            x = self._mean_of(self.resblocks[i * n:(i + 1) * n], up(fused.leaky_relu(x), streams), streams)
        return mx.tanh(self.conv_post(_leaky_relu(x, self.post_slope)))

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
