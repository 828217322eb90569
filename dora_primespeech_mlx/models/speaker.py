"""ERes2NetV2 speaker verification (3D-Speaker) in MLX: Kaldi fbank [B, T, 80] -> embedding [B, 20480].

GPT-SoVITS v2Pro/v2ProPlus condition the voice on `ERes2NetV2(baseWidth=24, scale=4, expansion=4)`'s
`forward3`: the fused layer-3/layer-4 feature map [B, C, F/8, T/8] flattened over (channel, frequency)
and averaged over time, not the 192-wide pooled embedding; the pooling head (`seg_1`) is therefore
unused and dropped at conversion. Inside the residual blocks the activation is upstream's `ReLU`, a
Hardtanh clipping at 20; the stem uses a plain ReLU. BatchNorms run in eval mode on their running
statistics. Tensors are channels-last: the spectrogram is an image [B, F, T, 1].

The official weights are a plain state dict (`pretrained_eres2netv2w24s4ep4.ckpt`); `loading` converts
it to MLX safetensors once (cached beside it as `<name>.mlx/`).
"""

from __future__ import annotations

import dataclasses
import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import PrimeSpeechError
from .base import BaseModelArgs

KIND = "speaker"
SAMPLE_RATE = 16000
RELU_CAP = 20.0  # upstream's block ReLU is Hardtanh(0, 20)


