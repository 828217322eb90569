"""The vocoder's native direct convolution (native/encoder_kernels.c `ps_vconv`) against PyTorch in
float64, and the native CPU path of the HiFi-GAN generator against upstream's `Generator` and our
pure-MLX path.

The convolution cases cover every channel count the decoder uses (16..512), kernels 1..11,
dilations 1..5, odd lengths and lengths shorter than the kernel's span, with and without the fused
leaky ReLUs, bias, residual and running sum, in place and over several threads. The generator cases
load upstream's random weights from an official `.pth` through our converter: the full s2.json
generator (every stage native) and the reduced test config (its 8- and 4-channel stages fall back to
MLX).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from parity import rel_err

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS preload before MLX)
from dora_primespeech_mlx.models import hifigan, native_ops

mx = pytest.importorskip("mlx.core")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux CPU kernels")

CONV_TOL = 2e-5  # max |ours - float64 reference| / max |reference| of one convolution
WAVE_TOL = 1e-4  # the same measure on the generator's waveform (std ~0.1-0.3, tanh not saturated)


@pytest.fixture(scope="module", autouse=True)
def native():
    mx.set_default_device(mx.cpu)
    native_ops.set_native_kernels(True)
    if native_ops.native_kernels() is None:
        pytest.fail("the native kernels are not loaded: pip install -e . builds "
                    "dora_primespeech_mlx/native/_encoder_kernels*.so (needs a C compiler)")


@pytest.fixture(scope="module")
def torch():
    import torch

    torch.set_num_threads(1)  # PyTorch's OpenMP barriers are slow on a busy 2-core machine
    return torch


def reference(torch, x, w, bias, kernel, dilation, pad, residual=None, slope_in=None, slope_out=None,
              total=None, scale=1.0):
    """The fused convolution in float64 PyTorch: x [T, Cin], w [Cout, K, Cin] (MLX layout)."""
    import torch.nn.functional as F

    xt = torch.from_numpy(x.astype(np.float64)).T[None]
    if slope_in is not None:
        xt = F.leaky_relu(xt, slope_in)
    xt = F.pad(xt, (pad, (kernel - 1) * dilation - pad))
    wt = torch.from_numpy(np.moveaxis(w, 1, 2).astype(np.float64))
    y = F.conv1d(xt, wt, None if bias is None else torch.from_numpy(bias.astype(np.float64)), dilation=dilation)
    y = y[0].T.numpy()
    if residual is not None:
        y = y + residual
    if slope_out is not None:
        y = np.where(y > 0, y, slope_out * y)
    if total is not None:
        y = (total + y) * scale
    return y


# (kernel, dilation, length): odd lengths, lengths shorter than the kernel's span (k - 1) d + 1.
CONV_CASES = [(1, 1, 1), (3, 1, 2), (3, 5, 7), (7, 3, 37), (11, 5, 30), (11, 1, 131), (3, 3, 301)]


@pytest.fixture(params=[4, 3, 1], ids=["avx512", "avx2", "baseline"])
def level(request):
    """Each x86-64 level's convolution tiles that this CPU runs (AVX-512 12 x 32 / 24 x 16, AVX2 6 x 16,
    baseline 3 x 16), switched in the library for the test."""
    lib = native_ops.native_kernels()
    best = lib.ps_vconv_level(0)
    if lib.ps_vconv_level(request.param) != request.param:
        pytest.skip(f"this CPU has no x86-64-v{request.param} tiles")
    yield request.param
    assert lib.ps_vconv_level(best) == best


@pytest.mark.parametrize("channels", [16, 32, 64, 128, 256, 512])
def test_conv_matches_torch(torch, level, channels):
    rng = np.random.default_rng(channels)
    for i, (k, d, t) in enumerate(CONV_CASES):
        if channels >= 256:
            t = min(t, 61)
        x = (rng.standard_normal((t, channels)) * 2).astype(np.float32)
        w = (rng.standard_normal((channels, k, channels)) / np.sqrt(k * channels)).astype(np.float32)
        bias = (rng.standard_normal(channels) * 0.1).astype(np.float32)
        residual = rng.standard_normal((t, channels)).astype(np.float32)
        packed = native_ops.native_vconv_pack(w)
        pad = d * (k - 1) // 2
        threads = 1 + i % 3
        # c1 of a ResBlock: leaky ReLU in and out, bias, no residual
        out = np.empty((t, channels), np.float32)
        native_ops.native_vconv(out, x, packed, bias, k, dilation=d, slope_in=0.1, slope_out=0.1, threads=threads)
        assert rel_err(out, reference(torch, x, w, bias, k, d, pad, slope_in=0.1, slope_out=0.1)) < CONV_TOL
        # c2: residual, computed in place over the residual
        out = residual.copy()
        native_ops.native_vconv(out, x, packed, bias, k, dilation=d, residual=out, threads=threads)
        assert rel_err(out, reference(torch, x, w, bias, k, d, pad, residual)) < CONV_TOL
        # the stage mean's last step: (total + conv + residual) * scale in place over total, no bias,
        # an off-centre padding
        total = rng.standard_normal((t, channels)).astype(np.float32)
        out = total.copy()
        pad = (k - 1) * d
        native_ops.native_vconv(out, x, packed, None, k, dilation=d, padding=pad, residual=residual, total=out,
                                scale=1.0 / 3, slope_in=0.2, threads=threads)
        expected = reference(torch, x, w, None, k, d, pad, residual, slope_in=0.2, total=total, scale=1.0 / 3)
        assert rel_err(out, expected) < CONV_TOL


def test_conv_other_widths(torch, level):
    """Input width independent of the output's (any, here not a multiple of 16), output widths that
    are multiples of 16 but not of 32, and a long sequence over more threads than chunks."""
    rng = np.random.default_rng(7)
    for cin, cout, k, d, t in [(192, 512, 7, 1, 25), (3, 48, 5, 2, 40), (48, 16, 3, 1, 9000)]:
        x = rng.standard_normal((t, cin)).astype(np.float32)
        w = (rng.standard_normal((cout, k, cin)) / np.sqrt(k * cin)).astype(np.float32)
        bias = rng.standard_normal(cout).astype(np.float32)
        out = np.empty((t, cout), np.float32)
        native_ops.native_vconv(out, x, native_ops.native_vconv_pack(w), bias, k, dilation=d, slope_out=0.1,
                                threads=5)
        assert rel_err(out, reference(torch, x, w, bias, k, d, d * (k - 1) // 2, slope_out=0.1)) < CONV_TOL


@pytest.mark.parametrize("cin, cout, kernel, stride", [(512, 256, 16, 10), (256, 128, 16, 8), (128, 64, 8, 2),
                                                        (32, 16, 2, 2), (20, 16, 5, 3)])
def test_transposed_conv_matches_torch(torch, cin, cout, kernel, stride):
    """HiFi-GAN's upsampling layers (v2's shapes, and a kernel that is not a multiple of the stride)
    as convolutions on blocks of `stride` rows, against ConvTranspose1d."""
    import torch.nn.functional as F

    rng = np.random.default_rng(kernel * stride)
    padding = (kernel - stride) // 2
    for t in (1, 13):
        x = (rng.standard_normal((t, cin)) * 2).astype(np.float32)
        w = (rng.standard_normal((cout, kernel, cin)) / np.sqrt(cin)).astype(np.float32)  # MLX layout
        bias = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        packed, tiled = native_ops.native_transposed_pack(w, bias, stride)
        work = np.empty((t + kernel) * stride * cout, np.float32)
        y = native_ops.native_transposed(x, packed, tiled, kernel, stride, padding, work, slope_in=0.1, threads=2)
        xt = F.leaky_relu(torch.from_numpy(x.astype(np.float64)).T[None], 0.1)
        expected = F.conv_transpose1d(xt, torch.from_numpy(w.transpose(2, 0, 1).astype(np.float64)),
                                      torch.from_numpy(bias.astype(np.float64)), stride=stride, padding=padding)
        assert y.shape == (expected.shape[-1], cout)
        assert rel_err(y, expected[0].T.numpy()) < CONV_TOL


def test_conv_refuses_bad_arguments():
    """-2 from the library (nothing written, no crash) and a ValueError from the wrappers."""
    lib = native_ops.native_kernels()
    x = np.ones((10, 24), np.float32)
    w = np.ones((24, 3, 24), np.float32)
    out = np.full((10, 24), 7.0, np.float32)

    def call(cout=16, kernel=3, dilation=1, pad=1, threads=1, t=10, t_out=10):
        return lib.ps_vconv(out.ctypes.data, x.ctypes.data, None, None, w.ctypes.data, None, t, t_out, 16, cout,
                            kernel, dilation, pad, 0, 0.0, 0, 0.0, 1.0, threads)

    assert call() == 0
    out[:] = 7.0
    for bad in [dict(cout=24), dict(cout=8), dict(kernel=0), dict(dilation=0), dict(pad=-1), dict(pad=3),
                dict(threads=0), dict(threads=17), dict(t=0), dict(t_out=0)]:
        assert call(**bad) == -2, bad
    assert (out == 7.0).all()
    assert lib.ps_vconv_pack(out.ctypes.data, w.ctypes.data, 24, 3, 24) == -2
    with pytest.raises(ValueError, match="unsupported"):
        native_ops.native_vconv_pack(w)
    with pytest.raises(ValueError, match="unsupported"):  # stride 3 x 8 outputs: 24 columns
        native_ops.native_transposed_pack(np.ones((8, 5, 4), np.float32), None, 3)
    with pytest.raises(ValueError, match="overlap"):
        y = np.zeros((10, 16), np.float32)
        native_ops.native_vconv(y, y, np.zeros(16 * 3 * 16, np.float32), None, 3)
    assert not hifigan.ResBlock1(24, 3, (1, 3, 5)).native_ready()
    assert hifigan.ResBlock1(32, 3, (1, 3, 5)).native_ready()


@pytest.fixture(scope="module")
def decoders(torch, tmp_path_factory):
    """{"full": ..., "small": ...}: (upstream SynthesizerTrn, its official .pth) per generator size."""
    from dora_primespeech_mlx.oracle import sovits as oracle

    out = {}
    for name in ("full", "small"):
        net = oracle.shared_upstream("v2", small=name == "small")
        out[name] = (net, oracle.save_official(net, tmp_path_factory.mktemp("vocoder") / f"{name}.pth"))
    return out


def _run_ours(model, z, g, native: bool) -> np.ndarray:
    with model._parallel() as streams:
        threads = max(2, model._parallel.threads) if native else 0
        return np.array(model.dec(mx.array(z[0].T[None]), mx.array(g[..., 0][:, None]), streams,
                                  threads=threads)).reshape(-1)


@pytest.mark.parametrize("name, frames, native_stages", [("full", 23, 5), ("small", 40, 3)])
def test_generator_matches_upstream(torch, decoders, monkeypatch, name, frames, native_stages):
    from dora_primespeech_mlx.models import sovits

    net, path = decoders[name]
    model = sovits.load_model(path)
    rng = np.random.default_rng(frames)
    z = rng.standard_normal((1, 192, frames)).astype(np.float32)
    g = rng.standard_normal((1, 512, 1)).astype(np.float32)
    with torch.no_grad():
        expected = net.dec(torch.from_numpy(z), g=torch.from_numpy(g)).numpy().reshape(-1)
    assert 0.05 < expected.std() < 0.5 and np.mean(np.abs(expected) > 0.98) < 0.01  # informative

    calls = []
    convolve = native_ops.native_vconv
    monkeypatch.setattr(hifigan, "native_vconv", lambda *a, **k: calls.append(a[0].shape) or convolve(*a, **k))
    ours = _run_ours(model, z, g, native=True)
    # 3 ResBlocks of 3 pairs of convolutions per native stage, and conv_post
    assert len(calls) == native_stages * 3 * 6 + 1
    mlx_path = _run_ours(model, z, g, native=False)
    assert len(calls) == native_stages * 3 * 6 + 1
    assert rel_err(ours, expected) < WAVE_TOL
    assert rel_err(ours, mlx_path) < WAVE_TOL

    # new weights (as after load_weights) are packed again
    block = model.dec.resblocks[0]
    block.convs2[1].weight = block.convs2[1].weight * 0.5
    assert rel_err(_run_ours(model, z, g, native=True), _run_ours(model, z, g, native=False)) < WAVE_TOL
    assert rel_err(_run_ours(model, z, g, native=True), ours) > 1e-3


def test_decode_native_and_mlx_paths_agree(decoders):
    """SoVITS decode takes the native path by default on the CPU; set_native_kernels(False) gives
    the pure-MLX path, the same waveform."""
    from dora_primespeech_mlx.models import sovits

    model = sovits.load_model(decoders["small"][1])
    rng = np.random.default_rng(3)
    codes, phones = rng.integers(0, 1024, 9), rng.integers(0, 732, 7)
    spec = np.abs(rng.standard_normal((1025, 30))).astype(np.float32)
    used = []
    native_stage = model.dec._native_mean_of
    model.dec._native_mean_of = lambda *a: used.append(1) or native_stage(*a)
    ours = model.decode(codes, phones, spec, noise_scale=0.5, seed=2)
    assert used
    try:
        native_ops.set_native_kernels(False)
        mlx_path = model.decode(codes, phones, spec, noise_scale=0.5, seed=2)
    finally:
        native_ops.set_native_kernels(True)
    assert len(used) == 3
    assert rel_err(ours, mlx_path) < WAVE_TOL
