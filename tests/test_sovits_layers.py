"""SoVITS building blocks against their PyTorch / upstream counterparts on random data: every path
of our convolutions (dilated, strided, transposed) and the windowed relative-position attention at edge lengths."""

from __future__ import annotations

import numpy as np
import pytest

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS preload before MLX)

REL_TOL = 1e-5  # max abs difference relative to the reference's max abs value


def _rel(ours, ref) -> float:
    return float(np.abs(np.asarray(ours) - ref).max() / max(1e-6, np.abs(ref).max()))


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("cin,cout,k,dilation,length", [
    (16, 16, 11, 1, 301), (16, 16, 11, 5, 301), (32, 32, 3, 3, 40), (8, 12, 7, 1, 9), (64, 64, 3, 1, 7),
    (4, 4, 11, 1, 3), (6, 6, 5, 1, 1), (192, 384, 5, 1, 33), (5, 3, 1, 1, 10), (16, 16, 7, 5, 4),
    (12, 8, 3, 3, 2), (24, 24, 11, 3, 50),
])
@pytest.mark.parametrize("bias", [True, False])
def test_conv1d_paths(torch, cin, cout, k, dilation, length, bias):
    """'Same' convolutions, dilated ones (run on the input's phases) at lengths below and around the
    dilation and the kernel's span, and 1x1 convolutions (run as a product)."""
    import mlx.core as mx

    from dora_primespeech_mlx.models.vits_conv import Conv1d

    rng = np.random.default_rng(cin * 100 + k * 10 + length)
    w = rng.standard_normal((cout, cin, k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((1, cin, length)).astype(np.float32)
    pad = dilation * (k - 1) // 2
    conv = Conv1d(cin, cout, k, padding=pad, dilation=dilation, bias=bias)
    conv.weight = mx.array(np.moveaxis(w, 1, 2))
    if bias:
        conv.bias = mx.array(b)
    ref = torch.nn.functional.conv1d(torch.tensor(x), torch.tensor(w), torch.tensor(b) if bias else None,
                                     padding=pad, dilation=dilation).numpy()
    ours = np.array(conv(mx.array(x.transpose(0, 2, 1)))).transpose(0, 2, 1)
    assert ours.shape == ref.shape
    assert _rel(ours, ref) <= REL_TOL


def test_conv1d_strided_and_weight_cache(torch):
    import mlx.core as mx

    from dora_primespeech_mlx.models.vits_conv import Conv1d

    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 16, 2)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    conv = Conv1d(16, 24, 2, stride=2)
    conv.weight, conv.bias = mx.array(np.moveaxis(w, 1, 2)), mx.array(b)
    for length in (2, 9, 10):
        x = rng.standard_normal((1, 16, length)).astype(np.float32)
        ref = torch.nn.functional.conv1d(torch.tensor(x), torch.tensor(w), torch.tensor(b), stride=2).numpy()
        ours = np.array(conv(mx.array(x.transpose(0, 2, 1)))).transpose(0, 2, 1)
        assert ours.shape == ref.shape and _rel(ours, ref) <= REL_TOL
    conv.weight = mx.array(np.moveaxis(2 * w, 1, 2))  # new parameter: derived matrices are rebuilt
    x = rng.standard_normal((1, 16, 8)).astype(np.float32)
    ref = torch.nn.functional.conv1d(torch.tensor(x), torch.tensor(2 * w), torch.tensor(b), stride=2).numpy()
    assert _rel(np.array(conv(mx.array(x.transpose(0, 2, 1)))).transpose(0, 2, 1), ref) <= REL_TOL


@pytest.mark.parametrize("cin,cout,k,stride", [(512, 256, 16, 10), (256, 128, 16, 8), (128, 64, 8, 2),
                                                (64, 32, 2, 2), (7, 5, 5, 3), (6, 4, 3, 1)])
def test_conv_transpose(torch, cin, cout, k, stride):
    import mlx.core as mx

    from dora_primespeech_mlx.models.vits_conv import ConvTranspose1d

    rng = np.random.default_rng(k * stride)
    pad = (k - stride) // 2
    w = rng.standard_normal((cin, cout, k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    conv = ConvTranspose1d(cin, cout, k, stride=stride, padding=pad)
    conv.weight, conv.bias = mx.array(np.moveaxis(w, 0, 2)), mx.array(b)
    for length in (1, 2, 13):
        x = rng.standard_normal((1, cin, length)).astype(np.float32)
        ref = torch.nn.functional.conv_transpose1d(torch.tensor(x), torch.tensor(w), torch.tensor(b),
                                                   stride=stride, padding=pad).numpy()
        ours = np.array(conv(mx.array(x.transpose(0, 2, 1)))).transpose(0, 2, 1)
        assert ours.shape == ref.shape and _rel(ours, ref) <= REL_TOL


@pytest.mark.parametrize("length", [1, 2, 4, 5, 6, 9, 31])
def test_relative_attention_matches_upstream(upstream, torch, length):
    """Window-4 relative attention (rel_to_abs / abs_to_rel reshapes upstream) at lengths below,
    at and beyond the window."""
    import mlx.core as mx
    from module.attentions import MultiHeadAttention as Upstream

    from dora_primespeech_mlx.models.vits_attention import MultiHeadAttention

    torch.manual_seed(length)
    ref_layer = Upstream(192, 192, 2, window_size=4).eval()
    with torch.no_grad():
        for p in ref_layer.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.ndim > 1 else 0.1))
    ours_layer = MultiHeadAttention(192, 192, 2, window_size=4)
    state = {k: v.detach().numpy() for k, v in ref_layer.state_dict().items()}
    ours_layer.load_weights([(k, mx.array(np.moveaxis(v, 1, 2) if v.ndim == 3 and "emb_rel" not in k else v))
                             for k, v in state.items()])
    x = torch.randn(1, 192, length)
    with torch.no_grad():
        ref = ref_layer(x, x, torch.ones(1, 1, length, length)).numpy()
    ours = np.array(ours_layer(mx.array(x.numpy().transpose(0, 2, 1)), mx.array(x.numpy().transpose(0, 2, 1))))
    assert _rel(ours.transpose(0, 2, 1), ref) <= 10 * REL_TOL


def test_blas_threads_restores_setting():
    from dora_primespeech_mlx.runtime import blas_thread_count, blas_threads

    before = blas_thread_count()
    if before is None:
        pytest.skip("MLX does not use OpenBLAS here")
    with blas_threads(1):
        assert blas_thread_count() == 1
        with blas_threads(1):
            assert blas_thread_count() == 1
        assert blas_thread_count() == 1
    assert blas_thread_count() == before
