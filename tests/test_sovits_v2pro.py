"""v2Pro / v2ProPlus SoVITS and their speaker embedding against upstream on identical random weights.

Upstream `SynthesizerTrn(version="v2Pro"|"v2ProPlus")` gets seeded random fp16-valued weights
(oracle.sovits; `sv_emb` at half scale so the 20480-wide embedding moves the style vector without
saturating it) from the version's shipped config (s2v2Pro.json / s2v2ProPlus.json, shrunk; the whole
v2ProPlus generator, 768 wide with a first kernel of 20, is checked against upstream's, in MLX and
native, in test_vocoder_kernels.py), and is written as the official file: `torch.save`, the
two-byte version header `05`/`06` in place of `PK`. The speaker model is upstream's ERes2NetV2 with
random weights (oracle.speaker, gain 0.95), saved as its official plain state dict.

Tolerances (float32 on the CPU, noise_scale 0): the embedding within EMB_TOL of its peak; the waveform
within WAVE_TOL (max abs; the waveform std is ~0.3) given upstream's embedding, within OWN_EMB_TOL given
ours (our Kaldi fbank and model: the embedding's 1e-5-of-peak differences pass through `sv_emb`);
streaming within STREAM_TOL of the peak, as for v2.
"""

from __future__ import annotations

import numpy as np
import pytest
from parity import rel_err
from test_hubert import speech_like
from test_sovits import _inputs

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS preload before MLX)
from dora_primespeech_mlx import sola
from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.models import sovits, speaker

EMB_TOL = 1e-4
WAVE_TOL = 1e-4
OWN_EMB_TOL = 1e-3
STREAM_TOL = 1e-4
VERSIONS = ("v2Pro", "v2ProPlus")

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def oracle(upstream):
    from primespeech_devtools.oracle import sovits as oracle_sovits

    return oracle_sovits


@pytest.fixture(scope="module")
def sv(upstream, tmp_path_factory):
    """(upstream ERes2NetV2, its official file, two 3 s clips at 16 kHz, upstream's embedding of each)."""
    from primespeech_devtools.oracle import speaker as oracle_speaker

    net = oracle_speaker.build(seed=0)
    path = oracle_speaker.write_checkpoint(tmp_path_factory.mktemp("sv") / "pretrained_eres2netv2w24s4ep4.ckpt",
                                           net)
    clips = [speech_like(3.0, seed=seed) for seed in (5, 6)]
    embeddings = [oracle_speaker.embedding(net, clip) for clip in clips]
    return net, path, clips, embeddings


@pytest.fixture(scope="module")
def models(oracle, tmp_path_factory):
    """(upstream net, official path, our model) per (version, small, kernels), built lazily and shared."""
    import parity

    built, cache = {}, {}

    def get(version: str, small: bool = True, kernels: bool = False):
        if (version, small) not in built:
            net = oracle.shared_upstream(version, small=small)
            path = oracle.save_official(net, tmp_path_factory.mktemp("sovits") / f"{version}.pth", header=version)
            built[version, small] = net, path
        net, path = built[version, small]
        if (version, small, kernels) not in cache:
            cache[version, small, kernels] = parity.load_model("sovits", path, kernels=kernels)
        return net, path, cache[version, small, kernels]

    return get


def _informative(ref: np.ndarray) -> None:
    assert 0.05 < float(ref.std()) < 0.5
    assert float(np.mean(np.abs(ref) > 0.99)) < 0.01  # not saturated (the vocoder ends in tanh)


def test_embed_matches_upstream(sv):
    net, path, clips, embeddings = sv
    model = speaker.load_model(path)
    assert isinstance(model, speaker.Model)
    for clip, ref in zip(clips, embeddings, strict=True):
        ours = model.embed(clip)
        assert ours.shape == (20480,) and ours.dtype == np.float32
        assert 1.0 < float(ref.std()) < 100.0
        assert rel_err(ours, ref) <= EMB_TOL
    # two clips, two voices: the embeddings differ well beyond the tolerance
    assert rel_err(embeddings[0], embeddings[1]) > 100 * EMB_TOL
    with pytest.raises(PrimeSpeechError, match="mono 16 kHz"):
        model.embed(np.zeros((2, 16000), dtype=np.float32))


