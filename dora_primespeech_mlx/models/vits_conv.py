"""PyTorch-style 1-D convolutions for the SoVITS model, channels-last ([B, T, C]), weights in MLX's
layout ([C_out, K, C_in]).

Both compute exactly what PyTorch's layers do, in shapes that MLX runs fast on every device: MLX's
dilated and transposed convolutions have no fast CPU path (seconds for one vocoder layer), so a
dilated convolution runs as undilated ones on the interleaved phases of its input (as TensorFlow's
atrous convolution does), and a transposed convolution as a convolution producing blocks of
`stride` output rows.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


class Conv1d(nn.Module):
    """PyTorch's Conv1d on channels-last input [B, T, C_in] -> [B, T_out, C_out]."""

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

    def __call__(self, x: mx.array) -> mx.array:
        w = self.weight
        if self.kernel_size == 1 and self.stride == 1 and self.padding == 0:
            y = x @ w[:, 0].T
        elif self.dilation > 1 and self.stride == 1 and self.padding % self.dilation == 0:
            y = _dilated(x, w, self.dilation, self.padding // self.dilation)
        else:
            y = mx.conv1d(x, w, stride=self.stride, padding=self.padding, dilation=self.dilation)
        return y + self.bias if "bias" in self else y


def _dilated(x: mx.array, w: mx.array, dilation: int, padding: int) -> mx.array:
    """Convolution of x [B, T, C] with dilation d and padding d * p: output row q * d + r reads input
    rows (q + j - p) * d + r, an undilated convolution (padding p) of phase r of the input."""
    b, t, c = x.shape
    d = dilation
    n = -(-t // d)
    phases = mx.pad(x, [(0, 0), (0, n * d - t), (0, 0)]).reshape(b, n, d, c).transpose(0, 2, 1, 3)
    y = mx.conv1d(phases.reshape(b * d, n, c), w, padding=padding)
    t_out = y.shape[1]
    y = y.reshape(b, d, t_out, -1).transpose(0, 2, 1, 3).reshape(b, t_out * d, -1)
    return y[:, :t + 2 * padding * d - d * (w.shape[1] - 1)]


class ConvTranspose1d(nn.Module):
    """PyTorch's ConvTranspose1d on channels-last input; weight [C_out, K, C_in] (MLX's layout).

    Output length (T - 1) * stride - 2 * padding + K. Output row q * stride + r of the full result
    gets x[q - a] @ tap a * stride + r for a < G = ceil(K / stride): one convolution of x with G
    (reversed) taps and 'full' padding G - 1, whose stride * C_out outputs are the rows of a block.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = mx.zeros((out_channels, kernel_size, in_channels))
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding

    def __call__(self, x: mx.array) -> mx.array:
        cout, k, cin = self.weight.shape
        s = self.stride
        groups = -(-k // s)
        w = mx.pad(self.weight, [(0, 0), (0, groups * s - k), (0, 0)]).reshape(cout, groups, s, cin)
        w = w[:, ::-1].transpose(2, 0, 1, 3).reshape(s * cout, groups, cin)  # outputs ordered (r, channel)
        b, t, _ = x.shape
        full = mx.conv1d(x, w, padding=groups - 1).reshape(b, (t + groups - 1) * s, cout)
        y = full[:, self.padding:self.padding + (t - 1) * s + k - 2 * self.padding]
        return y + self.bias if "bias" in self else y
