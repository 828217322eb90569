"""The vocoder's native direct convolution (cpu/native/vocoder.c `ps_vconv`, through cpu/ops.py's
`PackedConv` / `PackedTransposed`) against PyTorch in float64, and the HiFi-GAN generator's native
twin (cpu/vocoder.py) against upstream's `Generator` and our pure-MLX one.

The convolution cases cover every channel count the decoder uses (16..512), kernels 1..11,
dilations 1..5, odd lengths and lengths shorter than the kernel's span, with and without the fused
leaky ReLUs, bias, residual and running sum, in place and over several threads. The generator cases
load upstream's random weights from an official `.pth` through our converter: the full s2.json
generator, the reduced test config (its 8- and 4-channel stages run on zero channels added up to 16)
and the v2ProPlus generator (768 wide, first kernel 20, a last stage of 24 channels run as 32). After
the swap no weight is held twice.
"""

from __future__ import annotations

import sys

import numpy as np
import parity
import pytest
from parity import rel_err

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS preload before MLX)
from dora_primespeech_mlx import loading
from dora_primespeech_mlx.cpu import ops as native_ops
from dora_primespeech_mlx.cpu import vocoder
from dora_primespeech_mlx.cpu.ops import PackedConv, PackedTransposed
from dora_primespeech_mlx.models import hifigan

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
                    "dora_primespeech_mlx/cpu/_kernels*.so (needs a C compiler)")


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
        conv = PackedConv.pack(w, bias, dilation=d)
        pad = d * (k - 1) // 2
        assert (conv.cout, conv.kernel, conv.cin, conv.dilation, conv.padding) == (channels, k, channels, d, pad)
        threads = 1 + i % 3
        # c1 of a ResBlock: leaky ReLU in and out, bias, no residual
        out = np.empty((t, channels), np.float32)
        conv(out, x, slope_in=0.1, slope_out=0.1, threads=threads)
        assert rel_err(out, reference(torch, x, w, bias, k, d, pad, slope_in=0.1, slope_out=0.1)) < CONV_TOL
        # c2: residual, computed in place over the residual
        out = residual.copy()
        conv(out, x, residual=out, threads=threads)
        assert rel_err(out, reference(torch, x, w, bias, k, d, pad, residual)) < CONV_TOL
        # the stage mean's last step: (total + conv + residual) * scale in place over total, no bias,
        # an off-centre padding
        total = rng.standard_normal((t, channels)).astype(np.float32)
        out = total.copy()
        pad = (k - 1) * d
        PackedConv.pack(w, None, dilation=d, padding=pad)(out, x, residual=residual, total=out, scale=1.0 / 3,
                                                          slope_in=0.2, threads=threads)
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
        PackedConv.pack(w, bias, dilation=d)(out, x, slope_out=0.1, threads=5)
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
        up = PackedTransposed.pack(w, bias, stride=stride, padding=padding)
        work = np.empty(up.work_size(t), np.float32)
        y = up(x, work, slope_in=0.1, threads=2)
        xt = F.leaky_relu(torch.from_numpy(x.astype(np.float64)).T[None], 0.1)
        expected = F.conv_transpose1d(xt, torch.from_numpy(w.transpose(2, 0, 1).astype(np.float64)),
                                      torch.from_numpy(bias.astype(np.float64)), stride=stride, padding=padding)
        assert y.shape == (expected.shape[-1], cout)
        assert rel_err(y, expected[0].T.numpy()) < CONV_TOL