CASES = [  # (codes, phones, speed, reference frame counts)
    (9, 7, 1.0, (48,)),
    (14, 11, 1.25, (37,)),
    (6, 5, 0.8, (40, 61)),  # two references: one embedding each, averaged after the PReLU
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"codes{c[0]}-speed{c[2]}-refs{len(c[3])}")
def test_decode_matches_upstream(models, oracle, sv, version, case):
    net, _, model = models(version)
    n_codes, n_phones, speed, frames = case
    codes, phones, specs = _inputs(n_codes * 13 + n_phones, n_codes, n_phones, frames, model.args.n_symbols)
    embeddings = sv[3][:len(specs)]
    refer, emb = (specs, embeddings) if len(specs) > 1 else (specs[0], embeddings[0])
    ours = model.decode(codes, phones, refer, sv_emb=emb, noise_scale=0.0, speed=speed)
    ref = oracle.upstream_decode(net, codes, phones, specs, sv_emb=embeddings, noise_scale=0.0, speed=speed)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= WAVE_TOL
    _informative(ref)


@pytest.mark.parametrize("version", VERSIONS)
def test_decode_with_our_embedding(models, oracle, sv, version):
    net, _, model = models(version)
    _, path, clips, embeddings = sv
    ours_emb = speaker.load_model(path).embed(clips[0])
    codes, phones, specs = _inputs(17, 12, 9, (45,), model.args.n_symbols)
    ours = model.decode(codes, phones, specs[0], sv_emb=ours_emb, noise_scale=0.0)
    ref = oracle.upstream_decode(net, codes, phones, specs, sv_emb=embeddings[:1], noise_scale=0.0)
    assert np.abs(ours - ref).max() <= OWN_EMB_TOL
    # the embedding is really used: the other clip's voice gives other audio
    other = model.decode(codes, phones, specs[0], sv_emb=embeddings[1], noise_scale=0.0)
    assert np.abs(other - ref).mean() > 10 * OWN_EMB_TOL


@pytest.mark.parametrize("version", VERSIONS)
def test_decode_streaming_matches_upstream(models, oracle, sv, version):
    net, _, model = models(version)
    emb = sv[3][0]
    codes, phones, specs = _inputs(29, 26, 13, (47,), model.args.n_symbols)
    first = model.decode_streaming(codes[:12], phones, specs[0], sv_emb=emb, noise_scale=0.0)
    ref_first = oracle.upstream_decode_streaming(net, codes[:12], phones, specs, sv_emb=[emb])
    assert rel_err(first[0], ref_first[0].numpy()) <= STREAM_TOL
    assert rel_err(first[1], ref_first[1][0].numpy()) <= STREAM_TOL
    ours = model.decode_streaming(codes, phones, specs[0], sv_emb=emb, noise_scale=0.0, speed=1.1,
                                  result_length=16, overlap_frames=first[1][:, -4:], padding_length=0)
    ref = oracle.upstream_decode_streaming(net, codes, phones, specs, sv_emb=[emb], speed=1.1, result_length=16,
                                           overlap_frames=ref_first[1][..., -4:], padding_length=0)
    assert ours[0].shape == ref[0].shape
    assert rel_err(ours[0], ref[0].numpy()) <= STREAM_TOL
    assert rel_err(ours[1], ref[1][0].numpy()) <= STREAM_TOL
    _informative(ref[0].numpy())


