"""SoVITS converter on files written by torch.save exactly as upstream saves them: HParams config
object, fp16 weights, each weight-norm form, each version-header variant; other versions refused."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS preload before MLX)
from dora_primespeech_mlx import loading
from dora_primespeech_mlx.errors import PrimeSpeechError

WAVE_TOL = 1e-4  # max abs waveform difference to upstream, noise_scale 0


@pytest.fixture(scope="session")
def oracle(upstream):
    import torch

    from primespeech_devtools.oracle import sovits

    torch.set_num_threads(1)  # see tests/test_sovits.py
    return sovits


@pytest.fixture(scope="session")
def net_v2(oracle):
    return oracle.shared_upstream("v2")


@pytest.fixture(scope="session")
def net_v1(oracle):
    return oracle.shared_upstream("v1")


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 1024, 9), rng.integers(0, 322, 6),
            (np.abs(rng.standard_normal((1025, 40))) * 2).astype(np.float32))


def _weights(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_official_file_layout(oracle, net_v2, tmp_path):
    """What the oracle writes is what upstream's `savee` writes."""
    from dora_primespeech_mlx.checkpoint import load_checkpoint

    path = oracle.save_official(net_v2, tmp_path / "voice.pth")
    assert path.read_bytes()[:2] == b"PK"
    with zipfile.ZipFile(path) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert b"utils\nHParams" in pkl or b"utils\x94\x8c\x07HParams" in pkl  # a pickled utils.HParams
    ckpt = load_checkpoint(path)
    assert set(ckpt.data) == {"weight", "config", "info"}
    weights = ckpt.data["weight"]
    assert all(v.dtype == np.float16 for k, v in weights.items() if "_codebook.inited" not in k)
    assert not any(k.startswith("enc_q.") for k in weights)
    assert "dec.ups.0.weight_g" in weights and weights["dec.ups.0.weight_g"].shape == (128, 1, 1)
    assert ckpt.data["config"]["model"]["filter_channels"] == 256


@pytest.mark.parametrize("form", ["old", "new", "fused"])
def test_weight_norm_forms(oracle, net_v2, tmp_path, form):
    from dora_primespeech_mlx.checkpoint import load_checkpoint

    path = oracle.save_official(net_v2, tmp_path / f"{form}.pth", weight_norm=form)
    keys = set(load_checkpoint(path).data["weight"])
    marker = {"old": "dec.ups.0.weight_g", "new": "dec.ups.0.parametrizations.weight.original0",
              "fused": "dec.ups.0.weight"}[form]
    assert marker in keys
    reference_path = oracle.save_official(net_v2, tmp_path / "reference.pth", weight_norm="old")
    ours = _weights(loading.convert("sovits", path, tmp_path / f"{form}.mlx"))
    old = _weights(loading.convert("sovits", reference_path, tmp_path / "reference.mlx"))
    assert set(ours) == set(old)
    for key, value in old.items():
        if form == "fused":  # fused then stored in fp16: equal up to fp16 rounding
            np.testing.assert_allclose(ours[key], value, rtol=2 ** -10, atol=1e-7, err_msg=key)
        else:
            np.testing.assert_array_equal(ours[key], value, err_msg=key)
    codes, phones, spec = _inputs()
    model = loading.load_model("sovits", tmp_path / f"{form}.mlx")
    ref = oracle.upstream_decode(net_v2, codes, phones, spec)
    tol = WAVE_TOL if form != "fused" else 5e-3  # fused weights were rounded to fp16 after fusing (seen: 1.4e-3)
    assert np.abs(model.decode(codes, phones, spec, noise_scale=0.0) - ref).max() <= tol


@pytest.mark.parametrize("header,version", [(None, "v1"), ("v1", "v1"), (None, "v2"), ("v2", "v2")])
def test_supported_headers(oracle, net_v1, net_v2, tmp_path, header, version):

    net = net_v1 if version == "v1" else net_v2
    path = oracle.save_official(net, tmp_path / "voice.pth", header=header)
    if header:
        assert path.read_bytes()[:2] == oracle.HEADERS[header]
    model = loading.load_model("sovits", path)
    assert model.version == version
    codes, phones, spec = _inputs(1)
    ref = oracle.upstream_decode(net, codes, phones, spec)
    assert np.abs(model.decode(codes, phones, spec, noise_scale=0.0) - ref).max() <= WAVE_TOL


@pytest.mark.parametrize("header", ["v3", "v3-lora", "v4-lora"])
def test_newer_headers_refused(oracle, net_v2, tmp_path, header):

    path = oracle.save_official(net_v2, tmp_path / "voice.pth", header=header)
    with pytest.raises(PrimeSpeechError, match=f"GPT-SoVITS {header} .*only v1, v2, v2Pro and v2ProPlus"):
        loading.load_model("sovits", path)
    assert not (tmp_path / "voice.mlx").exists()


@pytest.fixture(scope="session")
def v2pro_weights(oracle):
    """A real upstream v2Pro state dict (untrained: only its keys and shapes matter here)."""
    import copy

    from module.models import SynthesizerTrn

    hps = copy.deepcopy(oracle.small_config())
    pro = oracle.s2_config("s2v2Pro.json")["model"]
    hps["model"]["gin_channels"] = pro["gin_channels"]
    net = SynthesizerTrn(1025, 32, n_speakers=300, **dict(hps["model"], version="v2Pro",
                                                            semantic_frame_rate="25hz")).eval()
    weights = oracle.state_dict_fp16(net)
    assert "sv_emb.weight" in weights and "ge_to512.weight" in weights and "prelu.weight" in weights
    return weights, hps


