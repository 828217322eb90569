"""SoVITS decode on MLX's GPU against upstream's float32 decode (PyTorch on the CPU), same seeded weights.

Runs only where MLX's default device is a GPU. MLX's CUDA backend computes float32 products and
convolutions in TF32 unless MLX_ENABLE_TF32=0 (which `runtime.prepare` sets for
PRIMESPEECH_DTYPE=float32). Measured on an H100, 5 s of audio (std 0.28): 2.0e-3 max abs with TF32,
3.6e-6 without it; float16 1.97e-3 (bfloat16 1.7e-2, not offered).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS before MLX)
from dora_primespeech_mlx import loading

TF32_OFF = os.environ.get("MLX_ENABLE_TF32") == "0"

import mlx.core as mx  # noqa: E402

pytestmark = pytest.mark.skipif(mx.default_device() != mx.gpu,
                                reason="MLX's default device is not a GPU (CPU-only MLX build or no GPU)")


@pytest.fixture(scope="module")
def case(tmp_path_factory, upstream):
    """(checkpoint path, codes, phones, spectrogram, upstream's float32 waveform without noise)."""
    from dora_primespeech_mlx.models import sovits
    from primespeech_devtools.oracle import sovits as oracle

    net = oracle.build_upstream("v2", seed=0)
    path = oracle.save_official(net, tmp_path_factory.mktemp("gpu_sovits") / "v2.pth")
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 1024, size=125)
    phones = rng.integers(0, sovits.V2_SYMBOLS, size=60)
    spec = np.abs(rng.standard_normal((1025, 250))).astype(np.float32)
    return path, codes, phones, spec, oracle.upstream_decode(net, codes, phones, spec, noise_scale=0.0)


@pytest.mark.parametrize("dtype,tf32_bound", [("float32", 3e-3), ("float16", 3e-3)])
def test_gpu_decode_against_upstream_float32(case, dtype, tf32_bound):
    path, codes, phones, spec, ref = case
    out = loading.load_model("sovits", path, dtype=dtype).decode(codes, phones, spec, noise_scale=0.0)
    assert out.shape == ref.shape and np.isfinite(out).all()
    error = float(np.abs(out - ref).max())
    # float32 without TF32 is upstream's float32; with it, and in float16, within the measured bound
    assert error < (1e-4 if dtype == "float32" and TF32_OFF else tf32_bound), error


@pytest.mark.parametrize("vocoder_frames", [None, 150], ids=["one-pass", "vocoder-windows"])
@pytest.mark.parametrize("dtype,tf32_bound", [("float32", 3e-3), ("float16", 3e-3)])
def test_gpu_decode_batch_rows_against_upstream_float32(case, dtype, tf32_bound, vocoder_frames):
    """Rows of different lengths in one pass (the engine's SoVITS passes on a GPU), the vocoder in one
    go or in windows of 50 frames (3 rows x 250 frames, vocoder_frames 150): the row that is the case's
    input decodes as upstream's decode of it alone, within the same bounds."""
    path, codes, phones, spec, ref = case
    rng = np.random.default_rng(1)
    rows = [(rng.integers(0, 1024, size=40), phones[:20]), (codes, phones), (codes[:7], phones[:9])]
    model = loading.load_model("sovits", path, dtype=dtype)
    out = model.decode_batch(rows, spec, noise_scale=0.0, vocoder_frames=vocoder_frames)
    assert [o.shape[0] for o in out] == [40 * 1280, ref.shape[0], 7 * 1280] and np.isfinite(out[1]).all()
    error = float(np.abs(out[1] - ref).max())
    assert error < (1e-4 if dtype == "float32" and TF32_OFF else tf32_bound), error
