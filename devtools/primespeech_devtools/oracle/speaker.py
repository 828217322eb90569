"""Upstream's ERes2NetV2 speaker-verification model (GPT-SoVITS v2Pro) with random weights, and its fbank.

Upstream imports `eres2net/` as top-level modules (`sv.py` appends the folder to sys.path), so this
helper does the same; the names (`ERes2NetV2`, `kaldi`, `fusion`, `pooling_layers`) clash with nothing
of ours.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from primespeech_devtools.oracle import import_upstream

# upstream's sv.py: ERes2NetV2(baseWidth=24, scale=4, expansion=4), fbank 80 bins, 16 kHz, dither 0
CONFIG = {"baseWidth": 24, "scale": 4, "expansion": 4}
SAMPLE_RATE = 16000
NUM_MEL_BINS = 80


def _eres2net():
    folder = os.path.join(import_upstream(), "eres2net")
    if folder not in sys.path:
        sys.path.append(folder)
    import ERes2NetV2
    import kaldi

    return ERes2NetV2, kaldi


def build(seed: int = 0, conv_gain: float = 0.95):
    """Upstream `ERes2NetV2` with seeded random weights, eval mode.

    Conv and linear weights ~ N(0, (conv_gain / sqrt(fan_in))^2), biases and BatchNorm shifts
    ~ 0.1 N(0, 1), BatchNorm scales 1 + 0.1 N(0, 1), running means 0.1 N(0, 1), running variances
    uniform in [0.5, 1.5]. At gain 0.95 the embedding of a speech-like clip has std ~10, a few per cent
    of the last stages' activations reach the blocks' cap of 20, and float32 stays within 3e-6 of
    float64; at 1.2 the random network is chaotic (upstream's own float32 result is 1e-2 of its peak
    away from float64), at 0.8 nothing reaches the cap."""
    import torch

    module, _ = _eres2net()
    model = module.ERes2NetV2(**CONFIG).eval()
    rng = np.random.default_rng(seed)

    def normal(shape, std):
        return torch.from_numpy((std * rng.standard_normal(shape)).astype(np.float32))

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(normal(p.shape, conv_gain / np.sqrt(p[0].numel())))
            elif name.endswith("bias"):
                p.copy_(normal(p.shape, 0.1))
            else:
                p.copy_(1.0 + normal(p.shape, 0.1))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(normal(b.shape, 0.1))
            elif name.endswith("running_var"):
                b.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, b.shape).astype(np.float32)))
    return model


def write_checkpoint(path: str | Path, model) -> Path:
    """Save `model` as upstream's official file: `torch.save` of its plain float32 state dict."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def fbank(wave: np.ndarray) -> np.ndarray:
    """Upstream's features for one 16 kHz mono clip: `kaldi.fbank(num_mel_bins=80, dither=0)` -> [T, 80]."""
    import torch

    _, kaldi = _eres2net()
    with torch.no_grad():
        feat = kaldi.fbank(torch.from_numpy(np.asarray(wave, np.float32))[None], num_mel_bins=NUM_MEL_BINS,
                           sample_frequency=SAMPLE_RATE, dither=0)
    return feat.numpy()


def forward3(model, feats: np.ndarray) -> np.ndarray:
    """Upstream's embedding of fbank features [B, T, 80] -> [B, 20480]."""
    import torch

    with torch.no_grad():
        return model.forward3(torch.from_numpy(np.asarray(feats, np.float32))).numpy()


def embedding(model, wave: np.ndarray) -> np.ndarray:
    """Upstream's `SV.compute_embedding3` of one 16 kHz mono clip -> [20480]: fbank, then `forward3`."""
    return forward3(model, fbank(wave)[None])[0]
