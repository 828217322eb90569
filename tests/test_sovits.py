"""SoVITS decode / extract_latent parity with upstream `SynthesizerTrn` on identical random weights.

Upstream models get seeded random fp16-valued weights (oracle.sovits), are written as official
`.pth` files with torch.save and loaded through our converter. Most cases use a reduced s2.json
(fewer encoder layers, narrower FFN and generator) to stay fast; a few use the full s2.json.
"""

from __future__ import annotations

import numpy as np
import pytest

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS preload before MLX)
from dora_primespeech_mlx import loading
from dora_primespeech_mlx.errors import PrimeSpeechError

WAVE_TOL = 1e-4  # max abs waveform difference, float32, noise_scale 0 (the waveform std is ~0.15-0.3)
GE_TOL = 1e-4  # max abs difference of the style vector


@pytest.fixture(scope="session")
def oracle(upstream):
    import torch

    from primespeech_devtools.oracle import sovits

    # One intra-op thread: on a busy 2-core machine PyTorch's OpenMP barriers make 2 threads 10x slower.
    torch.set_num_threads(1)
    return sovits


@pytest.fixture(scope="session")
def models(oracle, tmp_path_factory):
    """(upstream net, our model) per (version, small, kernels) — built lazily, shared by the tests.
    `kernels`: None loads as the engine does (on the CPU, with the accelerator's native generator
    where the CPU kernels are built), False with the CPU kernels switched off (pure MLX, as on a
    GPU), True requires the native generator (skips where the kernels are not built)."""
    from dora_primespeech_mlx.cpu import library, vocoder

    cache = {}
    paths = {}

    def get(version: str, small: bool = True, kernels: bool | None = None):
        key = (version, small, kernels)
        if key not in cache:
            if (version, small) not in paths:
                net = oracle.shared_upstream(version, small=small)
                paths[version, small] = net, oracle.save_official(
                    net, tmp_path_factory.mktemp("sovits") / f"{version}.pth")
            net, path = paths[version, small]
            switched_on = library.enabled()
            library.set_enabled(kernels is not False and switched_on)
            try:
                model = loading.load_model("sovits", path)
            finally:
                library.set_enabled(switched_on)
            if kernels and not isinstance(model.dec, vocoder.NativeGenerator):
                pytest.skip("the CPU kernels are not built or switched off here")
            if kernels is False:
                assert not isinstance(model.dec, vocoder.NativeGenerator)
            cache[key] = (net, model)
        return cache[key]

    return get


def _inputs(seed: int, n_codes: int, n_phones: int, frames: tuple[int, ...], n_symbols: int):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 1024, size=n_codes)
    phones = rng.integers(0, n_symbols, size=n_phones)
    # Linear magnitudes like a real reference: positive, heavy-tailed, louder at low bins.
    specs = [(np.abs(rng.standard_normal((1025, f))) * np.linspace(3, 0.05, 1025)[:, None]).astype(np.float32)
             for f in frames]
    return codes, phones, specs


CASES = [  # (codes, phones, speed, reference frame counts)
    (1, 3, 1.0, (37,)),
    (7, 1, 0.8, (40, 61)),
    (20, 13, 1.25, (90,)),
    (13, 9, 1.0, (55, 23)),
    (4, 30, 0.8, (17,)),
]


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"codes{c[0]}-phones{c[1]}-speed{c[2]}-refs{len(c[3])}")
def test_decode_matches_upstream(models, oracle, version, case):
    net, model = models(version)
    n_codes, n_phones, speed, frames = case
    codes, phones, specs = _inputs(n_codes * 31 + n_phones, n_codes, n_phones, frames, model.args.n_symbols)
    refer = specs if len(specs) > 1 else specs[0]
    ours = model.decode(codes, phones, refer, noise_scale=0.0, speed=speed)
    ref = oracle.upstream_decode(net, codes, phones, specs, noise_scale=0.0, speed=speed)
    assert ours.dtype == np.float32 and ours.ndim == 1
    assert ours.shape == ref.shape
    frames50 = 2 * n_codes if speed == 1 else int(2 * n_codes / speed) + 1
    assert ours.shape == (frames50 * 640,)
    assert np.abs(ours - ref).max() <= WAVE_TOL
    assert 0.02 < float(ref.std()) and float(np.abs(ref).max()) < 0.999  # informative, not saturated


