"""CNHuBERT (chinese-hubert-base) in MLX: raw 16 kHz waveform -> last hidden state [T, 768].

GPT-SoVITS calls the Hugging Face `HubertModel` directly on the unnormalised waveform (it bypasses the
folder's feature extractor, so no zero-mean/unit-variance step) and uses `last_hidden_state`.
Architecture: a 7-layer strided conv feature encoder without conv bias (GroupNorm with one group per
channel after the first conv only, GELU after each), LayerNorm + linear feature projection, a
weight-normed grouped positional conv (kernel 128, padding 64, last frame dropped, GELU) added to the
input, LayerNorm, then 12 post-norm transformer layers. One frame per 320 samples (20 ms).

The official folder holds `config.json` and `pytorch_model.bin` (or `model.safetensors`) with Hugging
Face key names; `convert` turns it into MLX safetensors once (cached in `<folder>/mlx/`).

On the CPU (float32) the forward pass runs through the native kernels of `native_ops.py` where they are
built (`Model.native_ready`): the same maths with the products on MLX's BLAS and the element-wise
work, im2col copies, grouped positional conv and attention in C, spread over the cores. Elsewhere,
or without the library, it runs in MLX (`over_lanes` on a multi-core CPU).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..convert import CONFIG_FILE, converted_model_folder, load_converted, save_converted
from ..errors import PrimeSpeechError
from ..runtime import blas_threads
from .base import BaseModelArgs, load_weights_strict
from .kernels import (
    attention,
    gelu,
    lane_count,
    lanes,
    split_range,
)
from .native_ops import (
    DerivedWeights,
    Scratch,
    host_view,
    native_add_layer_norm_,
    native_attention,
    native_attention_available,
    native_conv_rows,
    native_gelu_,
    native_grouped_conv,
    native_linear,
    native_pair_conv,
    native_small_conv_gelu,
    native_windows,
)

logger = logging.getLogger(__name__)

KIND = "hubert"
SAMPLE_RATE = 16000

@dataclasses.dataclass
class ModelArgs(BaseModelArgs):
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: list[int] = dataclasses.field(default_factory=lambda: [512] * 7)
    conv_kernel: list[int] = dataclasses.field(default_factory=lambda: [10, 3, 3, 3, 3, 2, 2])
    conv_stride: list[int] = dataclasses.field(default_factory=lambda: [5, 2, 2, 2, 2, 2, 2])
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    feat_proj_layer_norm: bool = True
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    conv_pos_batch_norm: bool = False
    do_stable_layer_norm: bool = False
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        unsupported = []
        if self.feat_extract_norm != "group":
            unsupported.append(f"feat_extract_norm={self.feat_extract_norm!r}")
        if self.do_stable_layer_norm:
            unsupported.append("do_stable_layer_norm=true")
        if self.conv_pos_batch_norm:
            unsupported.append("conv_pos_batch_norm=true")
        if self.hidden_act != "gelu" or self.feat_extract_activation != "gelu":
            unsupported.append(f"activations {self.hidden_act!r}/{self.feat_extract_activation!r}")
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride)):
            unsupported.append("conv_dim/conv_kernel/conv_stride of different lengths")
        if unsupported:
            raise PrimeSpeechError(
                f"unsupported HuBERT config ({', '.join(unsupported)}): only the chinese-hubert-base "
                "layout GPT-SoVITS ships (group-norm feature encoder, post-norm encoder, GELU) is supported"
            )

    def num_frames(self, num_samples: int) -> int:
        """Frames the feature encoder produces for `num_samples` input samples."""
        n = num_samples
        for k, s in zip(self.conv_kernel, self.conv_stride, strict=True):
            n = (n - k) // s + 1
        return max(n, 0)


class StridedConv(nn.Module):
    """Conv1d without padding, channels-last, computed as frames @ weight (one BLAS call).

    weight is MLX's conv layout [out, kernel, in]; frames are built in the same (kernel, in) order.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int, bias: bool):
        super().__init__()
        scale = 1.0 / np.sqrt(in_dim * kernel)
        self.weight = mx.random.uniform(-scale, scale, (out_dim, kernel, in_dim))
        if bias:
            self.bias = mx.zeros((out_dim,))
        self.kernel = kernel
        self.stride = stride
        self.outer_sum = DerivedWeights(lambda w: w[:, 0] + w[:, 2])  # W0 + W2 (an attribute, not a parameter)

    def frames(self, x: mx.array) -> mx.array:
        """[B, N, C] -> [B, T, kernel * C]: the input window of every output step."""
        k, s = self.kernel, self.stride
        b, n, c = x.shape
        t_out = (n - k) // s + 1
        # The first s taps of every frame are a plain reshape of the input; only the rest are copied.
        taps = min(k, s)
        parts = [x[:, : s * t_out].reshape(b, t_out, s * c)[..., : taps * c]]
        parts += [x[:, j: j + s * (t_out - 1) + 1: s] for j in range(taps, k)]
        return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=-1)

    def matrix(self) -> mx.array:
        """The weight as [kernel * in, out], matching `frames`."""
        return self.weight.reshape(self.weight.shape[0], -1).T

    def native_weights(self) -> tuple[mx.array, mx.array, mx.array | None]:
        """(weight [out, kernel * in], bias [out], W0 + W2 [out, in] for `native_ops.native_pair_conv`
        when kernel 3 and stride 2, else None) for the native kernels."""
        bias = self.bias if "bias" in self else mx.zeros((self.weight.shape[0],), dtype=self.weight.dtype)
        outer = self.outer_sum(self.weight) if (self.kernel, self.stride) == (3, 2) else None
        return self.weight.reshape(self.weight.shape[0], -1), bias, outer

    def __call__(self, x: mx.array) -> mx.array:
        frames = self.frames(x)
        if "bias" in self:
            return mx.addmm(self.bias, frames, self.matrix())
        return frames @ self.matrix()


