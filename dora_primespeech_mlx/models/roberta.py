"""Chinese RoBERTa (chinese-roberta-wwm-ext-large, a BERT-large encoder) in MLX.

GPT-SoVITS takes `hidden_states[-3]` of `BertForMaskedLM`: with 24 layers that is the output of
encoder layer 21 (0-based; hidden_states[0] is the embedding output), so only the first 22 layers
run and the last two layers, the pooler and the MLM head are dropped at conversion. Embeddings:
word + absolute position + token type, LayerNorm (eps 1e-12); layers are post-norm with exact (erf)
GELU. Text is tokenised by the folder's own `tokenizer.json` through the `tokenizers` library.
On the CPU (float32; right-padded batches stacked without their padding) the layers run through the
native kernels of `native_ops.py`, with the products on weights packed once (`panel_ops.py`), where
they are built (`Model.native_lengths`); in MLX otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..convert import converted_model_folder, load_converted, save_converted
from ..errors import PrimeSpeechError
from ..runtime import blas_threads
from .base import BaseModelArgs, load_weights_strict
from .hubert import (
    check_against_model,
    read_hf_config,
    read_hf_weights,
    storage_dtype,
)
from .kernels import (
    attention,
    gelu,
    lane_count,
    lanes,
    split_range,
)
from .native_ops import (
    native_add_layer_norm_,
    native_attention,
    native_attention_available,
    native_gelu_,
    native_linear,
)
from .panel_ops import PackedLinear, panel_library

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

    def heads(self, x: mx.array, mask: mx.array | None, first: int, last: int) -> mx.array:
        """The context vectors of heads [first, last): [B, L, (last - first) * head_dim]."""
        b, t, d = x.shape
        dh = d // self.num_heads
        cols = slice(first * dh, last * dh)

        def project(linear: nn.Linear) -> mx.array:
            y = mx.addmm(linear.bias[cols], x, linear.weight[cols].T)
            return y.reshape(b, t, last - first, dh).transpose(0, 2, 1, 3)

        o = attention(project(self.query), project(self.key), project(self.value), self.scale, mask)
        return o.transpose(0, 2, 1, 3).reshape(b, t, (last - first) * dh)

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        return self.heads(x, mask, 0, self.num_heads)


class DenseNorm(nn.Module):
    """dense -> add residual -> LayerNorm (BERT's `*Output` blocks)."""

    def __init__(self, in_dims: int, dims: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(in_dims, dims)
        self.LayerNorm = nn.LayerNorm(dims, eps=eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)

    def over_lanes(self, x: mx.array, residual: mx.array, streams: list[mx.Stream]) -> mx.array:
        """The block with the dense product split by output features over `streams` (each lane reads
        its rows of the weight, a contiguous slice)."""
        pieces = []
        for (first, last), stream in zip(split_range(self.dense.weight.shape[0], len(streams)), streams,
                                         strict=False):
            with mx.stream(stream):
                pieces.append(mx.addmm(self.dense.bias[first:last], x, self.dense.weight[first:last].T))
        return self.LayerNorm(mx.concatenate(pieces, axis=-1) + residual)


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

    def __call__(self, x: mx.array, first: int = 0, last: int | None = None) -> mx.array:
        """GELU(dense(x)) for output features [first, last) (default: all)."""
        if first == 0 and last is None:
            return gelu(self.dense(x))
        return gelu(mx.addmm(self.dense.bias[first:last], x, self.dense.weight[first:last].T))


class Layer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.intermediate = Intermediate(args)
        self.output = DenseNorm(args.intermediate_size, args.hidden_size, args.layer_norm_eps)

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        a = self.attention(x, mask)
        return self.output(self.intermediate(a), a)

    def over_lanes(self, x: mx.array, mask: mx.array | None, streams: list[mx.Stream]) -> mx.array:
        """The layer with every product split by output features over `streams`: each lane takes a
        share of the heads, then of each dense layer's outputs, so it reads only its share of the
        weights; the pieces are joined where a full row is needed (output products, LayerNorm)."""
        sa = self.attention.self
        pieces = []
        for (first, last), stream in zip(split_range(sa.num_heads, len(streams)), streams, strict=False):
            with mx.stream(stream):
                pieces.append(sa.heads(x, mask, first, last))
        a = self.attention.output.over_lanes(mx.concatenate(pieces, axis=-1), x, streams)
        pieces = []
        for (first, last), stream in zip(split_range(self.intermediate.dense.weight.shape[0], len(streams)),
                                         streams, strict=False):
            with mx.stream(stream):
                pieces.append(self.intermediate(a, first, last))
        return self.output.over_lanes(mx.concatenate(pieces, axis=-1), a, streams)

    def _packed(self, linears) -> list[PackedLinear] | None:
        """The layer's products with packed weights (panel_ops), built on first use and rebuilt when a
        weight array is replaced; None without the panel kernels."""
        lib = panel_library()
        if lib is None:
            return None
        cached = getattr(self, "_panels", None)
        if cached is None or any(src is not lin.weight for src, lin in zip(cached[0], linears, strict=True)):
            cached = ([lin.weight for lin in linears], [PackedLinear(lib, lin.weight, lin.bias) for lin in linears])
            self._panels = cached
        return cached[1]

    def native(self, x: np.ndarray, threads: int, lengths: Sequence[int] | None = None) -> np.ndarray:
        """The layer by the native kernels on sequences stacked without padding, x [sum(lengths),
        hidden] float32 (`lengths` None: one sequence): each product over all rows at once, split by
        output features over `threads` threads (each reads only its share of the weights), attention
        within each sequence by query rows, GELU and the residual LayerNorms fused or in place."""
        sa, out, ffn_out = self.attention.self, self.attention.output, self.output
        linears = (sa.query, sa.key, sa.value, out.dense, self.intermediate.dense, ffn_out.dense)
        packed = self._packed(linears)

        def product(i: int, t: np.ndarray, gelu: bool = False) -> np.ndarray:
            """linears[i](t), GELU after it where asked: on the packed weights where there are some (no
            per-call packing as in BLAS's sgemm), else through BLAS."""
            if packed is None:
                return native_linear(t, linears[i].weight, linears[i].bias, gelu=gelu, threads=threads)
            y = packed[i](t, threads)
            if gelu:
                native_gelu_([y])
            return y

        q, k, v = (product(i, x) for i in range(3))
        context = np.empty_like(q)
        start = 0
        for length in lengths or [x.shape[0]]:
            # query rows per thread, each against all keys of its sequence
            pieces = [(start + r0, start + r1) for r0, r1 in split_range(length, threads)]
            native_attention(*([a[r0:r1] for r0, r1 in pieces] for a in (q, k, v)), sa.num_heads, sa.scale,
                             outs=[context[r0:r1] for r0, r1 in pieces])
            start += length
        a = product(3, context)
        native_add_layer_norm_([a], [x], [a], out.LayerNorm.weight, out.LayerNorm.bias, out.LayerNorm.eps)
        y = product(5, product(4, a, gelu=True))
        norm = ffn_out.LayerNorm
        native_add_layer_norm_([y], [a], [y], norm.weight, norm.bias, norm.eps)
        return y


class Encoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.layer = [Layer(args) for _ in range(args.layers_run)]

    def __call__(self, x: mx.array, mask: mx.array | None, streams: list[mx.Stream] | None = None) -> mx.array:
        for layer in self.layer:
            x = layer(x, mask) if not streams or len(streams) == 1 else layer.over_lanes(x, mask, streams)
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
        lengths = self.native_lengths(x.shape[0], x.shape[1], attention_mask)
        if lengths is not None:
            # The sequences stacked without their padding through the native kernels, products over
            # all of them at once and split over the cores; padded positions come back as zeros.
            hidden = np.array(x.astype(mx.float32))
            rows = np.ascontiguousarray(np.concatenate([h[:n] for h, n in zip(hidden, lengths, strict=True)]))
            threads = lane_count()
            with blas_threads(1):
                for layer in self.encoder.layer:
                    rows = layer.native(rows, threads, lengths)
            out = np.zeros_like(hidden)
            start = 0
            for i, n in enumerate(lengths):
                out[i, :n] = rows[start:start + n]
                start += n
            return mx.array(out)
        mask = None
        if attention_mask is not None:
            # Additive key-padding mask, as BERT's extended attention mask.
            keep = attention_mask.reshape(attention_mask.shape[0], 1, 1, -1).astype(mx.bool_)
            mask = mx.where(keep, 0.0, mx.finfo(x.dtype).min).astype(x.dtype)
        streams = lanes()
        if len(streams) == 1:
            return self.encoder(x, mask)
        # Several CPU lanes: evaluated here, with one BLAS thread per lane.
        with blas_threads(1):
            out = self.encoder(x, mask, streams)
            mx.eval(out)
        return out

    def native_lengths(self, batch: int, width: int, attention_mask: mx.array | None) -> list[int] | None:
        """Each sequence's token count when the native CPU kernels serve this call, else None. They
        do when built and enabled (native_ops.native_attention_available), on the CPU, with float32
        weights and widths that are multiples of 16, and when every mask row keeps a prefix of its
        tokens (right padding: the padded positions' outputs are then zeros, not MLX's values)."""
        a = self.args
        if not (native_attention_available() and self.embeddings.LayerNorm.weight.dtype == mx.float32
                and a.hidden_size % 16 == 0 and a.intermediate_size % 16 == 0):
            return None
        if attention_mask is None:
            return [width] * batch
        keep = np.array(attention_mask).reshape(batch, width) != 0
        lengths = keep.sum(axis=1)
        if (lengths == 0).any() or any(not keep[i, :n].all() for i, n in enumerate(lengths)):
            return None
        return [int(n) for n in lengths]

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


def _convert_folder(source: Path, out: Path) -> None:
    config = read_hf_config(source)
    args = ModelArgs.from_dict(config)
    weights = {k: storage_dtype(v) for k, v in Model.sanitize(read_hf_weights(source), args).items()}
    check_against_model(Model(args), weights, f"BERT ({source})")
    save_converted(out, weights, {"model_type": "bert", **args.to_dict()}, kind=KIND, source=source)
    if (source / TOKENIZER_FILE).is_file():
        shutil.copy(source / TOKENIZER_FILE, out / TOKENIZER_FILE)


def convert(source: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Convert the official chinese-roberta-wwm-ext-large folder (cached; skipped when unchanged)."""
    return converted_model_folder(source, KIND, _convert_folder, out_dir)


def load_model(path: str | os.PathLike, dtype: mx.Dtype = mx.float32) -> Model:
    """Load the BERT encoder from the official folder (converted once, cached) or a converted folder."""
    folder = converted_model_folder(path, KIND, _convert_folder)
    weights, config = load_converted(folder)
    model = Model(ModelArgs.from_dict(config))
    load_weights_strict(model, {k: v.astype(dtype) for k, v in weights.items()}, f"BERT ({folder})")
    model.eval()
    mx.eval(model.parameters())
    return model