@pytest.mark.parametrize("version,case", [
    ("v2", (9, 11, 1.0, (48,))),
    ("v2", (5, 4, 1.25, (30, 44))),
    ("v1", (6, 7, 0.8, (33,))),
], ids=["v2-speed1", "v2-speed1.25-2refs", "v1-speed0.8"])
@pytest.mark.parametrize("kernels", [False, True], ids=["mlx", "cpu-kernels"])
def test_decode_matches_upstream_full_config(models, oracle, version, case, kernels):
    net, model = models(version, small=False, kernels=kernels)
    assert model.args.upsample_initial_channel == 512 and model.args.filter_channels == 768
    n_codes, n_phones, speed, frames = case
    codes, phones, specs = _inputs(7 + n_codes, n_codes, n_phones, frames, model.args.n_symbols)
    refer = specs if len(specs) > 1 else specs[0]
    ours = model.decode(codes, phones, refer, noise_scale=0.0, speed=speed)
    ref = oracle.upstream_decode(net, codes, phones, specs, noise_scale=0.0, speed=speed)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= WAVE_TOL
    assert 0.05 < float(ref.std()) < 0.4 and float(np.abs(ref).max()) < 0.999


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_extract_latent_matches_upstream(models, oracle, version):
    net, model = models(version)
    rng = np.random.default_rng(11)
    for frames in (2, 41, 160):  # odd: the stride-2 projection drops the last frame, as upstream
        ssl = rng.standard_normal((768, frames)).astype(np.float32)
        ours = model.extract_latent(ssl)
        ref = oracle.upstream_extract_latent(net, ssl)
        assert ours.dtype == np.int64 and ours.shape == (frames // 2,)
        np.testing.assert_array_equal(ours, ref)
    assert len(np.unique(model.extract_latent(rng.standard_normal((768, 400)).astype(np.float32)))) > 50
    with pytest.raises(PrimeSpeechError):
        model.extract_latent(np.zeros((512, 10), np.float32))


def test_extract_latent_full_config(models, oracle):
    net, model = models("v2", small=False)
    ssl = np.random.default_rng(5).standard_normal((768, 75)).astype(np.float32)
    np.testing.assert_array_equal(model.extract_latent(ssl), oracle.upstream_extract_latent(net, ssl))


def test_versions_detected(models):
    assert models("v1")[1].version == "v1" and models("v1")[1].args.n_symbols == 322
    assert models("v2")[1].version == "v2" and models("v2")[1].args.n_symbols == 732
    assert models("v1")[1].args.ref_bins == 1025 and models("v2")[1].args.ref_bins == 704


# -- one test per trap ----------------------------------------------------------------------------

def _upstream_ge(net, spec: np.ndarray, bins: int) -> np.ndarray:
    import torch

    with torch.no_grad():
        return net.ref_enc(torch.as_tensor(spec[:bins])[None], torch.ones(1, 1, spec.shape[1]))[0, :, 0].numpy()


def test_trap_style_encoder_temperature(models):
    """MelStyleEncoder's softmax temperature is sqrt(d_model=128), not sqrt(d_k=64)."""
    net, model = models("v2")
    _, _, (spec,) = _inputs(1, 1, 1, (80,), 732)
    ref = _upstream_ge(net, spec, 704)
    attn = model.ref_enc.slf_attn
    assert attn.temperature == pytest.approx(128 ** 0.5)
    ours = np.array(model.style_embedding(spec)[0])[0, 0]
    assert np.abs(ours - ref).max() <= GE_TOL
    attn.temperature = 64 ** 0.5
    try:
        wrong = np.array(model.style_embedding(spec)[0])[0, 0]
    finally:
        attn.temperature = 128 ** 0.5
    assert np.abs(wrong - ref).max() > 10 * GE_TOL


def test_trap_final_leaky_relu_slope(models, oracle):
    """The generator's last leaky ReLU uses PyTorch's default slope 0.01, not 0.1."""
    net, model = models("v2")
    codes, phones, specs = _inputs(2, 6, 5, (40,), 732)
    ref = oracle.upstream_decode(net, codes, phones, specs)
    assert model.dec.post_slope == 0.01
    assert np.abs(model.decode(codes, phones, specs[0], noise_scale=0.0) - ref).max() <= WAVE_TOL
    model.dec.post_slope = 0.1
    try:
        wrong = model.decode(codes, phones, specs[0], noise_scale=0.0)
    finally:
        model.dec.post_slope = 0.01
    assert np.abs(wrong - ref).max() > 100 * WAVE_TOL


def test_trap_conv_post_has_no_bias(models, oracle, tmp_path):
    """conv_post has no bias upstream; a checkpoint that carries one is refused (strict loading)."""
    import torch


    net, model = models("v2", kernels=False)  # the MLX generator (the native one packs conv_post)
    assert "dec.conv_post.bias" not in net.state_dict()
    assert "bias" not in model.dec.conv_post
    weights = oracle.state_dict_fp16(net)
    weights["dec.conv_post.bias"] = torch.zeros(1, dtype=torch.float16)
    path = oracle.save_official(net, tmp_path / "with_bias.pth", weights=weights)
    with pytest.raises(PrimeSpeechError, match="unexpected 1 .*dec.conv_post.bias"):
        loading.load_model("sovits", path)


def test_trap_conv_transpose_weight_norm_axis(models):
    """ConvTranspose1d weight_g is [in, 1, 1]: the norm runs over (out, k) for each input channel.
    Fusing over the other axis (as for a Conv1d's output channels) would give other weights."""
    import torch

    from dora_primespeech_mlx.models.sovits import Model

    net, model = models("v2", kernels=False)  # the MLX generator's weights (the native one packs them)
    up = net.dec.ups[1]
    g, v = up.weight_g.detach(), up.weight_v.detach()
    assert g.shape == (v.shape[0], 1, 1) and v.shape[0] == 2 * v.shape[1]  # [in, 1, 1], in = 2 * out
    expected = torch._weight_norm(v, g, 0).numpy()  # what upstream's forward uses
    ours = np.moveaxis(np.array(model.dec.ups[1].weight), 2, 0)  # back to [in, out, k]
    assert np.abs(ours - expected).max() <= 1e-6 * np.abs(expected).max()
    sanitized = Model.sanitize({"dec.ups.1.weight_g": g.numpy(), "dec.ups.1.weight_v": v.numpy()})
    np.testing.assert_array_equal(sanitized["dec.ups.1.weight"], np.array(model.dec.ups[1].weight))
    wrong = torch._weight_norm(v, torch.ones(1, v.shape[1], 1), 1).numpy() * g.numpy().mean()
    assert np.abs(wrong - expected).max() > 1e-2 * np.abs(expected).max()


def test_trap_decoder_gets_target_phones_only(models, oracle):
    """The decoder takes the TARGET phones only (the T2S model gets prompt + target)."""
    net, model = models("v2")
    codes, target, specs = _inputs(3, 12, 8, (50,), 732)
    prompt = np.random.default_rng(4).integers(0, 732, size=10)
    ref = oracle.upstream_decode(net, codes, target, specs)
    assert np.abs(model.decode(codes, target, specs[0], noise_scale=0.0) - ref).max() <= WAVE_TOL
    with_prompt = model.decode(codes, np.concatenate([prompt, target]), specs[0], noise_scale=0.0)
    assert np.abs(with_prompt - ref).max() > 100 * WAVE_TOL


def test_trap_reference_bins(models):
    """v2 reads the first 704 spectrogram bins, v1 all 1025 (both take [1025, frames] input)."""
    _, _, (spec,) = _inputs(5, 1, 1, (60,), 322)
    louder_top = spec.copy()
    louder_top[704:] *= 50.0
    for version, bins in (("v1", 1025), ("v2", 704)):
        net, model = models(version)
        ge = np.array(model.style_embedding(spec)[0])[0, 0]
        assert np.abs(ge - _upstream_ge(net, spec, bins)).max() <= GE_TOL
        changed = np.abs(np.array(model.style_embedding(louder_top)[0])[0, 0] - ge).max()
        if version == "v2":
            assert changed == 0.0
        else:
            assert changed > 10 * GE_TOL
    with pytest.raises(PrimeSpeechError, match="1025"):
        models("v1")[1].style_embedding(spec[:704])


# -- behaviour ------------------------------------------------------------------------------------

def test_noise_is_seeded(models, oracle):
    net, model = models("v2")
    codes, phones, specs = _inputs(6, 10, 6, (40,), 732)
    a = model.decode(codes, phones, specs[0], noise_scale=0.5, seed=7)
    b = model.decode(codes, phones, specs[0], noise_scale=0.5, seed=7)
    c = model.decode(codes, phones, specs[0], noise_scale=0.5, seed=8)
    clean = oracle.upstream_decode(net, codes, phones, specs, noise_scale=0.0)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3 and np.abs(a - clean).max() > 1e-3
    assert abs(float(a.std()) - float(clean.std())) < 0.5 * float(clean.std())


def test_decode_rejects_bad_input(models):
    _, model = models("v2")
    spec = np.ones((1025, 20), np.float32)
    with pytest.raises(PrimeSpeechError, match="no semantic codes"):
        model.decode([], [1, 2], spec)
    with pytest.raises(PrimeSpeechError, match="out of range"):
        model.decode([1024], [1, 2], spec)
    with pytest.raises(PrimeSpeechError, match="out of range"):
        model.decode([3], [732], spec)
    with pytest.raises(PrimeSpeechError, match="spectrogram"):
        model.decode([3], [1], np.ones((20, 1025), np.float32)[:, :10])
    with pytest.raises(PrimeSpeechError, match="speed"):
        model.decode([3], [1], spec, speed=0)
    with pytest.raises(PrimeSpeechError, match="no reference"):
        model.decode([3], [1], [])


# -- decode_batch -------------------------------------------------------------------------------------
# `Model.decode_batch`: rows of different lengths decoded in one pass, each as it decodes alone.
#
# Upstream decodes one row at a time in its TTS flow; its batched `SynthesizerTrn.decode` masks the
# encoders and the flow but not the vocoder, and stretches every row to the longest row's length at a
# speed other than 1. Ours masks the vocoder too and stretches each row by its own length, so each
# row's waveform is the one-row decode's. Checked against upstream's one-row decode (noise 0, WAVE_TOL
# as above) and against our own one-row decode with seeded noise (ROW_TOL: the same float32
# arithmetic in other shapes), pure MLX (the GPU's path) and with the CPU accelerator's generator.

ROW_TOL = 1e-5
ROWS = [(9, 11), (4, 30), (20, 13), (1, 3)]  # (codes, phones) of each row: a long, a short, one code


def _rows(model, seed: int, sizes=ROWS):
    rows = []
    for i, (n_codes, n_phones) in enumerate(sizes):
        codes, phones, _ = _inputs(seed + i, n_codes, n_phones, (1,), model.args.n_symbols)
        rows.append((codes, phones))
    return rows, _inputs(seed, 1, 1, (53,), model.args.n_symbols)[2][0]


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("speed", [1.0, 1.25, 0.8])
def test_rows_match_upstream_one_by_one(models, oracle, version, speed):
    net, model = models(version, kernels=False)
    rows, spec = _rows(model, 11)
    batch = model.decode_batch(rows, spec, noise_scale=0.0, speed=speed)
    assert len(batch) == len(rows)
    for (codes, phones), ours in zip(rows, batch, strict=True):
        ref = oracle.upstream_decode(net, codes, phones, [spec], noise_scale=0.0, speed=speed)
        assert ours.dtype == np.float32 and ours.shape == ref.shape
        assert np.abs(ours - ref).max() <= WAVE_TOL
        assert 0.02 < float(ref.std()) and float(np.abs(ref).max()) < 0.999


@pytest.mark.parametrize("kernels", [False, True], ids=["mlx", "cpu-kernels"])
def test_rows_match_our_one_row_decode_with_noise(models, kernels):
    _, model = models("v2", small=False, kernels=kernels)
    rows, spec = _rows(model, 5, sizes=[(12, 9), (5, 14), (8, 8)])
    for speed in (1.0, 1.1):
        seeds = [3, None, 7]  # None: each row draws from MLX's global generator, in row order
        import mlx.core as mx

        mx.random.seed(42)
        alone = [model.decode(c, p, spec, noise_scale=0.5, speed=speed, seed=s)
                 for (c, p), s in zip(rows, seeds, strict=True)]
        mx.random.seed(42)
        batch = model.decode_batch(rows, spec, noise_scale=0.5, speed=speed, seeds=seeds)
        for one, row in zip(alone, batch, strict=True):
            assert one.shape == row.shape
            assert np.abs(one - row).max() <= ROW_TOL
        assert np.abs(alone[0][:1000] - alone[2][:1000]).max() > 100 * ROW_TOL  # the rows differ


def test_one_row_is_decode(models):
    _, model = models("v2", kernels=False)
    rows, spec = _rows(model, 2, sizes=[(6, 5)])
    (row,) = model.decode_batch(rows, spec, noise_scale=0.5, seeds=[4])
    assert np.array_equal(row, model.decode(*rows[0], spec, noise_scale=0.5, seed=4))


def test_bad_batches(models):
    _, model = models("v2", kernels=False)
    rows, spec = _rows(model, 3, sizes=[(3, 3), (4, 2)])
    assert model.decode_batch([], spec) == []
    with pytest.raises(PrimeSpeechError, match="1 seeds for 2 rows"):
        model.decode_batch(rows, spec, seeds=[1])
    with pytest.raises(PrimeSpeechError, match="no semantic codes"):
        model.decode_batch([rows[0], (np.zeros(0, dtype=np.int64), rows[1][1])], spec)


# -- the vocoder window by window (decode_batch's vocoder_frames) ---------------------------------------
# Past vocoder_frames, the generator runs over windows with vocoder_reach frames of context on each side:
# the samples must be one pass's (ROW_TOL: the same float32 arithmetic in other shapes), the reach must
# cover the generator's real dependence, and the windows must bound the memory.


@pytest.mark.parametrize("small", [True, False], ids=["small", "full"])
def test_vocoder_reach_covers_the_generator(models, small):
    import mlx.core as mx

    _, model = models("v2", small=small, kernels=False)
    rng = np.random.default_rng(4)
    z = rng.standard_normal((1, 48, model.args.inter_channels)).astype(np.float32)
    ge = mx.array(rng.standard_normal((1, 1, model.args.gin_channels)).astype(np.float32))
    bumped = z.copy()
    bumped[0, 24] += 1.0
    hop = model.args.hop_length
    a, b = (np.array(model.dec(mx.array(x), ge)[0, :, 0]).reshape(48, hop) for x in (z, bumped))
    changed = np.flatnonzero(np.abs(a - b).max(axis=1) > 1e-6)
    farthest = int(np.abs(changed - 24).max())
    # covered, and not so loose that windows waste work: the sum of the layers' reaches rounds up by < 3
    assert farthest <= model.vocoder_reach <= farthest + 3


@pytest.mark.parametrize("kernels,small", [(False, True), (True, False)], ids=["mlx-small", "cpu-kernels-full"])
def test_vocoder_windows_give_one_pass_samples(models, oracle, kernels, small):
    net, model = models("v2", small=small, kernels=kernels)  # MLX's full-size generator is slow on a CPU
    rows, spec = _rows(model, 9, sizes=[(23, 17), (9, 6), (1, 2)])  # 46, 18, 2 frames
    whole = model.decode_batch(rows, spec, noise_scale=0.5, seeds=[1, 2, 3])
    # 3 rows x 10 frames: windows of 10 frames, most of a row's frames are at a window's edge
    windowed = model.decode_batch(rows, spec, noise_scale=0.5, seeds=[1, 2, 3], vocoder_frames=30)
    for one, row in zip(whole, windowed, strict=True):
        assert one.shape == row.shape
        assert np.abs(one - row).max() <= ROW_TOL
    codes, phones = rows[0]
    (alone,) = model.decode_batch([rows[0]], spec, noise_scale=0.0, speed=1.25, vocoder_frames=7)
    ref = oracle.upstream_decode(net, codes, phones, [spec], noise_scale=0.0, speed=1.25)
    assert alone.shape == ref.shape and np.abs(alone - ref).max() <= WAVE_TOL
    assert 0.02 < float(ref.std()) and float(np.abs(ref).max()) < 0.999


def test_vocoder_windows_bound_the_memory(models):
    import gc

    import mlx.core as mx

    _, model = models("v2", small=True, kernels=False)
    rows, spec = _rows(model, 6, sizes=[(80, 20)])  # 160 frames

    def peak(**kwargs):
        model.decode_batch(rows, spec, seeds=[1], **kwargs)
        gc.collect()
        start = mx.get_active_memory()
        mx.reset_peak_memory()
        model.decode_batch(rows, spec, seeds=[1], **kwargs)
        return mx.get_peak_memory() - start

    one_pass, windows = peak(), peak(vocoder_frames=30)
    # windows of 30 + 2 x 13 (the reach) frames instead of 160: about a third of the activations
    assert 0 < windows < 0.5 * one_pass


def test_bad_vocoder_frames(models):
    _, model = models("v2", kernels=False)
    rows, spec = _rows(model, 3, sizes=[(3, 3), (4, 2)])
    for frames, match in [(0, "vocoder_frames must be a positive"), (1, "less than one frame per row"),
                          (2.5, "vocoder_frames must be a positive")]:
        with pytest.raises(PrimeSpeechError, match=match):
            model.decode_batch(rows, spec, vocoder_frames=frames)