def test_stream_decoder_matches_upstream_loop(models, oracle, sv):
    """TTS.run's streaming loop (chunks, overlaps, SOLA) with the embedding, chunk for chunk."""
    net, _, model = models("v2ProPlus")
    emb = sv[3][1]
    codes, phones, specs = _inputs(41, 40, 15, (50,), model.args.n_symbols)
    splits = [(codes[:10], False), (codes[10:24], False), (codes[24:30], False), (codes[30:], True)]
    decoder = sola.StreamDecoder(model, phones, specs[0], sv_emb=emb, noise_scale=0.0)
    ours = [decoder.push(chunk, final) for chunk, final in splits]
    ref = oracle.upstream_stream(net, splits, phones, specs, sv_emb=[emb])
    assert len(ours) == len(ref)
    for piece, expected in zip(ours, ref, strict=True):
        assert piece.shape == expected.shape
        assert rel_err(piece, expected) <= STREAM_TOL


@pytest.mark.parametrize("header", [None, "v2Pro", "v2ProPlus"])
def test_version_and_sizes_come_from_the_file(oracle, tmp_path, header):
    """The header decides; without one the speaker layers mark the version, the config (or, silent,
    the generator's width) names it. Sizes are the file's, for both versions."""
    version = header or "v2ProPlus"
    net = oracle.shared_upstream(version)
    path = oracle.save_official(net, tmp_path / "voice.pth", header=header)
    if header:
        assert path.read_bytes()[:2] == oracle.HEADERS[header]
    model = sovits.load_model(path)
    assert isinstance(model, sovits.Model) and model.version == version and model.args.has_speaker
    cfg = net.hps["model"]
    for name in ("gin_channels", "upsample_initial_channel", "upsample_kernel_sizes", "filter_channels", "n_layers"):
        assert getattr(model.args, name) == cfg[name], name
    assert model.args.ref_bins == 704


def test_speaker_embedding_rules(models, tmp_path, oracle, sv):
    _, _, pro = models("v2Pro")
    codes, phones, specs = _inputs(1, 5, 4, (30, 31), pro.args.n_symbols)
    with pytest.raises(PrimeSpeechError, match="needs the reference's speaker embedding"):
        pro.decode(codes, phones, specs[0], noise_scale=0.0)
    with pytest.raises(PrimeSpeechError, match=r"speaker embedding must be \[20480\]"):
        pro.decode(codes, phones, specs[0], sv_emb=np.zeros(192, np.float32))
    with pytest.raises(PrimeSpeechError, match="1 speaker embedding.* for 2 reference"):
        pro.decode(codes, phones, specs, sv_emb=[sv[3][0]])
    with pytest.raises(PrimeSpeechError, match="needs the reference's speaker embedding"):
        sola.StreamDecoder(pro, phones, specs[0]).push(codes, True)
    v2 = sovits.load_model(oracle.save_official(oracle.shared_upstream("v2"), tmp_path / "v2.pth"))
    with pytest.raises(PrimeSpeechError, match="v2 SoVITS model takes no speaker embedding"):
        v2.decode(codes, phones, specs[0], sv_emb=sv[3][0])


@pytest.mark.parametrize("version", VERSIONS)
def test_decode_batch_rows_match_upstream(models, oracle, sv, version):
    """Rows of different lengths in one pass (test_sovits_batch.py), each upstream's one-row decode."""
    net, _, model = models(version)
    rows = [_inputs(40 + n, n, p, (1,), model.args.n_symbols)[:2] for n, p in ((9, 7), (3, 12), (14, 5))]
    spec = _inputs(40, 1, 1, (48,), model.args.n_symbols)[2][0]
    batch = model.decode_batch(rows, spec, sv_emb=sv[3][0], noise_scale=0.0, speed=1.1)
    for (codes, phones), ours in zip(rows, batch, strict=True):
        ref = oracle.upstream_decode(net, codes, phones, [spec], sv_emb=sv[3][:1], noise_scale=0.0, speed=1.1)
        assert ours.shape == ref.shape and np.abs(ours - ref).max() <= WAVE_TOL
        _informative(ref)
