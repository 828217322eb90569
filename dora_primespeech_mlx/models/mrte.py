"""MRTE (multi-reference timbre encoder): the SSL content attends over the text, plus the
reference embedding (channels-last)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .vits_attention import MultiHeadAttention, attention_key_mask
from .vits_conv import Conv1d


class MRTE(nn.Module):
    """`c_post(cross_attention(c_pre(ssl), text_pre(text)) + c_pre(ssl) + ge)`."""

    def __init__(self, content_channels: int = 192, hidden_size: int = 512, out_channels: int = 192,
                 n_heads: int = 4):
        super().__init__()
        self.cross_attention = MultiHeadAttention(hidden_size, hidden_size, n_heads)
        self.c_pre = Conv1d(content_channels, hidden_size, 1)
        self.text_pre = Conv1d(content_channels, hidden_size, 1)
        self.c_post = Conv1d(hidden_size, out_channels, 1)

    def __call__(self, ssl: mx.array, text: mx.array, ge: mx.array, ssl_mask: mx.array | None = None,
                 text_mask: mx.array | None = None) -> mx.array:
        """ssl [B, T, C], text [B, Tp, C], ge [B, 1, hidden]; the masks [B, T, 1] and [B, Tp, 1] for rows
        of different lengths (both or neither)."""
        if ssl_mask is None:
            ssl_enc = self.c_pre(ssl)
            return self.c_post(self.cross_attention(ssl_enc, self.text_pre(text)) + ssl_enc + ge)
        ssl_enc = self.c_pre(ssl * ssl_mask)
        text_enc = self.text_pre(text * text_mask)
        key_mask = attention_key_mask(text_mask)
        x = self.cross_attention(ssl_enc * ssl_mask, text_enc * text_mask, key_mask) + ssl_enc + ge
        return self.c_post(x * ssl_mask)
