"""The VITS normalising flow (WaveNet coupling layers with channel flips), run in reverse."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .vits_conv import Conv1d


class WN(nn.Module):
    """Non-causal WaveNet: gated dilated convs conditioned on g, residual and skip outputs."""

    def __init__(self, hidden_channels: int, kernel_size: int, dilation_rate: int, n_layers: int,
                 gin_channels: int):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.cond_layer = Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1)
        self.in_layers = []
        self.res_skip_layers = []
        for i in range(n_layers):
            dilation = dilation_rate ** i
            self.in_layers.append(Conv1d(hidden_channels, 2 * hidden_channels, kernel_size,
                                         dilation=dilation, padding=dilation * (kernel_size - 1) // 2))
            out = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(Conv1d(hidden_channels, out, 1))

    def __call__(self, x: mx.array, g: mx.array, mask: mx.array | None = None) -> mx.array:
        """x [B, T, hidden] (masked), g [B, 1, gin]; mask [B, T, 1] for rows of different lengths."""
        h = self.hidden_channels
        cond = self.cond_layer(g)
        output = None
        for i, (in_layer, res_skip) in enumerate(zip(self.in_layers, self.res_skip_layers, strict=True)):
            a = in_layer(x) + cond[..., 2 * h * i:2 * h * (i + 1)]
            acts = mx.tanh(a[..., :h]) * mx.sigmoid(a[..., h:])
            rs = res_skip(acts)
            if i < self.n_layers - 1:
                x = x + rs[..., :h]
                if mask is not None:
                    x = x * mask
                skip = rs[..., h:]
            else:
                skip = rs
            output = skip if output is None else output + skip
        return output if mask is None else output * mask


class ResidualCouplingLayer(nn.Module):
    """Mean-only affine coupling: x1 <- x1 - post(WN(pre(x0), g))."""

    def __init__(self, channels: int, hidden_channels: int, kernel_size: int, dilation_rate: int,
                 n_layers: int, gin_channels: int):
        super().__init__()
        self.half = channels // 2
        self.pre = Conv1d(self.half, hidden_channels, 1)
        self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels)
        self.post = Conv1d(hidden_channels, self.half, 1)

    def reverse(self, x: mx.array, g: mx.array, mask: mx.array | None = None) -> mx.array:
        x0, x1 = x[..., :self.half], x[..., self.half:]
        if mask is None:
            return mx.concatenate([x0, x1 - self.post(self.enc(self.pre(x0), g))], axis=-1)
        m = self.post(self.enc(self.pre(x0) * mask, g, mask)) * mask
        return mx.concatenate([x0, (x1 - m) * mask], axis=-1)


class ResidualCouplingBlock(nn.Module):
    """Upstream alternates coupling layers and channel flips; `flows` holds the coupling layers."""

    def __init__(self, channels: int, hidden_channels: int, kernel_size: int = 5, dilation_rate: int = 1,
                 n_layers: int = 4, n_flows: int = 4, gin_channels: int = 512):
        super().__init__()
        self.flows = [ResidualCouplingLayer(channels, hidden_channels, kernel_size, dilation_rate, n_layers,
                                            gin_channels) for _ in range(n_flows)]

    def reverse(self, x: mx.array, g: mx.array, mask: mx.array | None = None) -> mx.array:
        """x [B, T, C], g [B, 1, gin]; mask [B, T, 1] for rows of different lengths."""
        for flow in reversed(self.flows):
            x = flow.reverse(x[..., ::-1], g, mask)
        return x
