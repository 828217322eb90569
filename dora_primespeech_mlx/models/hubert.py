"""CNHuBERT (chinese-hubert-base) in MLX: raw 16 kHz waveform -> last hidden state [T, 768].

GPT-SoVITS calls the Hugging Face `HubertModel` directly on the unnormalised waveform (it bypasses the
folder's feature extractor, so no zero-mean/unit-variance step) and uses `last_hidden_state`.
Architecture: a 7-layer strided conv feature encoder without conv bias (GroupNorm with one group per
channel after the first conv only, GELU after each), LayerNorm + linear feature projection, a
weight-normed grouped positional conv (kernel 128, padding 64, last frame dropped, GELU) added to the
input, LayerNorm, then 12 post-norm transformer layers. One frame per 320 samples (20 ms).

The official folder holds `config.json` and `pytorch_model.bin` (or `model.safetensors`) with Hugging
Face key names; `convert` turns it into MLX safetensors once (cached in `<folder>/mlx/`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
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

logger = logging.getLogger(__name__)

KIND = "hubert"
SAMPLE_RATE = 16000

# erf(y) ~ y P(y^2) / Q(y^2) on [-4, 4] (|erf| rounds to 1 in float32 beyond): our own least-squares
# rational fit, max error 4e-7 in float32 (MLX's own erf: 4.5e-7). Built from multiply/add/divide
# only, so a compiled kernel is several times faster on CPU than the primitive erf.
_ERF_P = (1.1283788451, 0.20002909523, 0.053973118522, 0.0041674864938, 0.00029204062283, 1.9498986028e-06)
_ERF_Q = (1.0, 0.51060108642, 0.11804471526, 0.01577179394, 0.0012566965953, 3.743163417e-05)
# GELU(x) = x (1/2 + erf(x / sqrt 2) / 2) = x (1/2 + c P'(c^2) / Q'(c^2)) with c = x clipped to
# +-4 sqrt 2 and the scalings folded into the coefficients.
_GELU_LIMIT = 4.0 * math.sqrt(2.0)
_GELU_P = tuple(p * 0.5**i * 0.5 / math.sqrt(2.0) for i, p in enumerate(_ERF_P))
_GELU_Q = tuple(q * 0.5**i for i, q in enumerate(_ERF_Q))


def _estrin5(z: mx.array, z2: mx.array, z4: mx.array, c: tuple[float, ...]) -> mx.array:
    # A degree-5 polynomial in z, evaluated as three independent pairs: a short dependency chain
    # keeps MLX's compiled CPU kernel in one piece (a long Horner chain is split into several
    # kernels with full-size intermediates between them).
    return (c[0] + c[1] * z) + z2 * (c[2] + c[3] * z) + z4 * (c[4] + c[5] * z)


def _gelu(x: mx.array) -> mx.array:
    # clip(x, -L, L) from two absolute values: MLX's compiled CPU kernels vectorise abs, but not
    # minimum/maximum/where (their NaN handling branches), which made the clip cost twice the rest.
    c = 0.5 * (mx.abs(x + _GELU_LIMIT) - mx.abs(x - _GELU_LIMIT))
    z = c * c
    z2 = z * z
    z4 = z2 * z2
    return x * (0.5 + c * _estrin5(z, z2, z4, _GELU_P) / _estrin5(z, z2, z4, _GELU_Q))


def _exp_nonpositive(x: mx.array) -> mx.array:
    # exp(x) for x <= 0 as 1 / (e^v)^16 with v = -x/16 >= 0, tracking e^v - 1 (Taylor, degree 7)
    # through the squarings so values near 1 keep full precision: absolute error < 2e-7, the scale
    # that matters for softmax weights (the Taylor error only shows where exp(x) < 1e-7). All terms
    # are positive, so a very negative x overflows the power to inf and gives exactly 0, with no
    # clamp: multiply/add and one divide only, which MLX's compiled CPU kernels run far faster
    # than its primitive exp (or a clamp).
    v = x * (-1.0 / 16.0)
    v2 = v * v
    v4 = v2 * v2
    q = v * ((1.0 + v * 0.5) + v2 * (1.0 / 6.0 + v * (1.0 / 24.0))
             + v4 * ((1.0 / 120.0 + v * (1.0 / 720.0)) + v2 * (1.0 / 5040.0)))
    for _ in range(4):
        q = q * (q + 2.0)
    return 1.0 / (q + 1.0)


_COMPILE_OK: list[bool] = []


def compile_available() -> bool:
    """Whether `mx.compile` works here (on Linux CPU it needs a C++ compiler at run time)."""
    if not _COMPILE_OK:
        try:
            mx.eval(mx.compile(lambda x: x * 2.0 + 1.0)(mx.zeros((4,))))
            _COMPILE_OK.append(True)
        except RuntimeError as exc:
            logger.warning("mx.compile is unavailable (%s): running uncompiled, which is slower "
                           "(on Linux install g++)", exc)
            _COMPILE_OK.append(False)
    return _COMPILE_OK[0]


class _Fused:
    """`fn` compiled with `mx.compile` where that works, plain otherwise.

    A compiled function keeps the stream it was traced on, so each stream gets its own."""

    def __init__(self, fn):
        self.fn = fn
        self.compiled: dict[str, Any] = {}
        self.__doc__ = fn.__doc__

    def __call__(self, *args):
        if not compile_available():
            return self.fn(*args)
        stream = str(mx.default_stream(mx.default_device()))
        if stream not in self.compiled:
            fn = self.fn
            self.compiled[stream] = mx.compile(lambda *a: fn(*a))  # a distinct function per stream
        return self.compiled[stream](*args)


MAX_LANES = 2
_LANES: dict[str, Any] = {"count": None, "extra": []}


def lane_count() -> int:
    """How many CPU streams (lanes) encoder work is split over: the usable cores, at most MAX_LANES
    (`set_lane_count` overrides it, e.g. 1 to keep an encoder on one core).

    MLX runs each CPU stream on its own thread but its element-wise kernels single-threaded, so with
    one stream only the matrix products can use a second core; independent pieces of the work on
    two streams keep both cores busy. Inside, OpenBLAS runs one thread per product (see
    `runtime.blas_threads`), so this does not depend on its thread setting: lanes that wait block
    instead of spinning, which keeps them cheap when another process holds a core."""
    if _LANES["count"] is not None:
        return _LANES["count"]
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_LANES, cores))


def set_lane_count(count: int | None) -> None:
    """Fix the number of CPU lanes (>= 1), or restore the automatic choice with None."""
    if count is not None and count < 1:
        raise ValueError(f"lane count must be at least 1, got {count}")
    _LANES["count"] = count


def lanes() -> list[mx.Stream]:
    """The streams to spread independent work over: the current stream first, then extra CPU streams;
    just the current stream off the CPU."""
    current = mx.default_stream(mx.default_device())
    if mx.default_device() != mx.cpu:
        return [current]
    count = lane_count()
    while len(_LANES["extra"]) < count - 1:
        _LANES["extra"].append(mx.new_stream(mx.cpu))
    return [current] + _LANES["extra"][: count - 1]


def split_range(n: int, parts: int) -> list[tuple[int, int]]:
    """[0, n) cut into `parts` contiguous, nearly equal, non-empty ranges (fewer when n < parts)."""
    parts = max(1, min(parts, n))
    edges = [n * i // parts for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


gelu = _Fused(_gelu)
"""Exact-erf GELU (as torch's default `F.gelu`)."""
exp_nonpositive = _Fused(_exp_nonpositive)
"""exp(x) for x <= 0, absolute error < 2e-7."""


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float) -> mx.array:
    """Softmax attention over [B, H, T, D] without a mask."""
    scores = (q * scale) @ k.swapaxes(-1, -2)
    # The row maximum is subtracted outside the compiled exp: a broadcast input would turn its
    # kernel into a slower strided one.
    weights = exp_nonpositive(scores - mx.max(scores, axis=-1, keepdims=True))
    # Normalise after the value product: a pass over [T, D] instead of [T, T].
    return (weights @ v) / mx.sum(weights, axis=-1, keepdims=True)


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
        if mx.default_device() == mx.gpu:
            o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:  # on CPU our compiled softmax attention is about twice as fast
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


class Model(nn.Module):
    """HuBERT as GPT-SoVITS uses it: waveform [B, N] (or [N]) at 16 kHz -> last hidden state [B, T, D]."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.feature_extractor = FeatureEncoder(args)
        self.feature_projection = FeatureProjection(args)
        self.encoder = Encoder(args)

    def __call__(self, wave: mx.array) -> mx.array:
        if wave.ndim == 1:
            wave = wave[None]
        if self.args.num_frames(wave.shape[-1]) < 1:
            raise PrimeSpeechError(f"audio too short for HuBERT: {wave.shape[-1]} samples")
        wave = wave.astype(self.feature_projection.projection.weight.dtype)
        streams = lanes()
        if len(streams) == 1:
            return self.encoder(self.feature_projection(self.feature_extractor(wave)))
        # Several CPU lanes: evaluated here, with one BLAS thread per lane.
        with blas_threads(1):
            out = self.encoder(self.feature_projection(self.feature_extractor(wave, streams)), streams)
            mx.eval(out)
        return out

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
