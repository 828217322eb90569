"""CNHuBERT (chinese-hubert-base) in MLX: raw 16 kHz waveform -> last hidden state [T, 768].

GPT-SoVITS calls the Hugging Face `HubertModel` directly on the unnormalised waveform (it bypasses the
folder's feature extractor, so no zero-mean/unit-variance step) and uses `last_hidden_state`.
Architecture: a 7-layer strided conv feature encoder without conv bias (GroupNorm with one group per
channel after the first conv only, GELU after each), LayerNorm + linear feature projection, a
weight-normed grouped positional conv (kernel 128, padding 64, last frame dropped, GELU) added to the
input, LayerNorm, then 12 post-norm transformer layers. One frame per 320 samples (20 ms).

The official folder holds `config.json` and `pytorch_model.bin` (or `model.safetensors`) with Hugging
Face key names; `loading` converts it to MLX safetensors once (cached in `<folder>/mlx/`).
"""

from __future__ import annotations

import dataclasses
import logging

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import PrimeSpeechError
from .base import BaseModelArgs

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


class ConvLayer(nn.Module):
    """Conv1d without padding, then (first layer only) GroupNorm with one group per channel, then GELU."""

    def __init__(self, args: ModelArgs, i: int):
        super().__init__()
        in_dim = args.conv_dim[i - 1] if i > 0 else 1
        self.conv = nn.Conv1d(in_dim, args.conv_dim[i], args.conv_kernel[i], stride=args.conv_stride[i],
                              bias=args.conv_bias)
        if i == 0:
            # one group per channel (normalised over time), where MLX's grouping equals PyTorch's
            self.layer_norm = nn.GroupNorm(args.conv_dim[i], args.conv_dim[i])

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv(x)
        if "layer_norm" in self:
            x = self.layer_norm(x)
        return nn.gelu(x)


class FeatureEncoder(nn.Module):
    """The strided conv stack: waveform [B, N] -> features [B, T, C]."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.conv_layers = [ConvLayer(args, i) for i in range(len(args.conv_dim))]

    def __call__(self, wave: mx.array) -> mx.array:
        x = wave[..., None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


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


class PositionalConvEmbedding(nn.Module):
    """GELU of a grouped 'same' conv; an even kernel's extra last frame is dropped (upstream's SamePadLayer)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        kernel = args.num_conv_pos_embeddings
        self.conv = nn.Conv1d(args.hidden_size, args.hidden_size, kernel, padding=kernel // 2,
                              groups=args.num_conv_pos_embedding_groups)

    def __call__(self, x: mx.array) -> mx.array:
        return nn.gelu(self.conv(x)[:, : x.shape[1]])


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

    def __call__(self, x: mx.array) -> mx.array:
        b, t, d = x.shape

        def heads(y: mx.array) -> mx.array:
            return y.reshape(b, t, self.num_heads, -1).transpose(0, 2, 1, 3)

        o = mx.fast.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)),
                                                 heads(self.v_proj(x)), scale=self.scale)
        return self.out_proj(o.transpose(0, 2, 1, 3).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.intermediate_dense = nn.Linear(args.hidden_size, args.intermediate_size)
        self.output_dense = nn.Linear(args.intermediate_size, args.hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        return self.output_dense(nn.gelu(self.intermediate_dense(x)))


class EncoderLayer(nn.Module):
    """Post-norm transformer layer."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.layer_norm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.feed_forward = FeedForward(args)
        self.final_layer_norm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.pos_conv_embed = PositionalConvEmbedding(args)
        self.layer_norm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.layers = [EncoderLayer(args) for _ in range(args.num_hidden_layers)]

    def __call__(self, x: mx.array) -> mx.array:
        """Projected features [B, T, D] -> last hidden state [B, T, D]."""
        x = self.layer_norm(x + self.pos_conv_embed(x))
        for layer in self.layers:
            x = layer(x)
        return x


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
        return self.encoder(self.feature_projection(self.feature_extractor(wave)))

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
