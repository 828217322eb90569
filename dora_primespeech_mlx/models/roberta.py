"""Chinese RoBERTa (chinese-roberta-wwm-ext-large, a BERT-large encoder) in MLX.

GPT-SoVITS takes `hidden_states[-3]` of `BertForMaskedLM`: with 24 layers that is the output of
encoder layer 21 (0-based; hidden_states[0] is the embedding output), so only the first 22 layers
run and the last two layers, the pooler and the MLM head are dropped at conversion. Embeddings:
word + absolute position + token type, LayerNorm (eps 1e-12); layers are post-norm with exact (erf)
GELU. Text is tokenised by the folder's own `tokenizer.json` through the `tokenizers` library.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import PrimeSpeechError
from .base import BaseModelArgs

logger = logging.getLogger(__name__)

KIND = "roberta"
TOKENIZER_FILE = "tokenizer.json"


@dataclasses.dataclass
class ModelArgs(BaseModelArgs):
    vocab_size: int = 21128
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    position_embedding_type: str = "absolute"
    # Which entry of Hugging Face's hidden_states the model returns (GPT-SoVITS: -3).
    output_hidden_state: int = -3

    def __post_init__(self):
        if self.hidden_act != "gelu" or self.position_embedding_type != "absolute":
            raise PrimeSpeechError(
                f"unsupported BERT config (hidden_act {self.hidden_act!r}, position embeddings "
                f"{self.position_embedding_type!r}): only exact-GELU BERT with absolute positions is supported"
            )
        if not 0 <= self.layers_run <= self.num_hidden_layers:
            raise PrimeSpeechError(f"output_hidden_state {self.output_hidden_state} is outside "
                                   f"the {self.num_hidden_layers + 1} hidden states")

    @property
    def layers_run(self) -> int:
        """Encoder layers needed to reach the chosen hidden state."""
        n = self.output_hidden_state
        return n if n >= 0 else self.num_hidden_layers + 1 + n


class Embeddings(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.word_embeddings = nn.Embedding(args.vocab_size, args.hidden_size)
        self.position_embeddings = nn.Embedding(args.max_position_embeddings, args.hidden_size)
        self.token_type_embeddings = nn.Embedding(args.type_vocab_size, args.hidden_size)
        self.LayerNorm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def __call__(self, input_ids: mx.array, token_type_ids: mx.array) -> mx.array:
        positions = self.position_embeddings.weight[: input_ids.shape[-1]]
        x = self.word_embeddings(input_ids) + positions + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dims = args.hidden_size
        self.num_heads = args.num_attention_heads
        self.scale = (dims // self.num_heads) ** -0.5
        self.query = nn.Linear(dims, dims)
        self.key = nn.Linear(dims, dims)
        self.value = nn.Linear(dims, dims)

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        """The context vectors [B, L, hidden] (heads side by side); `mask` is additive, [B, 1, 1, L]."""
        b, t, d = x.shape

        def heads(y: mx.array) -> mx.array:
            return y.reshape(b, t, self.num_heads, -1).transpose(0, 2, 1, 3)

        o = mx.fast.scaled_dot_product_attention(heads(self.query(x)), heads(self.key(x)), heads(self.value(x)),
                                                 scale=self.scale, mask=mask)
        return o.transpose(0, 2, 1, 3).reshape(b, t, d)


class DenseNorm(nn.Module):
    """dense -> add residual -> LayerNorm (BERT's `*Output` blocks)."""

    def __init__(self, in_dims: int, dims: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(in_dims, dims)
        self.LayerNorm = nn.LayerNorm(dims, eps=eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self = SelfAttention(args)
        self.output = DenseNorm(args.hidden_size, args.hidden_size, args.layer_norm_eps)

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.dense = nn.Linear(args.hidden_size, args.intermediate_size)

    def __call__(self, x: mx.array) -> mx.array:
        return nn.gelu(self.dense(x))


class Layer(nn.Module):
    """Post-norm transformer layer."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.intermediate = Intermediate(args)
        self.output = DenseNorm(args.intermediate_size, args.hidden_size, args.layer_norm_eps)

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        a = self.attention(x, mask)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.layer = [Layer(args) for _ in range(args.layers_run)]

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        """Embeddings [B, L, hidden] -> the chosen hidden state; `mask`: additive key mask [B, 1, 1, L]."""
        for layer in self.layer:
            x = layer(x, mask)
        return x


class Model(nn.Module):
    """token ids [B, L] -> hidden state `output_hidden_state` [B, L, hidden]."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embeddings = Embeddings(args)
        self.encoder = Encoder(args)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array | None = None,
                 token_type_ids: mx.array | None = None) -> mx.array:
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        if input_ids.shape[-1] > self.args.max_position_embeddings:
            raise PrimeSpeechError(f"text too long for BERT: {input_ids.shape[-1]} tokens, at most "
                                   f"{self.args.max_position_embeddings}; split the text into shorter segments")
        if token_type_ids is None:
            token_type_ids = mx.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        mask = None
        if attention_mask is not None:
            # Additive key-padding mask, as BERT's extended attention mask.
            keep = attention_mask.reshape(attention_mask.shape[0], 1, 1, -1).astype(mx.bool_)
            mask = mx.where(keep, 0.0, mx.finfo(x.dtype).min).astype(x.dtype)
        return self.encoder(x, mask)

    @staticmethod
    def sanitize(weights: dict[str, np.ndarray], args: ModelArgs) -> dict[str, np.ndarray]:
        """Hugging Face `BertForMaskedLM`/`BertModel` keys -> this model's (numpy in, numpy out).

        Strips the `bert.` prefix, renames old TF-style LayerNorm `gamma`/`beta`, and drops exactly
        what GPT-SoVITS never uses: the MLM head (`cls.*`), the pooler, the `position_ids` buffer and
        the encoder layers after the one whose output is taken.
        """
        out: dict[str, np.ndarray] = {}
        for key, value in weights.items():
            if key.startswith("cls.") or key.startswith("bert.pooler.") or key.startswith("pooler."):
                continue
            if key.startswith("bert."):
                key = key[len("bert."):]
            if key == "embeddings.position_ids":
                continue
            if key.startswith("encoder.layer."):
                index = int(key.split(".")[2])
                if args.layers_run <= index < args.num_hidden_layers:
                    continue  # a layer past the one whose output is taken (other indices stay: errors)
            if key.endswith("LayerNorm.gamma"):
                key = key[: -len("gamma")] + "weight"
            elif key.endswith("LayerNorm.beta"):
                key = key[: -len("beta")] + "bias"
            out[key] = value
        return out


def load_tokenizer(path: str | os.PathLike):
    """The folder's `tokenizer.json` as a `tokenizers.Tokenizer` (official or converted folder)."""
    from tokenizers import Tokenizer

    path = Path(path)
    if path.is_file():
        path = path.parent
    for candidate in (path / TOKENIZER_FILE, path.parent / TOKENIZER_FILE):
        if candidate.is_file():
            return Tokenizer.from_file(str(candidate))
    raise PrimeSpeechError(f"no {TOKENIZER_FILE} in {path}: give the chinese-roberta-wwm-ext-large folder "
                           "with its tokenizer.json")
