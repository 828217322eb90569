"""VITS transformer pieces (channels-last): windowed relative-position self-attention encoder,
plain multi-head attention (used by MRTE), convolutional FFN and channel LayerNorm.

Masks are upstream's, channels-last ([B, T, 1], 1 on a row's valid frames, 0 on its padding), for
rows of different lengths decoded together; None for a single unpadded row, whose masks are all ones.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from .vits_conv import Conv1d


class ChannelNorm(nn.Module):
    """LayerNorm over channels with parameters named `gamma`/`beta` as upstream (eps 1e-5)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.gamma = mx.ones((channels,))
        self.beta = mx.zeros((channels,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.layer_norm(x, self.gamma, self.beta, self.eps)


def _relative_index(length: int, window: int) -> tuple[mx.array, mx.array]:
    """For each (query i, key j): the relative-embedding row j - i + window (clipped), and whether
    |j - i| <= window (outside the window the padded embedding is zero)."""
    pos = mx.arange(length)
    offset = pos[None, :] - pos[:, None]
    inside = mx.abs(offset) <= window
    return mx.clip(offset + window, 0, 2 * window), inside


def attention_key_mask(mask: mx.array) -> mx.array:
    """A frame mask [B, T, 1] as the boolean key mask [B, 1, 1, T] that `MultiHeadAttention` takes."""
    return (mask[..., 0] > 0)[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """VITS attention with 1x1 conv projections; optional shared relative-position embeddings
    (window `window_size`) for self-attention."""

    def __init__(self, channels: int, out_channels: int, n_heads: int, window_size: int | None = None):
        super().__init__()
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window_size = window_size
        self.conv_q = Conv1d(channels, channels, 1)
        self.conv_k = Conv1d(channels, channels, 1)
        self.conv_v = Conv1d(channels, channels, 1)
        self.conv_o = Conv1d(channels, out_channels, 1)
        if window_size is not None:
            self.emb_rel_k = mx.zeros((1, 2 * window_size + 1, self.k_channels))
            self.emb_rel_v = mx.zeros((1, 2 * window_size + 1, self.k_channels))

    def _heads(self, x: mx.array) -> mx.array:
        b, t, _ = x.shape
        return x.reshape(b, t, self.n_heads, self.k_channels).transpose(0, 2, 1, 3)

    def __call__(self, x: mx.array, c: mx.array, key_mask: mx.array | None = None) -> mx.array:
        """x [B, Tq, C] attends over c [B, Tk, C]; key_mask [B, 1, 1, Tk] (bool) hides padded keys
        (upstream fills their scores with -1e4, after the relative-position term)."""
        b, t_q, _ = x.shape
        q = self._heads(self.conv_q(x)) / math.sqrt(self.k_channels)
        k = self._heads(self.conv_k(c))
        v = self._heads(self.conv_v(c))
        scores = q @ k.transpose(0, 1, 3, 2)
        if self.window_size is not None:
            index, inside = _relative_index(t_q, self.window_size)
            rel = q @ self.emb_rel_k[0].T  # [B, H, T, 2w+1]: q_i . E_k[r]
            scores = scores + mx.where(inside, mx.take_along_axis(rel, mx.broadcast_to(
                index, rel.shape[:2] + index.shape), axis=-1), 0.0)
        if key_mask is not None:
            scores = mx.where(key_mask, scores, mx.array(-1e4, scores.dtype))
        p = mx.softmax(scores, axis=-1, precise=True)
        out = p @ v
        if self.window_size is not None:
            out = out + self._relative_values(p) @ self.emb_rel_v[0]
        out = out.transpose(0, 2, 1, 3).reshape(b, t_q, -1)
        return self.conv_o(out)

    def _relative_values(self, p: mx.array) -> mx.array:
        """p [B, H, T, T] regrouped by offset: out[..., i, r] = p[..., i, i + r - w] (0 outside)."""
        w = self.window_size
        t = p.shape[-1]
        padded = mx.pad(p, [(0, 0), (0, 0), (0, 0), (w, w)])
        rows = mx.arange(t)[:, None] + mx.arange(2 * w + 1)[None, :]  # column i + r in the padded rows
        return mx.take_along_axis(padded, mx.broadcast_to(rows, p.shape[:2] + rows.shape), axis=-1)


class FFN(nn.Module):
    """conv(k) -> relu -> conv(k), 'same' padding."""

    def __init__(self, channels: int, filter_channels: int, kernel_size: int):
        super().__init__()
        pad = (kernel_size - 1) // 2
        self.conv_1 = Conv1d(channels, filter_channels, kernel_size, padding=pad)
        self.conv_2 = Conv1d(filter_channels, channels, kernel_size, padding=pad)

    def __call__(self, x: mx.array, mask: mx.array | None = None) -> mx.array:
        if mask is None:
            return self.conv_2(nn.relu(self.conv_1(x)))
        return self.conv_2(nn.relu(self.conv_1(x * mask)) * mask) * mask


class Encoder(nn.Module):
    """Post-norm transformer encoder with relative-position attention (window 4)."""

    def __init__(self, hidden_channels: int, filter_channels: int, n_heads: int, n_layers: int,
                 kernel_size: int, window_size: int = 4):
        super().__init__()
        self.attn_layers = [MultiHeadAttention(hidden_channels, hidden_channels, n_heads, window_size)
                            for _ in range(n_layers)]
        self.norm_layers_1 = [ChannelNorm(hidden_channels) for _ in range(n_layers)]
        self.ffn_layers = [FFN(hidden_channels, filter_channels, kernel_size) for _ in range(n_layers)]
        self.norm_layers_2 = [ChannelNorm(hidden_channels) for _ in range(n_layers)]

    def __call__(self, x: mx.array, mask: mx.array | None = None) -> mx.array:
        """x [B, T, C]; mask [B, T, 1] or None (see the module docstring)."""
        key_mask = None
        if mask is not None:
            key_mask = attention_key_mask(mask)
            x = x * mask
        for attn, norm1, ffn, norm2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers,
                                           self.norm_layers_2, strict=True):
            x = norm1(x + attn(x, x, key_mask))
            x = norm2(x + ffn(x, mask))
        return x if mask is None else x * mask