class ChannelNorm(nn.Module):
    """GroupNorm with one group per channel (each channel normalised over time); holds the affine."""

    def __init__(self, dims: int):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.bias = mx.zeros((dims,))


class ConvLayer(nn.Module):
    def __init__(self, args: ModelArgs, i: int):
        super().__init__()
        in_dim = args.conv_dim[i - 1] if i > 0 else 1
        self.conv = StridedConv(in_dim, args.conv_dim[i], args.conv_kernel[i], args.conv_stride[i],
                                args.conv_bias)
        if i == 0:
            self.layer_norm = ChannelNorm(args.conv_dim[i])

    def __call__(self, x: mx.array) -> mx.array:
        return gelu(self.conv(x))

    def folded(self, frames: mx.array) -> tuple[mx.array, mx.array]:
        """(weight [B, K, D], shift [B, 1, D]) such that `frames @ weight + shift` is this conv
        followed by its GroupNorm (one group per channel, statistics over all of `frames`).

        After a linear conv, each channel's mean and variance over time follow from the mean and
        covariance of the input frames (w.mu, w^T C w), so the norm folds into the conv weights and
        the large [T, 512] output is written once, and later in independent pieces."""
        dtype = frames.dtype
        frames = frames.astype(mx.float32)  # statistics in float32 whatever the model's dtype
        w = self.conv.matrix().astype(mx.float32)  # [K, D]
        mean = mx.mean(frames, axis=1, keepdims=True)  # [B, 1, K]
        centred = frames - mean
        cov = centred.swapaxes(1, 2) @ centred / frames.shape[1]  # [B, K, K]
        var = mx.sum((cov @ w) * w, axis=1, keepdims=True)  # [B, 1, D]
        scale = self.layer_norm.weight.astype(mx.float32) * mx.rsqrt(var + 1e-5)  # torch GroupNorm eps
        shift = self.layer_norm.bias - (mean @ w) * scale  # a conv bias would cancel out here
        return (w[None] * scale).astype(dtype), shift.astype(dtype)