@dataclasses.dataclass
class ModelArgs(BaseModelArgs):
    num_blocks: list[int] = dataclasses.field(default_factory=lambda: [3, 4, 6, 3])
    m_channels: int = 64
    feat_dim: int = 80
    base_width: int = 24
    scale: int = 4
    expansion: int = 4

    def __post_init__(self):
        if len(self.num_blocks) != 4 or self.feat_dim % 8:
            raise PrimeSpeechError(
                f"unsupported ERes2NetV2 config (num_blocks={self.num_blocks}, feat_dim={self.feat_dim}): "
                "four stages and a feature size divisible by 8 are needed"
            )

    @property
    def embedding_dim(self) -> int:
        """Width of `forward3`'s output: channels of the last stage x frequency bins left."""
        return self.m_channels * 8 * self.expansion * (self.feat_dim // 8)


def _capped_relu(x: mx.array) -> mx.array:
    return mx.clip(x, 0.0, RELU_CAP)


class AFF(nn.Module):
    """Attentional feature fusion: a learned per-element mix of `x` and `y` (weights 1 +- tanh)."""

    def __init__(self, channels: int, r: int = 4):
        super().__init__()
        inter = channels // r
        # indices as upstream's nn.Sequential (2 is the SiLU)
        self.local_att = [nn.Conv2d(channels * 2, inter, 1), nn.BatchNorm(inter), nn.SiLU(),
                          nn.Conv2d(inter, channels, 1), nn.BatchNorm(channels)]

    def __call__(self, x: mx.array, y: mx.array) -> mx.array:
        a = mx.concatenate([x, y], axis=-1)
        for layer in self.local_att:
            a = layer(a)
        a = 1.0 + mx.tanh(a)
        return x * a + y * (2.0 - a)


class Block(nn.Module):
    """`BasicBlockERes2NetV2` (fuse=False: sums between the scale groups) or its AFF variant (fuse=True)."""

    def __init__(self, in_planes: int, planes: int, stride: int, args: ModelArgs, fuse: bool):
        super().__init__()
        width = int(math.floor(planes * (args.base_width / 64.0)))
        out_planes = planes * args.expansion
        self.width = width
        self.conv1 = nn.Conv2d(in_planes, width * args.scale, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm(width * args.scale)
        self.convs = [nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(args.scale)]
        self.bns = [nn.BatchNorm(width) for _ in range(args.scale)]
        if fuse:
            self.fuse_models = [AFF(width, r=4) for _ in range(args.scale - 1)]
        self.conv3 = nn.Conv2d(width * args.scale, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm(out_planes)
        if stride != 1 or in_planes != out_planes:
            self.shortcut = [nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                             nn.BatchNorm(out_planes)]

    def __call__(self, x: mx.array) -> mx.array:
        out = _capped_relu(self.bn1(self.conv1(x)))
        spx = mx.split(out, len(self.convs), axis=-1)
        outs = []
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            if i == 0:
                sp = spx[0]
            elif "fuse_models" in self:
                sp = self.fuse_models[i - 1](sp, spx[i])
            else:
                sp = sp + spx[i]
            sp = _capped_relu(bn(conv(sp)))
            outs.append(sp)
        out = self.bn3(self.conv3(mx.concatenate(outs, axis=-1)))
        residual = x
        if "shortcut" in self:
            residual = self.shortcut[1](self.shortcut[0](x))
        return _capped_relu(out + residual)


class Model(nn.Module):
    """ERes2NetV2 as GPT-SoVITS uses it: fbank [B, T, feat_dim] (or [T, feat_dim]) -> [B, embedding_dim]."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        m = args.m_channels
        self.conv1 = nn.Conv2d(1, m, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm(m)
        in_planes = m
        for stage, (blocks, mult, stride) in enumerate(zip(args.num_blocks, (1, 2, 4, 8), (1, 2, 2, 2),
                                                           strict=True), start=1):
            layer = []
            for j in range(blocks):
                layer.append(Block(in_planes, m * mult, stride if j == 0 else 1, args, fuse=stage >= 3))
                in_planes = m * mult * args.expansion
            setattr(self, f"layer{stage}", layer)
        self.layer3_ds = nn.Conv2d(m * 4 * args.expansion, m * 8 * args.expansion, 3, stride=2, padding=1,
                                   bias=False)
        self.fuse34 = AFF(m * 8 * args.expansion, r=4)

    def __call__(self, feats: mx.array) -> mx.array:
        """upstream's `forward3`: the embedding GPT-SoVITS feeds its `sv_emb` layer."""
        if feats.ndim == 2:
            feats = feats[None]
        if feats.shape[-1] != self.args.feat_dim:
            raise PrimeSpeechError(f"speaker model wants {self.args.feat_dim} fbank bins, got {feats.shape[-1]}")
        x = feats.astype(self.conv1.weight.dtype).transpose(0, 2, 1)[..., None]  # [B, F, T, 1]
        x = nn.relu(self.bn1(self.conv1(x)))
        for layer in (self.layer1, self.layer2, self.layer3):
            for block in layer:
                x = block(x)
        out3 = x
        for block in self.layer4:
            x = block(x)
        fused = self.fuse34(x, self.layer3_ds(out3))  # [B, F/8, T/8, C]
        # upstream flattens (C, F/8) channel-major, then averages over time
        return fused.mean(axis=2).transpose(0, 2, 1).reshape(fused.shape[0], -1)

    forward3 = __call__

    def embed(self, wav_16k: np.ndarray) -> np.ndarray:
        """The speaker embedding [embedding_dim] (float32) of a mono 16 kHz clip, as upstream's
        `SV.compute_embedding3`: Kaldi fbank (80 bins, no dither) -> `forward3`."""
        from ..features import speaker_fbank

        wav = np.asarray(wav_16k, dtype=np.float32)
        if wav.ndim != 1 or wav.shape[0] < 400:
            raise PrimeSpeechError(f"the speaker model wants a mono 16 kHz clip of at least 400 samples, got "
                                   f"shape {wav.shape}")
        out = self(mx.array(speaker_fbank(wav))[None])
        return np.array(out[0].astype(mx.float32))

    @staticmethod
    def sanitize(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The official state dict -> this model's (numpy in, numpy out): drops BatchNorm
        `num_batches_tracked` and the pooling head `seg_1` (unused by `forward3`), and moves conv
        weights [out, in, kh, kw] to MLX's [out, kh, kw, in]."""
        out: dict[str, np.ndarray] = {}
        for key, value in weights.items():
            if key.endswith("num_batches_tracked") or key.startswith("seg_1."):
                continue
            if value.ndim == 4:
                value = np.ascontiguousarray(np.moveaxis(value, 1, 3))
            out[key] = value
        return out


def load_model(path, *, dtype=None) -> Model:
    """The speaker model from its official state dict (`sv/pretrained_eres2netv2w24s4ep4.ckpt`,
    converted once, cached beside it) or a converted folder: the one loader's `load_model("speaker", path)`."""
    from ..loading import load_model as load

    return load(KIND, path, dtype=dtype)