def test_v2pro_told_by_keys_config_and_width(oracle, v2pro_weights, tmp_path):
    """Without a header: the speaker layers mark v2Pro/v2ProPlus, the config names which, and a silent
    config is read from the generator's width (768 for v2ProPlus); a v2Pro header without the layers is
    a damaged file."""
    weights, hps = v2pro_weights
    plain = oracle.save_official(None, tmp_path / "pro.pth", weights=weights, version="v2Pro", hps=hps)
    assert loading.load_model("sovits", plain).version == "v2Pro"
    assert loading.sovits_version(plain) == "v2Pro"  # for `primespeech-mlx voices`: from the conversion
    state = {k: v.numpy() for k, v in weights.items()}
    assert loading.detect_sovits_version(state, {}, None) == "v2Pro"
    assert loading.detect_sovits_version(state, {"model": {"version": "v2ProPlus"}}, None) == "v2ProPlus"
    wide = dict(state, **{"dec.conv_pre.weight": np.zeros((768, 192, 7), np.float16)})
    assert loading.detect_sovits_version(wide, {}, None) == "v2ProPlus"
    assert loading.detect_sovits_version(wide, {}, "v2Pro") == "v2Pro"  # the header decides
    plain_v2 = {k: v for k, v in state.items() if not k.startswith(("sv_emb.", "ge_to512.", "prelu."))}
    with pytest.raises(PrimeSpeechError, match="says GPT-SoVITS v2ProPlus but has no speaker-verification"):
        loading.detect_sovits_version(plain_v2, {}, "v2ProPlus")
    damaged = oracle.save_official(None, tmp_path / "damaged.pth", weights={
        k: v for k, v in weights.items() if not k.startswith("sv_emb.")}, version="v2Pro", hps=hps)
    with pytest.raises(PrimeSpeechError, match="missing 2 .*sv_emb"):
        loading.load_model("sovits", damaged)


def test_v3_v4_refused(oracle, net_v2, tmp_path):
    import torch


    weights = oracle.state_dict_fp16(net_v2)
    weights["cfm.estimator.proj_in.weight"] = torch.zeros(8, 8, dtype=torch.float16)
    path = oracle.save_official(None, tmp_path / "v4.pth", weights=weights, version="v4")
    with pytest.raises(PrimeSpeechError, match="GPT-SoVITS v4 .*CFM"):
        loading.load_model("sovits", path)
    path = oracle.save_official(net_v2, tmp_path / "cfgv3.pth", version="v3")
    with pytest.raises(PrimeSpeechError, match="GPT-SoVITS v3 "):
        loading.load_model("sovits", path)


def test_strict_and_training_keys(oracle, net_v2, tmp_path):
    import torch


    weights = oracle.state_dict_fp16(net_v2)
    extra = dict(weights)
    extra["enc_q.pre.weight"] = torch.zeros(192, 1025, 1, dtype=torch.float16)  # training only: dropped
    model = loading.load_model("sovits", oracle.save_official(net_v2, tmp_path / "extra.pth", weights=extra))
    assert model.version == "v2"
    missing = {k: v for k, v in weights.items() if k != "enc_p.proj.weight"}
    with pytest.raises(PrimeSpeechError, match="missing 1 .*enc_p.proj.weight"):
        loading.load_model("sovits", oracle.save_official(net_v2, tmp_path / "missing.pth", weights=missing))
    half_pair = {k: v for k, v in weights.items() if k != "dec.ups.2.weight_v"}
    with pytest.raises(PrimeSpeechError, match="incomplete weight-norm pair at dec.ups.2"):
        loading.load_model("sovits", oracle.save_official(net_v2, tmp_path / "half.pth", weights=half_pair))
    odd = {k: v for k, v in weights.items() if not k.startswith("enc_p.text_embedding")}
    with pytest.raises(PrimeSpeechError, match="not a GPT-SoVITS SoVITS checkpoint"):
        loading.load_model("sovits", oracle.save_official(net_v2, tmp_path / "odd.pth", weights=odd))


def test_cli_convert_and_cache(oracle, net_v2, tmp_path):
    from dora_primespeech_mlx import cli

    path = oracle.save_official(net_v2, tmp_path / "voice.pth")
    out = tmp_path / "converted"
    assert cli.main(["convert", "--sovits", str(path), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["version"] == "v2" and config["filter_channels"] == 256
    assert config["conversion"]["kind"] == "sovits"
    from_folder = loading.load_model("sovits", out)
    codes, phones, spec = _inputs(2)
    ref = oracle.upstream_decode(net_v2, codes, phones, spec)
    assert np.abs(from_folder.decode(codes, phones, spec, noise_scale=0.0) - ref).max() <= WAVE_TOL
    # load_model on the .pth converts once beside it and then reuses the cache
    loading.load_model("sovits", path)
    cached = tmp_path / "voice.mlx" / "model.safetensors"
    stamp = cached.stat().st_mtime_ns
    loading.load_model("sovits", path)
    assert cached.stat().st_mtime_ns == stamp
    with pytest.raises(PrimeSpeechError, match="not found"):
        loading.load_model("sovits", tmp_path / "absent.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PrimeSpeechError):
        loading.load_model("sovits", junk)