class FeatureEncoder(nn.Module):
    """The strided conv stack. Once the first layer's GroupNorm is folded into its weights every
    output frame depends on a fixed window of input, so long inputs run in pieces of `chunk` output
    frames with identical results: intermediates stay a few MiB, where on Linux CPU every array of
    tens of MiB is freshly mapped and page-faulted in (about half the cost of a GELU over it)."""

    def __init__(self, args: ModelArgs, chunk: int = 32):
        super().__init__()
        self.conv_layers = [ConvLayer(args, i) for i in range(len(args.conv_dim))]
        self.chunk = chunk
        # Hop and receptive field of one output frame, in frames of the first layer's output.
        self.hop = int(np.prod(args.conv_stride[1:]))
        self.span = 1 + sum((k - 1) * int(np.prod(args.conv_stride[1:i]))
                            for i, k in enumerate(args.conv_kernel) if i > 0)

    def __call__(self, wave: mx.array, streams: list[mx.Stream] | None = None) -> mx.array:
        """Waveform [B, N] -> features [B, T, C]; pieces alternate over `streams` (default: current)."""
        streams = streams or [mx.default_stream(mx.default_device())]
        first, rest = self.conv_layers[0], self.conv_layers[1:]
        frames = first.conv.frames(wave[..., None])  # [B, T0, K0]
        weight, shift = first.folded(frames)
        n_out = (frames.shape[1] - self.span) // self.hop + 1
        pieces = []
        for i, j in enumerate(range(0, n_out, self.chunk)):
            stop = min(j + self.chunk, n_out)
            with mx.stream(streams[i % len(streams)]):  # independent pieces: alternate over lanes
                x = gelu(frames[:, self.hop * j: self.hop * (stop - 1) + self.span] @ weight + shift)
                for layer in rest:
                    x = layer(x)
            pieces.append(x)
        return pieces[0] if len(pieces) == 1 else mx.concatenate(pieces, axis=1)

    def native(self, wave: mx.array, threads: int, scratch: Scratch, chunk: int = 64) -> np.ndarray:
        """`__call__` for one waveform [1, N] by the native kernels on `threads` threads, as float32
        [T, C] (a `scratch` buffer): the first layer (one input channel, norm folded) with its GELU,
        then each layer's frames (where windows overlap) and its product with GELU, over pieces of
        `chunk` frames."""
        first = self.conv_layers[0]
        weight, shift = first.folded(first.conv.frames(wave[..., None]))
        layers = [(layer.conv.kernel, layer.conv.stride, *layer.conv.native_weights(), layer.conv.weight)
                  for layer in self.conv_layers[1:]]
        mx.eval(weight, shift, wave, layers)
        samples, weight, shift = np.array(wave[0]), np.array(weight[0]), np.array(shift[0, 0])
        stride = first.conv.stride
        n_out = (self.first_frames(wave.shape[-1]) - self.span) // self.hop + 1
        out = scratch("features", n_out, layers[-1][2].shape[0])
        for j in range(0, n_out, chunk):
            stop = min(j + chunk, n_out)
            rows = self.hop * (stop - 1 - j) + self.span
            x = scratch("layer0", rows, weight.shape[-1])
            parts = split_range(rows, threads)
            native_small_conv_gelu([samples[stride * (self.hop * j + r0):] for r0, _ in parts],
                                   [r1 - r0 for r0, r1 in parts], stride, weight, shift,
                                   [x[r0:r1] for r0, r1 in parts])
            for i, (k, s, w, b, outer, w3) in enumerate(layers):
                c = x.shape[-1]
                rows = (rows - k) // s + 1
                last = i == len(layers) - 1
                if outer is not None and not last:
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
                target = out[j:stop] if last else scratch(f"layer{i % 2 + 1}", rows, w.shape[0])
                x = native_linear(frames, w, b, gelu=True, threads=threads, out=target)
        return out

    def first_frames(self, num_samples: int) -> int:
        """Output frames of the first layer for `num_samples` samples."""
        first = self.conv_layers[0].conv
        return (num_samples - first.kernel) // first.stride + 1


