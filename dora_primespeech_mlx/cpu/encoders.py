"""Native twins of the encoders' modules (CNHuBERT, Chinese RoBERTa) for the CPU.

`install(model)` swaps, in a loaded `models.hubert.Model`, the feature encoder and the transformer
encoder, and in a `models.roberta.Model` the encoder, for twins with the same call signatures that
run the library's kernels (cpu/native/encoders.c) on float32 NumPy buffers: the products on MLX's
BLAS (or on RoBERTa's weights packed once) split by output features over the worker pool, the
element-wise work, im2col copies, grouped positional conv and attention in C. The twins read the
MLX weights in place; where they re-lay a weight out, they keep only the new layout, so no weight
is held twice. Embeddings and HuBERT's feature projection stay in MLX.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from ..models import hubert, roberta
from ..runtime import blas_threads, usable_cores
from . import library
from .ops import (
    Scratch,
    host_view,
    native_add_layer_norm_,
    native_attention,
    native_conv_rows,
    native_gelu_,
    native_grouped_conv,
    native_linear,
    native_pair_conv,
    native_small_conv_gelu,
    native_windows,
)
from .panels import PackedLinear

MAX_THREADS = 2  # pool threads per call, as measured on the 2-core machine the twins were tuned on


def pool_threads() -> int:
    """Pool threads each kernel call asks for: the usable cores, at most MAX_THREADS."""
    return max(1, min(MAX_THREADS, len(usable_cores())))


def split_range(n: int, parts: int) -> list[tuple[int, int]]:
    """[0, n) cut into `parts` contiguous, nearly equal, non-empty ranges (fewer when n < parts)."""
    parts = max(1, min(parts, n))
    edges = [n * i // parts for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _float32(module: nn.Module) -> bool:
    return all(v.dtype == mx.float32 for _, v in tree_flatten(module.parameters()))


# ---- CNHuBERT ----

def _frames(x: mx.array, kernel: int, stride: int) -> mx.array:
    """[B, N, C] -> [B, T, kernel * C]: the input window of every output step of a strided conv."""
    b, n, c = x.shape
    t_out = (n - kernel) // stride + 1
    taps = min(kernel, stride)  # the first `stride` taps of every frame are a plain reshape
    parts = [x[:, : stride * t_out].reshape(b, t_out, stride * c)[..., : taps * c]]
    parts += [x[:, j: j + stride * (t_out - 1) + 1: stride] for j in range(taps, kernel)]
    return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=-1)


def _folded(layer: hubert.ConvLayer, frames: mx.array) -> tuple[mx.array, mx.array]:
    """(weight [K, D], shift [D]) such that `frames @ weight + shift` is the first conv followed by
    its GroupNorm (one group per channel, statistics over all of `frames` [1, T, K]).

    After a linear conv each channel's mean and variance over time follow from the mean and
    covariance of the input frames (w.mu, w^T C w), so the norm folds into the conv weights and the
    large [T, 512] output is written once, in independent pieces."""
    w = layer.conv.weight.reshape(layer.conv.weight.shape[0], -1).T  # [K, D]
    mean = mx.mean(frames[0], axis=0, keepdims=True)  # [1, K]
    centred = frames[0] - mean
    cov = centred.T @ centred / frames.shape[1]  # [K, K]
    var = mx.sum((cov @ w) * w, axis=0, keepdims=True)  # [1, D]
    norm = layer.layer_norm
    scale = norm.weight * mx.rsqrt(var + norm.eps)
    shift = norm.bias - (mean @ w) * scale  # a conv bias would cancel out here
    return w * scale, shift[0]


class HubertFeatureEncoder(nn.Module):
    """Twin of `hubert.FeatureEncoder`: waveform [B, N] -> features [B, T, C], each waveform on its
    own: the first layer (one input channel, norm folded) with its GELU, then each layer's frames
    (where windows overlap; kernel-3 stride-2 layers as pairs of outputs in five products instead
    of six) and its product with GELU, over pieces of `chunk` output frames."""

    def __init__(self, source: hubert.FeatureEncoder, chunk: int = 64):
        super().__init__()
        self.conv_layers = source.conv_layers  # the same parameters, read in place
        convs = [layer.conv for layer in self.conv_layers]
        # W0 + W2 of each kernel-3 stride-2 layer but the last (derived, for `native_pair_conv`)
        self.outer_sums = {str(i): c.weight[:, 0] + c.weight[:, 2] for i, c in enumerate(convs)
                           if 0 < i < len(convs) - 1 and (c.weight.shape[1], c.stride) == (3, 2)}
        mx.eval(self.outer_sums)
        self.zero_bias = np.zeros(max(c.weight.shape[0] for c in convs), np.float32)
        self.hop = int(np.prod([c.stride for c in convs[1:]]))
        self.span = 1 + sum((c.weight.shape[1] - 1) * int(np.prod([p.stride for p in convs[1:i]]))
                            for i, c in enumerate(convs) if i > 0)
        self.chunk = chunk
        self.scratch = Scratch()

    def __call__(self, wave: mx.array) -> mx.array:
        with self.scratch.lock, blas_threads(1):
            return mx.stack([mx.array(self._features(wave[i: i + 1], pool_threads())) for i in range(wave.shape[0])])

    def _features(self, wave: mx.array, threads: int) -> np.ndarray:
        first, scratch = self.conv_layers[0], self.scratch
        stride = first.conv.stride
        weight, shift = _folded(first, _frames(wave[..., None], first.conv.weight.shape[1], stride))
        mx.eval(weight, shift, wave)
        samples, weight, shift = (np.ascontiguousarray(np.array(a)) for a in (wave[0], weight, shift))
        layers = []
        for i, layer in enumerate(self.conv_layers[1:], start=1):
            w3 = layer.conv.weight
            bias = layer.conv.bias if "bias" in layer.conv else self.zero_bias[: w3.shape[0]]
            layers.append((w3.shape[1], layer.conv.stride, w3.reshape(w3.shape[0], -1), bias,
                           self.outer_sums.get(str(i)), w3))
        mx.eval([layer[2] for layer in layers])
        first_rows = (samples.shape[0] - first.conv.weight.shape[1]) // stride + 1
        n_out = (first_rows - self.span) // self.hop + 1
        out = scratch("features", n_out, layers[-1][2].shape[0])
        for j in range(0, n_out, self.chunk):
            stop = min(j + self.chunk, n_out)
            rows = self.hop * (stop - 1 - j) + self.span
            x = scratch("layer0", rows, weight.shape[-1])
            parts = split_range(rows, threads)
            native_small_conv_gelu([samples[stride * (self.hop * j + r0):] for r0, _ in parts],
                                   [r1 - r0 for r0, r1 in parts], stride, weight, shift,
                                   [x[r0:r1] for r0, r1 in parts])
            for i, (k, s, w, b, outer, w3) in enumerate(layers):
                c = x.shape[-1]
                rows = (rows - k) // s + 1
                if outer is not None:
                    y = scratch(f"layer{i % 2 + 1}", 2 * (-(-rows // 2)), w.shape[0])
                    x = native_pair_conv(x, w3, outer, b, y, scratch, threads=threads)[:rows]
                    continue
                if k > s:
                    frames = scratch("frames", rows, k * c)
                    parts = split_range(rows, threads)
                    native_windows([x.reshape(-1)[r0 * s * c:] for r0, _ in parts],
                                   [r1 - r0 for r0, r1 in parts], s * c, k * c,
                                   [frames[r0:r1] for r0, r1 in parts])
                else:
                    frames = np.ascontiguousarray(x[: s * rows].reshape(rows, s * c)[:, : k * c])
                last = i == len(layers) - 1
                target = out[j:stop] if last else scratch(f"layer{i % 2 + 1}", rows, w.shape[0])
                x = native_linear(frames, w, b, gelu=True, threads=threads, out=target)
        return out


def _hubert_layer(layer: hubert.EncoderLayer, x: np.ndarray, threads: int, scratch: Scratch,
                  out: np.ndarray) -> np.ndarray:
    """`layer` on one sequence x [T, D] into `out` (which may be x): each product split by output
    features, attention by time pieces (each piece's queries against all keys, head by head), GELU
    and the residual LayerNorms fused or in place."""
    attn, ffn = layer.attention, layer.feed_forward
    t, d = x.shape
    q, k, v = (native_linear(x, lin.weight, lin.bias, threads=threads, out=scratch(name, t, d))
               for name, lin in (("q", attn.q_proj), ("k", attn.k_proj), ("v", attn.v_proj)))
    context = scratch("context", t, d)
    pieces = split_range(t, threads)
    native_attention(*([a[r0:r1] for r0, r1 in pieces] for a in (q, k, v)), attn.num_heads, attn.scale,
                     outs=[context[r0:r1] for r0, r1 in pieces])
    h = native_linear(context, attn.out_proj.weight, attn.out_proj.bias, threads=threads, out=scratch("h", t, d))
    norm = layer.layer_norm
    native_add_layer_norm_([h], [x], [h], norm.weight, norm.bias, norm.eps)
    dense = ffn.intermediate_dense
    inner = native_linear(h, dense.weight, dense.bias, gelu=True, threads=threads,
                          out=scratch("inner", t, dense.weight.shape[0]))
    y = native_linear(inner, ffn.output_dense.weight, ffn.output_dense.bias, threads=threads, out=out)
    norm = layer.final_layer_norm
    native_add_layer_norm_([y], [h], [y], norm.weight, norm.bias, norm.eps)
    return y


class HubertEncoder(nn.Module):
    """Twin of `hubert.Encoder`: projected features [B, T, D] -> last hidden state, each sequence on
    its own: the grouped positional conv (weight re-laid out once; the MLX layout is released) with
    its GELU, the residual LayerNorm, then the layers."""

    def __init__(self, source: hubert.Encoder):
        super().__init__()
        conv = source.pos_conv_embed.conv
        groups, kernel = conv.groups, conv.weight.shape[1]
        # [groups, kernel, in / groups, out / groups], as the grouped conv kernel takes it (`x @ w`)
        self.pos_conv_weight = mx.contiguous(
            conv.weight.reshape(groups, -1, kernel, conv.weight.shape[-1]).transpose(0, 2, 3, 1))
        self.pos_conv_bias = conv.bias
        mx.eval(self.pos_conv_weight)
        self.padding = conv.padding
        self.layer_norm = source.layer_norm
        self.layers = source.layers
        self.scratch = Scratch()

    def __call__(self, x: mx.array) -> mx.array:
        mx.eval(x)
        with self.scratch.lock, blas_threads(1):
            return mx.stack([mx.array(self._hidden(x[i], pool_threads())) for i in range(x.shape[0])])

    def _hidden(self, x: mx.array, threads: int) -> np.ndarray:
        t, d = x.shape
        xp = self.scratch("padded", t + 2 * self.padding + native_conv_rows() - 1, d)
        xp[:] = 0.0
        xp[self.padding: self.padding + t] = np.array(x, copy=False)
        h = native_grouped_conv(xp, self.pos_conv_weight, self.pos_conv_bias, t, threads)
        mx.eval(h)
        native_gelu_([h])
        norm = self.layer_norm
        native_add_layer_norm_([h], [x], [h], norm.weight, norm.bias, norm.eps)
        y = host_view(h)
        for layer in self.layers:
            y = _hubert_layer(layer, y, threads, self.scratch, out=self.scratch("hidden", t, d))
        return y


def hubert_served(model: hubert.Model) -> bool:
    """Whether the kernels take this model: float32 weights, widths that are multiples of 16 and
    positional-conv groups of 16 to 48 channels (a multiple of 16)."""
    a = model.args
    group = a.hidden_size // a.num_conv_pos_embedding_groups
    return (_float32(model) and a.hidden_size % 16 == 0 and a.intermediate_size % 16 == 0
            and all(c % 16 == 0 for c in a.conv_dim) and group % 16 == 0 and group <= 48)


# ---- Chinese RoBERTa ----

class RobertaLayer(nn.Module):
    """A BERT layer on sequences stacked without padding, x [sum(lengths), hidden] float32: each
    product over all rows at once, split by output features (each thread reads only its share of
    the weights), attention within each sequence by query rows, GELU and the residual LayerNorms
    fused or in place. Products on weights packed once (`PackedLinear`: no per-call packing as in
    BLAS's sgemm); the MLX weights they were packed from are released."""

    PRODUCTS = ("query", "key", "value", "attention_dense", "intermediate", "output_dense")

    def __init__(self, source: roberta.Layer, lib):
        super().__init__()
        sa = source.attention.self
        self.num_heads, self.scale = sa.num_heads, sa.scale
        linears = (sa.query, sa.key, sa.value, source.attention.output.dense, source.intermediate.dense,
                   source.output.dense)
        for name, linear in zip(self.PRODUCTS, linears, strict=True):
            setattr(self, name, PackedLinear(lib, linear.weight, linear.bias))
        self.attention_norm = source.attention.output.LayerNorm
        self.output_norm = source.output.LayerNorm

    def packed_bytes(self) -> int:
        """Bytes of the packed weights and their biases."""
        return sum(p.panels.nbytes + (0 if p.bias is None else p.bias.nbytes)
                   for p in (getattr(self, name) for name in self.PRODUCTS))

    def __call__(self, x: np.ndarray, lengths: Sequence[int], threads: int) -> np.ndarray:
        q, k, v = (getattr(self, name)(x, threads) for name in ("query", "key", "value"))
        context = np.empty_like(q)
        start = 0
        for length in lengths:
            # query rows per thread, each against all keys of its sequence
            pieces = [(start + r0, start + r1) for r0, r1 in split_range(length, threads)]
            native_attention(*([a[r0:r1] for r0, r1 in pieces] for a in (q, k, v)), self.num_heads,
                             self.scale, outs=[context[r0:r1] for r0, r1 in pieces])
            start += length
        a = self.attention_dense(context, threads)
        norm = self.attention_norm
        native_add_layer_norm_([a], [x], [a], norm.weight, norm.bias, norm.eps)
        inner = self.intermediate(a, threads)
        native_gelu_([inner])
        y = self.output_dense(inner, threads)
        norm = self.output_norm
        native_add_layer_norm_([y], [a], [y], norm.weight, norm.bias, norm.eps)
        return y


class RobertaEncoder(nn.Module):
    """Twin of `roberta.Encoder` (x [B, L, hidden], additive key mask [B, 1, 1, L] or None): the
    tokens each row keeps, stacked without the padding, through `RobertaLayer`s; positions the mask
    drops come back as zeros (the pure-MLX encoder computes them, though nothing attends to them)."""

    def __init__(self, source: roberta.Encoder, lib):
        super().__init__()
        self.layer = [RobertaLayer(layer, lib) for layer in source.layer]

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        b, length, _ = x.shape
        hidden = np.array(x)
        keep = np.ones((b, length), bool)
        if mask is not None:
            if mask.size not in (length, b * length):
                raise ValueError(f"the CPU encoder takes key-padding masks [B, 1, 1, L], got {mask.shape}")
            keep = np.broadcast_to(np.array(mask).reshape(-1, length) == 0, (b, length))
        lengths = [int(n) for n in keep.sum(axis=1) if n > 0]
        out = np.zeros_like(hidden)
        if lengths:
            rows = np.ascontiguousarray(hidden[keep])
            with blas_threads(1):
                for layer in self.layer:
                    rows = layer(rows, lengths, pool_threads())
            out[keep] = rows
        return mx.array(out)


def roberta_served(model: roberta.Model) -> bool:
    """Whether the kernels take this model: float32 weights, widths that are multiples of 16."""
    a = model.args
    return _float32(model) and a.hidden_size % 16 == 0 and a.intermediate_size % 16 == 0


def release_freed_memory() -> None:
    """Hand the memory of replaced MLX weights back to the system: MLX keeps freed buffers in its
    cache and glibc its freed heap pages (RoBERTa: 1.1 GB), so the process would stay as large."""
    mx.clear_cache()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def install(model: nn.Module) -> bool:
    """Swap the modules of a loaded HuBERT or RoBERTa model that the kernels serve for their native
    twins (in place); True when it changed something. False for other models, other dtypes or
    widths, models already accelerated, or without the library (or a bound cblas_sgemm)."""
    if isinstance(model, hubert.Model):
        if not (isinstance(model.encoder, hubert.Encoder) and hubert_served(model) and library.sgemm_bound()):
            return False
        model.feature_extractor = HubertFeatureEncoder(model.feature_extractor)
        model.encoder = HubertEncoder(model.encoder)
        release_freed_memory()
        return True
    if isinstance(model, roberta.Model):
        if not (isinstance(model.encoder, roberta.Encoder) and roberta_served(model) and library.sgemm_bound()):
            return False
        model.encoder = RobertaEncoder(model.encoder, library.load())
        release_freed_memory()
        return True
    return False