def test_conv_refuses_bad_arguments():
    """-2 from the library (nothing written, no crash) and a ValueError from the wrappers, which
    also refuse inputs, outputs and work buffers of other shapes than the packed convolution's."""
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
        PackedConv.pack(w)
    with pytest.raises(ValueError, match="unsupported"):  # stride 3 x 8 outputs: 24 columns
        PackedTransposed.pack(np.ones((8, 5, 4), np.float32), None, stride=3, padding=1)
    conv = PackedConv.pack(np.ones((16, 3, 16), np.float32))
    y = np.zeros((10, 16), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        conv(y, y)
    with pytest.raises(ValueError, match="input"):
        conv(y, np.zeros((10, 24), np.float32))
    with pytest.raises(ValueError, match="output"):
        conv(np.zeros((10, 32), np.float32), x[:, :16].copy())
    with pytest.raises(ValueError, match=">= 160 values"):  # the residual
        conv(y, x[:, :16].copy(), residual=np.zeros((9, 16), np.float32))
    up = PackedTransposed.pack(np.ones((16, 4, 8), np.float32), None, stride=2, padding=1)
    with pytest.raises(ValueError, match="work buffer"):
        up(np.ones((5, 8), np.float32), np.empty(up.work_size(5) - 1, np.float32))


@pytest.fixture(scope="module")
def decoders(torch, tmp_path_factory):
    """{"full": ..., "small": ..., "plus": ...}: (upstream SynthesizerTrn, its official .pth) per generator:
    v2's full and reduced configs, and the full v2ProPlus one."""
    from primespeech_devtools.oracle import sovits as oracle

    out = {}
    for name, version, small in (("full", "v2", False), ("small", "v2", True), ("plus", "v2ProPlus", False)):
        net = oracle.shared_upstream(version, small=small)
        out[name] = (net, oracle.save_official(net, tmp_path_factory.mktemp("vocoder") / f"{name}.pth"))
    return out


def _load_pure(path):
    """The SoVITS model at `path` loaded with the CPU kernels switched off: pure MLX."""
    model = parity.load_model("sovits", path, kernels=False)
    assert isinstance(model.dec, hifigan.Generator)
    return model


def _accelerated(path, threads: int = 2):
    """(pure-MLX model, the same model loaded with the CPU kernels on: the native generator) from `path`."""

    pure, model = _load_pure(path), loading.load_model("sovits", path)
    assert isinstance(model.dec, vocoder.NativeGenerator)
    model.dec.threads = threads  # several threads even where this process may use one core
    return pure, model


@pytest.mark.parametrize("name, frames", [("full", 23), ("small", 40), ("plus", 19)])
def test_generator_matches_upstream(torch, decoders, monkeypatch, name, frames):
    net, path = decoders[name]
    pure, model = _accelerated(path)
    rng = np.random.default_rng(frames)
    z = rng.standard_normal((1, 192, frames)).astype(np.float32)
    g = rng.standard_normal((1, model.args.gin_channels, 1)).astype(np.float32)
    with torch.no_grad():
        expected = net.dec(torch.from_numpy(z), g=torch.from_numpy(g)).numpy().reshape(-1)
    assert 0.05 < expected.std() < 0.5 and np.mean(np.abs(expected) > 0.98) < 0.01  # informative

    calls = []
    convolve = PackedConv.__call__
    monkeypatch.setattr(PackedConv, "__call__", lambda *a, **k: calls.append(1) or convolve(*a, **k))
    x, cond = mx.array(z[0].T[None]), mx.array(g[..., 0][:, None])
    ours = np.array(model.dec(x, cond)).reshape(-1)
    # every stage native: 3 ResBlocks of 3 pairs of convolutions each, its upsampling, and conv_post
    assert len(calls) == 5 * 3 * 6 + 5 + 1
    mlx_path = np.array(pure.dec(x, cond)).reshape(-1)
    assert len(calls) == 5 * 3 * 6 + 5 + 1
    assert ours.shape == mlx_path.shape == expected.shape
    assert rel_err(ours, expected) < WAVE_TOL
    assert rel_err(ours, mlx_path) < WAVE_TOL
    assert not vocoder.install(model)  # nothing left to swap


@pytest.mark.parametrize("name", ["small", "full"])
def test_decode_native_and_mlx_paths_agree(decoders, name):
    """SoVITS decode with the native generator installed gives the pure-MLX model's waveform (noise
    and speed included), and so does streaming decode."""
    pure, model = _accelerated(decoders[name][1])
    rng = np.random.default_rng(3)
    codes, phones = rng.integers(0, 1024, 9), rng.integers(0, 732, 7)
    spec = np.abs(rng.standard_normal((1025, 30))).astype(np.float32)
    for speed in (1.0, 1.25):
        ours = model.decode(codes, phones, spec, noise_scale=0.5, seed=2, speed=speed)
        mlx_path = pure.decode(codes, phones, spec, noise_scale=0.5, seed=2, speed=speed)
        assert ours.shape == mlx_path.shape
        assert np.abs(ours - mlx_path).max() <= WAVE_TOL
    ours, latent, _ = model.decode_streaming(codes, phones, spec, noise_scale=0.0, result_length=4, padding_length=2)
    mlx_path, mlx_latent, _ = pure.decode_streaming(codes, phones, spec, noise_scale=0.0, result_length=4,
                                                     padding_length=2)
    assert np.abs(ours - mlx_path).max() <= WAVE_TOL
    np.testing.assert_array_equal(latent, mlx_latent)


@pytest.mark.parametrize("name", ["small", "full"])
def test_no_weight_held_twice(decoders, name):
    """After the swap the model's MLX parameters lack every weight the twin packed, MLX's memory
    shrinks by those weights, and the packed copies are no larger (but for the layouts' padding)."""
    import gc

    from mlx.utils import tree_flatten

    model = _load_pure(decoders[name][1])
    before = {k: v.nbytes for k, v in tree_flatten(model.parameters())}
    gc.collect()
    mx.clear_cache()
    memory = mx.get_active_memory()
    assert vocoder.install(model)
    gc.collect()
    released = memory - mx.get_active_memory()
    after = {k: v.nbytes for k, v in tree_flatten(model.parameters())}
    replaced = sum(before.values()) - sum(after.values())
    assert sum(v for k, v in before.items() if k.startswith(("dec.conv_pre.", "dec.cond."))) == sum(
        v for k, v in after.items() if k.startswith(("dec.conv_pre.", "dec.cond.")))
    if name == "full":  # every stage native: only conv_pre and cond stay in MLX
        assert sorted(k for k in after if k.startswith("dec.")) == [
            "dec.cond.bias", "dec.cond.weight", "dec.conv_pre.bias", "dec.conv_pre.weight"]
        assert replaced > 50e6
    assert not set(after) - set(before) - {k for k in after if k.startswith("dec.stages.")}
    assert released >= 0.95 * replaced
    # the transposed convolutions' taps padded to whole blocks of `stride`, conv_post to 16 outputs (and
    # in the small config its 8- and 4-channel stages to 16 channels: 11% more there)
    assert replaced <= model.dec.packed_bytes() <= (1.1 if name == "full" else 1.15) * replaced