class FeatureProjection(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        if args.feat_proj_layer_norm:
            self.layer_norm = nn.LayerNorm(args.conv_dim[-1], eps=args.layer_norm_eps)
        self.projection = nn.Linear(args.conv_dim[-1], args.hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        if "layer_norm" in self:
            x = self.layer_norm(x)
        return self.projection(x)


class GroupedConv(nn.Module):
    """Grouped 'same' conv (odd output trimmed by the caller), channels-last, weight [out, kernel, in/groups]."""

    def __init__(self, dims: int, kernel: int, groups: int):
        super().__init__()
        scale = 1.0 / np.sqrt(dims // groups * kernel)
        self.weight = mx.random.uniform(-scale, scale, (dims, kernel, dims // groups))
        self.bias = mx.zeros((dims,))
        self.groups = groups
        self.padding = kernel // 2
        # [groups, kernel, in/groups, out/groups] for the native kernel (an attribute, not a parameter)
        self.kernel_layout = DerivedWeights(
            lambda w: mx.contiguous(w.reshape(groups, -1, kernel, w.shape[-1]).transpose(0, 2, 3, 1)))

    def native(self, x: mx.array, threads: int) -> mx.array:
        """Output frames [0, T) of the evaluated x [B, T, D] (without the bias-free trim: the last
        frame of an even kernel is never computed), by the native kernel on `threads` threads."""
        b, t, _ = x.shape
        rows = native_conv_rows()
        xp = mx.pad(x, [(0, 0), (self.padding, self.padding + rows - 1), (0, 0)])
        mx.eval(xp)
        weight = self.kernel_layout(self.weight)
        out = [native_grouped_conv(xp[i], weight, self.bias, t, threads) for i in range(b)]
        return mx.stack(out)

    def __call__(self, x: mx.array, start: int = 0, stop: int | None = None) -> mx.array:
        """Output frames [start, stop) (default: all T + 2 * padding - kernel + 1)."""
        # One batched [groups] matmul per tap: several times faster on CPU than MLX's grouped conv1d.
        b, t, d = x.shape
        g, k = self.groups, self.weight.shape[1]
        c_in, c_out = d // g, self.weight.shape[0] // g
        stop = t + 2 * self.padding - k + 1 if stop is None else stop
        t_out = stop - start
        xp = mx.pad(x, [(0, 0), (self.padding, self.padding), (0, 0)])[:, start: stop + k - 1]
        xp = mx.contiguous(xp.reshape(b, -1, g, c_in).transpose(0, 2, 1, 3))  # [B, G, t_out + k - 1, C]
        w = self.weight.reshape(g, c_out, k, c_in).transpose(2, 0, 3, 1)  # [k, G, C_in, C_out]
        out = xp[:, :, :t_out] @ w[0]
        for j in range(1, k):
            out = out + xp[:, :, j: j + t_out] @ w[j]
        return out.transpose(0, 2, 1, 3).reshape(b, t_out, g * c_out) + self.bias


class PositionalConvEmbedding(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.conv = GroupedConv(args.hidden_size, args.num_conv_pos_embeddings,
                                args.num_conv_pos_embedding_groups)

    def __call__(self, x: mx.array, start: int = 0, stop: int | None = None) -> mx.array:
        """Frames [start, stop) (default: all T) of the embedding; the conv's extra last frame
        (even kernel) is never computed."""
        return gelu(self.conv(x, start, x.shape[1] if stop is None else stop))

    def native(self, x: mx.array, threads: int) -> mx.array:
        """The embedding of the evaluated x [B, T, D] by the native kernels (evaluated, fresh)."""
        out = self.conv.native(x, threads)
        mx.eval(out)
        native_gelu_([out])
        return out


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dims = args.hidden_size
        self.num_heads = args.num_attention_heads
        self.scale = (dims // self.num_heads) ** -0.5
        self.q_proj = nn.Linear(dims, dims)
        self.k_proj = nn.Linear(dims, dims)
        self.v_proj = nn.Linear(dims, dims)
        self.out_proj = nn.Linear(dims, dims)

    def _heads(self, y: mx.array) -> mx.array:
        b, t, d = y.shape
        return y.reshape(b, t, self.num_heads, d // self.num_heads).transpose(0, 2, 1, 3)

    def _output(self, q: mx.array, k: mx.array, v: mx.array) -> mx.array:
        o = attention(q, k, v, self.scale)
        b, h, t, dh = o.shape
        return self.out_proj(o.transpose(0, 2, 1, 3).reshape(b, t, h * dh))

    def __call__(self, x: mx.array) -> mx.array:
        return self._output(self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x)))

    def over_lanes(self, parts: list[mx.array], streams: list[mx.Stream]) -> list[mx.array]:
        """Attention of a sequence held as consecutive time pieces, piece i on stream i: each lane
        projects its own frames, then attends from them to the keys and values of all pieces."""
        projected = []
        for x, stream in zip(parts, streams, strict=True):
            with mx.stream(stream):
                projected.append((self._heads(self.q_proj(x)), self._heads(self.k_proj(x)),
                                  self._heads(self.v_proj(x))))
        out = []
        for (q, _, _), stream in zip(projected, streams, strict=True):
            with mx.stream(stream):
                k = mx.concatenate([p[1] for p in projected], axis=2)
                v = mx.concatenate([p[2] for p in projected], axis=2)
                out.append(self._output(q, k, v))
        return out


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.intermediate_dense = nn.Linear(args.hidden_size, args.intermediate_size)
        self.output_dense = nn.Linear(args.intermediate_size, args.hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        return self.output_dense(gelu(self.intermediate_dense(x)))


class EncoderLayer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.layer_norm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.feed_forward = FeedForward(args)
        self.final_layer_norm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def _rest(self, x: mx.array, attended: mx.array) -> mx.array:
        x = self.layer_norm(x + attended)
        return self.final_layer_norm(x + self.feed_forward(x))

    def __call__(self, x: mx.array) -> mx.array:
        return self._rest(x, self.attention(x))

    def over_lanes(self, parts: list[mx.array], streams: list[mx.Stream]) -> list[mx.array]:
        """The layer on a sequence held as consecutive time pieces, piece i computed on stream i."""
        attended = self.attention.over_lanes(parts, streams)
        out = []
        for x, a, stream in zip(parts, attended, streams, strict=True):
            with mx.stream(stream):
                out.append(self._rest(x, a))
        return out

    def native(self, x: np.ndarray, threads: int, scratch: Scratch, out: np.ndarray) -> np.ndarray:
        """The layer on one sequence x [T, D] (float32) by the native kernels on `threads` threads,
        into `out` (which may be x): each product split by output features, attention by time
        pieces (each piece's queries against all keys, head by head), GELU and the residual
        LayerNorms fused or in place."""
        attn, ffn = self.attention, self.feed_forward
        t, d = x.shape
        q, k, v = (native_linear(x, lin.weight, lin.bias, threads=threads, out=scratch(name, t, d))
                   for name, lin in (("q", attn.q_proj), ("k", attn.k_proj), ("v", attn.v_proj)))
        context = scratch("context", t, d)
        pieces = split_range(t, threads)
        native_attention(*([a[r0:r1] for r0, r1 in pieces] for a in (q, k, v)), attn.num_heads, attn.scale,
                         outs=[context[r0:r1] for r0, r1 in pieces])
        h = native_linear(context, attn.out_proj.weight, attn.out_proj.bias, threads=threads,
                          out=scratch("h", t, d))
        norm = self.layer_norm
        native_add_layer_norm_([h], [x], [h], norm.weight, norm.bias, norm.eps)
        dense = ffn.intermediate_dense
        inner = native_linear(h, dense.weight, dense.bias, gelu=True, threads=threads,
                              out=scratch("inner", t, dense.weight.shape[0]))
        y = native_linear(inner, ffn.output_dense.weight, ffn.output_dense.bias, threads=threads, out=out)
        native_add_layer_norm_([y], [h], [y], self.final_layer_norm.weight, self.final_layer_norm.bias,
                               self.final_layer_norm.eps)
        return y


class Encoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.pos_conv_embed = PositionalConvEmbedding(args)
        self.layer_norm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.layers = [EncoderLayer(args) for _ in range(args.num_hidden_layers)]

    def __call__(self, x: mx.array, streams: list[mx.Stream] | None = None) -> mx.array:
        """Features [B, T, D] -> last hidden state; time pieces spread over `streams` (default: current)."""
        streams = streams or [mx.default_stream(mx.default_device())]
        ranges = split_range(x.shape[1], len(streams))
        if len(ranges) == 1:
            x = self.layer_norm(x + self.pos_conv_embed(x))
            for layer in self.layers:
                x = layer(x)
            return x
        # Consecutive time pieces, one per lane; only attention joins them (keys and values).
        streams = streams[: len(ranges)]
        parts = []
        for (start, stop), stream in zip(ranges, streams, strict=True):
            with mx.stream(stream):
                parts.append(self.layer_norm(x[:, start:stop] + self.pos_conv_embed(x, start, stop)))
        for layer in self.layers:
            parts = layer.over_lanes(parts, streams)
        return mx.concatenate(parts, axis=1)

    def native(self, x: mx.array, threads: int, scratch: Scratch) -> np.ndarray:
        """`__call__` for one evaluated sequence x [1, T, D] by the native kernels on `threads`
        threads, as float32 [T, D] (a `scratch` buffer)."""
        h = self.pos_conv_embed.native(x, threads)
        norm = self.layer_norm
        native_add_layer_norm_([h], [x], [h], norm.weight, norm.bias, norm.eps)
        y = host_view(h)[0]
        for layer in self.layers:
            y = layer.native(y, threads, scratch, out=scratch("hidden", *y.shape))
        return y


class Model(nn.Module):
    """HuBERT as GPT-SoVITS uses it: waveform [B, N] (or [N]) at 16 kHz -> last hidden state [B, T, D]."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.feature_extractor = FeatureEncoder(args)
        self.feature_projection = FeatureProjection(args)
        self.encoder = Encoder(args)
        self.scratch = Scratch()  # work buffers of the native CPU path (an attribute, not a parameter)

    def __call__(self, wave: mx.array) -> mx.array:
        if wave.ndim == 1:
            wave = wave[None]
        if self.args.num_frames(wave.shape[-1]) < 1:
            raise PrimeSpeechError(f"audio too short for HuBERT: {wave.shape[-1]} samples")
        wave = wave.astype(self.feature_projection.projection.weight.dtype)
        if self.native_ready():
            # CPU: each waveform through the native kernels, one thread per lane, one BLAS thread each.
            threads = lane_count()
            out = []
            with self.scratch.lock, blas_threads(1):
                for i in range(wave.shape[0]):
                    feats = self.feature_extractor.native(wave[i: i + 1], threads, self.scratch)
                    x = self.feature_projection(mx.array(feats)[None])
                    mx.eval(x)
                    out.append(mx.array(self.encoder.native(x, threads, self.scratch)))
            return mx.stack(out)
        streams = lanes()
        if len(streams) == 1:
            return self.encoder(self.feature_projection(self.feature_extractor(wave)))
        # Several CPU lanes: evaluated here, with one BLAS thread per lane.
        with blas_threads(1):
            out = self.encoder(self.feature_projection(self.feature_extractor(wave, streams)), streams)
            mx.eval(out)
        return out

    def native_ready(self) -> bool:
        """Whether the native CPU kernels serve this model (native_ops.native_attention_available): built and
        enabled, on the CPU, float32, and widths they take (multiples of 16; positional-conv groups
        of at most 48 channels), and the global cblas_sgemm bound. Each waveform of a batch then
        runs on its own."""
        a = self.args
        group = a.hidden_size // a.num_conv_pos_embedding_groups
        return (native_attention_available() and self.feature_projection.projection.weight.dtype == mx.float32
                and a.hidden_size % 16 == 0 and group % 16 == 0 and group <= 48)

    @staticmethod
    def sanitize(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Hugging Face `HubertModel` keys and layouts -> this model's (numpy in, numpy out).

        Drops `masked_spec_embed` (training-time masking), fuses the positional conv's weight norm
        (old `weight_g`/`weight_v` or new `parametrizations.weight.original0/1`, norm over all dims but
        the kernel axis, as `weight_norm(dim=2)`), and moves conv weights to MLX's [out, kernel, in].
        """
        out: dict[str, np.ndarray] = {}
        norm_parts: dict[str, dict[str, np.ndarray]] = {}
        for key, value in weights.items():
            if key.startswith("hubert."):
                key = key[len("hubert."):]
            if key == "masked_spec_embed":
                continue
            for suffix, part in ((".weight_g", "g"), (".weight_v", "v"),
                                 (".parametrizations.weight.original0", "g"),
                                 (".parametrizations.weight.original1", "v")):
                if key.endswith(suffix):
                    norm_parts.setdefault(key[: -len(suffix)], {})[part] = value
                    break
            else:
                out[key] = value
        for prefix, parts in norm_parts.items():
            if set(parts) != {"g", "v"}:
                raise PrimeSpeechError(f"weight-normed {prefix} lacks its {'g' if 'v' in parts else 'v'} "
                                       "tensor: the HuBERT checkpoint is incomplete; download it again")
            g = parts["g"].astype(np.float32)
            v = parts["v"].astype(np.float32)
            axes = tuple(i for i in range(v.ndim) if g.shape[i] == 1)
            out[prefix + ".weight"] = v * (g / np.sqrt(np.sum(v * v, axis=axes, keepdims=True)))
        for key, value in list(out.items()):
            if key.endswith("conv.weight") and value.ndim == 3:
                out[key] = np.ascontiguousarray(np.moveaxis(value, 1, 2))
        return out


def read_hf_config(folder: Path) -> dict[str, Any]:
    """A Hugging Face model folder's config.json."""
    try:
        return json.loads((folder / CONFIG_FILE).read_text())
    except FileNotFoundError as exc:
        raise PrimeSpeechError(f"{folder} has no config.json: give the Hugging Face model folder "
                               "(chinese-hubert-base or chinese-roberta-wwm-ext-large)") from exc


def read_hf_weights(folder: Path) -> dict[str, np.ndarray]:
    """The weights of a Hugging Face model folder: pytorch_model.bin or model.safetensors."""
    from ..checkpoint import read_checkpoint

    if (folder / "pytorch_model.bin").is_file():
        data = read_checkpoint(folder / "pytorch_model.bin")
        if not isinstance(data, dict):
            raise PrimeSpeechError(f"{folder / 'pytorch_model.bin'} is not a state dict")
        return dict(data)
    if (folder / "model.safetensors").is_file():
        from safetensors.numpy import load_file

        return load_file(str(folder / "model.safetensors"))
    raise PrimeSpeechError(f"{folder} holds neither pytorch_model.bin nor model.safetensors: "
                           "download the model folder again")


def check_against_model(model: nn.Module, weights: dict[str, Any], what: str) -> None:
    """Raise PrimeSpeechError unless `weights` cover exactly the model's parameters with equal shapes."""
    from mlx.utils import tree_flatten

    expected = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != got:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise PrimeSpeechError(
            f"{what} weights do not match the model (missing {missing[:3]}, unexpected {extra[:3]}, "
            f"wrong shape {[(k, got[k], expected[k]) for k in wrong[:2]]}): not a supported checkpoint"
        )


def storage_dtype(value: np.ndarray) -> np.ndarray:
    """Converted storage: exact source values (fp16 stays fp16); derived tensors stay float32."""
    return value if value.dtype in (np.float16, np.float32) else value.astype(np.float32)


def _convert_folder(source: Path, out: Path) -> None:
    config = read_hf_config(source)
    args = ModelArgs.from_dict(config)
    weights = {k: storage_dtype(v) for k, v in Model.sanitize(read_hf_weights(source)).items()}
    check_against_model(Model(args), weights, f"HuBERT ({source})")
    save_converted(out, weights, {"model_type": "hubert", **args.to_dict()}, kind=KIND, source=source)


def convert(source: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Convert the official chinese-hubert-base folder (cached; skipped when unchanged). Returns the folder."""
    return converted_model_folder(source, KIND, _convert_folder, out_dir)


def load_model(path: str | os.PathLike, dtype: mx.Dtype = mx.float32) -> Model:
    """Load HuBERT from the official folder (converted once, cached) or from a converted folder."""
    folder = converted_model_folder(path, KIND, _convert_folder)
    weights, config = load_converted(folder)
    model = Model(ModelArgs.from_dict(config))
    weights = {k: v.astype(dtype) for k, v in weights.items()}
    load_weights_strict(model, weights, f"HuBERT ({folder})")
    model.eval()
    mx.eval(model.parameters())
    return model
