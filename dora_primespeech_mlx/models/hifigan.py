"""HiFi-GAN generator (ResBlock1 variant) of SoVITS, channels-last."""

from __future__ import annotations

import math
from fractions import Fraction

import mlx.core as mx
import mlx.nn as nn

from .vits_conv import Conv1d, ConvTranspose1d

LRELU_SLOPE = 0.1
POST_SLOPE = 0.01  # upstream's final F.leaky_relu(x) uses PyTorch's default slope, not LRELU_SLOPE


def reach(resblock_kernel_sizes: list[int], resblock_dilation_sizes: list[list[int]], upsample_rates: list[int],
          upsample_kernel_sizes: list[int]) -> int:
    """Input frames on either side of a frame that its output samples depend on, rounded up: the
    samples of frames [a, b) decoded from frames [a - reach, b + reach) alone are those of the whole
    input (the zero padding at the window's edges is out of their reach). Summed over the layers, each
    layer's one-sided reach in its own samples over its rate: conv_pre's 3, each transposed conv's
    ceil(K / stride) inputs, the widest ResBlock (each pair: c1's (k - 1) / 2 * d, c2's (k - 1) / 2),
    conv_post's 3."""
    total = Fraction(3)
    rate = 1
    block = max((k - 1) // 2 * (sum(d) + len(d)) for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes,
                                                                    strict=True))
    for u, k in zip(upsample_rates, upsample_kernel_sizes, strict=True):
        total += Fraction(-(-k // u), rate)
        rate *= u
        total += Fraction(block, rate)
    return math.ceil(total + Fraction(3, rate))


class ResBlock1(nn.Module):
    """Three pairs x <- x + c2(lrelu(c1(lrelu(x)))) (dilated c1), leaky ReLU slope 0.1."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.kernel_size = kernel_size
        self.convs1 = [Conv1d(channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2)
                       for d in dilations]
        self.convs2 = [Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
                       for _ in dilations]

    def __call__(self, x: mx.array, mask: mx.array | None = None) -> mx.array:
        """x [B, T, C] (masked); mask [B, T, 1] keeps each padded row's tail zero, as upstream's x_mask."""
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            if mask is None:
                x = x + c2(nn.leaky_relu(c1(nn.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
            else:
                x = (x + c2(nn.leaky_relu(c1(nn.leaky_relu(x, LRELU_SLOPE)) * mask, LRELU_SLOPE))) * mask
        return x


class Generator(nn.Module):
    """conv_pre + cond(g); per stage: leaky ReLU, transposed conv, mean of the ResBlocks; then
    leaky ReLU with slope 0.01 (PyTorch's default, as upstream), conv_post without bias, tanh."""

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

    def __call__(self, x: mx.array, g: mx.array, mask: mx.array | None = None) -> mx.array:
        """x [B, T, C], g [B, 1, gin] -> [B, T * prod(upsample_rates), 1].

        Rows of different lengths (mask [B, T, 1], x masked): every convolution's input is zero past
        its row's end, as the zero padding of the row alone, so each row's samples are what it alone
        gives (upstream's generator has no mask: it decodes one row)."""
        x = self.conv_pre(x) + self.cond(g)
        if mask is not None:
            x = x * mask
        n = self.num_kernels
        for i, up in enumerate(self.ups):
            x = up(nn.leaky_relu(x, LRELU_SLOPE))
            if mask is not None:
                mask = mx.repeat(mask, up.stride, axis=1)
                x = x * mask
            xs = self.resblocks[i * n](x, mask)
            for block in self.resblocks[i * n + 1:(i + 1) * n]:
                xs = xs + block(x, mask)
            x = xs / n
        return mx.tanh(self.conv_post(nn.leaky_relu(x, self.post_slope)))
