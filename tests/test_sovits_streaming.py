"""Streaming SoVITS parity with upstream: `Model.decode_streaming` vs `SynthesizerTrn.decode_streaming`,
`sola.sola_join` vs `TTS.sola_algorithm`, and `sola.StreamDecoder` vs TTS.run's streaming loop.

Upstream models get seeded random fp16-valued weights (oracle.sovits), written as official `.pth`
files with torch.save and loaded through our converter; a reduced s2.json for most cases, the full
one for one. noise_scale 0 throughout, float32 on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
from parity import rel_err

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS preload before MLX)
from dora_primespeech_mlx import loading, sola
from dora_primespeech_mlx.errors import PrimeSpeechError

STREAM_TOL = 1e-4  # audio and latent: max abs difference relative to upstream's peak (float32)
SOLA_TOL = 1e-6  # SOLA join of identical float32 inputs: max abs difference relative to the peak

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def oracle(upstream):
    from primespeech_devtools.oracle import sovits

    return sovits


@pytest.fixture(scope="module")
def models(oracle, tmp_path_factory):
    """(upstream net, our model) per (version, small), built lazily and shared."""

    cache = {}

    def get(version: str = "v2", small: bool = True):
        if (version, small) not in cache:
            net = oracle.shared_upstream(version, small=small)
            path = oracle.save_official(net, tmp_path_factory.mktemp("sovits") / f"{version}.pth")
            cache[version, small] = (net, loading.load_model("sovits", path))
        return cache[version, small]

    return get


def _inputs(seed: int, n_codes: int, n_phones: int, n_symbols: int, frames: int = 47):
    rng = np.random.default_rng(seed)
    spec = (np.abs(rng.standard_normal((1025, frames))) * np.linspace(3, 0.05, 1025)[:, None]).astype(np.float32)
    return rng.integers(0, 1024, size=n_codes), rng.integers(0, n_symbols, size=n_phones), spec


def _check_chunk(ours, ref, n_frames: int, speed: float) -> None:
    audio, latent, mask = ours
    ref_audio, ref_latent, ref_mask = (t.numpy() for t in ref)
    assert audio.dtype == np.float32 and audio.ndim == 1
    out_frames = n_frames if speed == 1 else int(n_frames / speed) + 1
    assert audio.shape == ref_audio.shape == (out_frames * 640,)
    assert latent.shape == ref_latent[0].shape == (192, n_frames)  # upstream's orientation
    np.testing.assert_array_equal(mask, ref_mask.reshape(-1))
    assert rel_err(audio, ref_audio) <= STREAM_TOL
    assert rel_err(latent, ref_latent[0]) <= STREAM_TOL
    assert 0.02 < float(ref_audio.std()) and float(np.abs(ref_audio).max()) < 0.999  # informative


STREAM_CASES = [  # (history codes, result_length, overlap frames from the previous chunk, padding_length)
    (16, None, 0, None),  # first chunk: everything, no cross-fade
    (30, 16, 4, None),  # middle chunk: 14 new codes + 2 overlap codes, 4 latent frames cross-faded
    (30, 12, 4, 3),  # with padding: 3 trailing codes cut before encoder2
    (25, 19, 22, 0),  # a short chunk's grown overlap (11 codes -> 22 frames), padding 0 as TTS.run passes
]


@pytest.mark.parametrize("speed", [1.0, 1.1])
@pytest.mark.parametrize("case", STREAM_CASES, ids=lambda c: f"codes{c[0]}-result{c[1]}-ov{c[2]}-pad{c[3]}")
def test_decode_streaming_matches_upstream(models, oracle, case, speed):
    net, model = models()
    n_codes, result_length, n_overlap, padding = case
    codes, phones, spec = _inputs(n_codes + 5 * n_overlap, n_codes, 17, model.args.n_symbols)
    ours_prev = ref_prev = None
    if n_overlap:  # the previous chunk, decoded on each side, supplies the overlap latent
        ours_prev = model.decode_streaming(codes[:11], phones, spec, noise_scale=0.0, speed=speed)[1][:, -n_overlap:]
        ref_prev = oracle.upstream_decode_streaming(net, codes[:11], phones, spec, speed=speed)[1][..., -n_overlap:]
        assert rel_err(ours_prev, ref_prev[0]) <= STREAM_TOL
    kwargs = dict(result_length=result_length, padding_length=padding)
    ours = model.decode_streaming(codes, phones, spec, noise_scale=0.0, speed=speed, overlap_frames=ours_prev, **kwargs)
    ref = oracle.upstream_decode_streaming(net, codes, phones, spec, speed=speed, overlap_frames=ref_prev, **kwargs)
    kept = 2 * (n_codes - (padding or 0))
    _check_chunk(ours, ref, min(kept, 2 * result_length) if result_length else kept, speed)
    if n_overlap:  # the cross-fade is really applied: without it the first frames differ
        plain = model.decode_streaming(codes, phones, spec, noise_scale=0.0, speed=speed, **kwargs)[1]
        assert np.abs(plain[:, :n_overlap] - ours[1][:, :n_overlap]).max() > 1e-2
        np.testing.assert_array_equal(plain[:, n_overlap:], ours[1][:, n_overlap:])


def test_decode_streaming_v1_and_full_config(models, oracle):
    for version, small in (("v1", True), ("v2", False)):
        net, model = models(version, small)
        codes, phones, spec = _inputs(3, 24, 11, model.args.n_symbols)
        first = model.decode_streaming(codes[:12], phones, spec, noise_scale=0.0)
        ref_first = oracle.upstream_decode_streaming(net, codes[:12], phones, spec)
        _check_chunk(first, ref_first, 24, 1.0)
        ours = model.decode_streaming(codes, phones, spec, noise_scale=0.0, result_length=14,
                                      overlap_frames=first[1][:, -4:])
        ref = oracle.upstream_decode_streaming(net, codes, phones, spec, result_length=14,
                                               overlap_frames=ref_first[1][..., -4:])
        _check_chunk(ours, ref, 28, 1.0)


def test_decode_streaming_shares_decode(models):
    """Without streaming arguments it is `decode` (bit for bit, noise included), plus the latent."""
    _, model = models()
    codes, phones, spec = _inputs(8, 9, 6, model.args.n_symbols)
    for speed, noise in ((1.0, 0.0), (1.1, 0.5)):
        audio, latent, mask = model.decode_streaming(codes, phones, spec, noise_scale=noise, speed=speed, seed=4)
        np.testing.assert_array_equal(audio, model.decode(codes, phones, spec, noise_scale=noise, speed=speed, seed=4))
        assert latent.shape == (192, 18) and latent.dtype == np.float32 and mask.shape == (18,)
    full = model.decode_streaming(codes, phones, spec, noise_scale=0.0, result_length=50, padding_length=0)
    np.testing.assert_array_equal(full[0], model.decode(codes, phones, spec, noise_scale=0.0))


@pytest.mark.parametrize("kwargs,match", [
    (dict(result_length=0), "result_length"),
    (dict(result_length=2.5), "result_length"),
    (dict(padding_length=-1), "padding_length"),
    (dict(padding_length=9), "leaves none"),
    (dict(overlap_frames=np.zeros((96, 4), np.float32)), "overlap_frames"),
    (dict(overlap_frames=np.zeros((4, 192), np.float32)), "overlap_frames"),
    (dict(result_length=3, overlap_frames=np.zeros((192, 7), np.float32)), "overlap_frames"),
])
def test_decode_streaming_rejects_bad_arguments(models, kwargs, match):
    _, model = models()
    codes, phones, spec = _inputs(1, 9, 4, model.args.n_symbols)
    with pytest.raises(PrimeSpeechError, match=match):
        model.decode_streaming(codes, phones, spec, **kwargs)


@pytest.mark.parametrize("n_prev,n_cur,overlap,search", [
    (5000, 4000, 2560, 320), (3000, 2600, 2328, 320), (1200, 900, 256, 64), (800, 700, 300, 0),
])
def test_sola_join_matches_upstream(oracle, n_prev, n_cur, overlap, search):
    import torch

    upstream_sola = oracle.upstream_sola()
    rng = np.random.default_rng(n_prev + overlap)
    for _ in range(3):
        prev = (0.3 * rng.standard_normal(n_prev)).astype(np.float32)
        cur = (0.3 * rng.standard_normal(n_cur)).astype(np.float32)
        ref = upstream_sola([torch.tensor(prev), torch.tensor(cur)], overlap, search).numpy()
        ours = sola.sola_join(prev, cur, overlap, search)
        assert ours.dtype == np.float32 and ours.shape == ref.shape  # same lag chosen
        assert rel_err(ours, ref) <= SOLA_TOL


def test_sola_finds_a_planted_lag(oracle):
    import torch

    rng = np.random.default_rng(0)
    prev = rng.standard_normal(6000).astype(np.float32)
    for lag in (0, 1, 137, 320):
        cur = np.concatenate([rng.standard_normal(lag), 0.7 * prev[-2560:], rng.standard_normal(900)])
        cur = cur.astype(np.float32)
        assert sola.sola_offset(prev, cur, 2560) == lag
        joined = sola.sola_join(prev, cur, 2560)
        assert joined.shape == (6000 - 2560 + cur.size - lag,)
        ref = oracle.upstream_sola()([torch.tensor(prev), torch.tensor(cur)], 2560).numpy()
        assert rel_err(joined, ref) <= SOLA_TOL


LOOPS = {  # T2S chunks of 60 codes as upstream's streaming T2S would yield them: (lengths, last is None)
    "fixed16": ([16, 16, 16, 12], False),
    "short-final": ([20, 20, 17, 3], False),
    "ends-empty": ([20, 20, 20], True),
    "one-code-chunks": ([16, 1, 1, 20, 22], False),  # the SOLA cross-fade reaches into the kept tail
    "single": ([60], False),
}


@pytest.mark.parametrize("name,speed", [(name, 1.0) for name in LOOPS] + [("fixed16", 1.1), ("one-code-chunks", 1.1)])
def test_stream_loop_matches_upstream(models, oracle, name, speed):
    net, model = models()
    lengths, ends_empty = LOOPS[name]
    codes, phones, spec = _inputs(60, 60, 23, model.args.n_symbols)
    bounds = np.cumsum([0] + lengths)
    chunks = [(codes[a:b], not ends_empty and i == len(lengths) - 1)
              for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))]
    if ends_empty:
        chunks.append((None, True))
    ref = oracle.upstream_stream(net, chunks, phones, spec, speed=speed)
    stream = sola.StreamDecoder(model, phones, spec, speed=speed, noise_scale=0.0)
    ours = [stream.push(c, final) for c, final in chunks]
    assert [p.shape for p in ours] == [p.shape for p in ref]
    whole = np.concatenate(ref)
    for piece, ref_piece in zip(ours, ref, strict=True):
        assert piece.dtype == np.float32
        assert np.abs(piece - ref_piece).max() <= STREAM_TOL * np.abs(whole).max()
    rate = 1280 / speed
    assert abs(whole.size - 60 * rate) <= 2 * rate + 2 * 640  # about 60 codes of audio, as upstream
    with pytest.raises(PrimeSpeechError, match="ended"):
        stream.push(codes[:3], True)


def test_chunk_bookkeeping():
    assert sola.upsample_rate([10, 8, 2, 2, 2], 1.0) == 1280.0
    assert sola.overlap_size(2, sola.upsample_rate([10, 8, 2, 2, 2], 1.1)) == 2328
    assert [sola.chunk_overlap(n, False, 2) for n in (1, 9, 10, 30)] == [11, 3, 2, 2]
    assert sola.chunk_overlap(3, True, 2) == 2
    chunk = np.arange(10, dtype=np.float32)
    emit, keep = sola.next_piece(None, chunk, is_first=True, is_final=False, overlap_size=4)
    np.testing.assert_array_equal(emit, chunk[:6])
    np.testing.assert_array_equal(keep, chunk)
    np.testing.assert_array_equal(sola.held_tail(keep, 4), chunk[6:])
    with pytest.raises(PrimeSpeechError):
        sola.sola_join(chunk, chunk, 11)
