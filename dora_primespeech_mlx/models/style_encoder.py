"""MelStyleEncoder: the reference spectrogram -> one style vector `ge` (channels-last)."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from .vits_conv import Conv1d


class Conv1dGLU(nn.Module):
    """Conv (same padding) to 2C channels, gated `a * sigmoid(b)`, plus the residual."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.conv = Conv1d(channels, 2 * channels, kernel_size, padding=(kernel_size - 1) // 2)

    def __call__(self, x: mx.array) -> mx.array:
        a, b = mx.split(self.conv(x), 2, axis=-1)
        return x + a * mx.sigmoid(b)


class StyleAttention(nn.Module):
    """Multi-head self-attention with a residual; softmax temperature sqrt(d_model) as upstream
    (not sqrt(d_k))."""

    def __init__(self, n_heads: int, d_model: int):
        super().__init__()
        self.n_heads = n_heads
        self.temperature = math.sqrt(d_model)
        self.w_qs = nn.Linear(d_model, d_model)
        self.w_ks = nn.Linear(d_model, d_model)
        self.w_vs = nn.Linear(d_model, d_model)
        self.fc = nn.Linear(d_model, d_model)

    def __call__(self, x: mx.array) -> mx.array:
        b, t, d = x.shape

        def heads(y: mx.array) -> mx.array:
            return y.reshape(b, t, self.n_heads, d // self.n_heads).transpose(0, 2, 1, 3)

        q, k, v = heads(self.w_qs(x)), heads(self.w_ks(x)), heads(self.w_vs(x))
        p = mx.softmax((q @ k.transpose(0, 1, 3, 2)) / self.temperature, axis=-1, precise=True)
        out = (p @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
        return self.fc(out) + x


class MelStyleEncoder(nn.Module):
    """Linear+Mish x2, two gated convs, self-attention, projection, mean over time."""

    def __init__(self, in_dim: int, hidden_dim: int = 128, out_dim: int = 512, kernel_size: int = 5,
                 n_heads: int = 2):
        super().__init__()
        self.spectral1 = nn.Linear(in_dim, hidden_dim)
        self.spectral2 = nn.Linear(hidden_dim, hidden_dim)
        self.temporal = [Conv1dGLU(hidden_dim, kernel_size) for _ in range(2)]
        self.slf_attn = StyleAttention(n_heads, hidden_dim)
        self.fc = nn.Linear(hidden_dim, out_dim)

    def __call__(self, spec: mx.array) -> mx.array:
        """spec [B, frames, bins] -> [B, 1, out_dim]."""
        x = nn.mish(self.spectral2(nn.mish(self.spectral1(spec))))
        for block in self.temporal:
            x = block(x)
        x = self.fc(self.slf_attn(x))
        return mx.mean(x, axis=1, keepdims=True)
