"""ERes2NetV2 (the v2Pro speaker-verification model) in MLX against upstream's `forward3` on identical
random weights.

Upstream's model is built with seeded random weights (`oracle.speaker.build`: conv gain 0.95, BatchNorm
running statistics randomised, eval mode) and saved as the official file is: `torch.save` of its plain
float32 state dict. Ours goes through the one loader (`loading.load_model("speaker", path)`: safe
reader -> sanitize -> safetensors cache -> strict load) in pure MLX (the CPU kernels switched off, as on
every other device). Both see upstream's own Kaldi fbank of a 2 s speech-like clip. Tolerance: max
|ours - upstream| <= 1e-4 x max |upstream| (float32 on CPU).
"""

from __future__ import annotations

import numpy as np
import parity
import pytest
from parity import rel_err
from test_hubert import speech_like

import dora_primespeech_mlx  # noqa: F401  (loads OpenBLAS before mlx)
from dora_primespeech_mlx import loading
from dora_primespeech_mlx.errors import PrimeSpeechError

torch = pytest.importorskip("torch")
mx = pytest.importorskip("mlx.core")

from dora_primespeech_mlx.models import speaker  # noqa: E402
from primespeech_devtools.oracle import speaker as oracle  # noqa: E402

REL_TOL = 1e-4
EMBEDDING_DIM = 20480

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def upstream_model(upstream):
    return oracle.build(seed=0)


@pytest.fixture(scope="module")
def official_ckpt(upstream_model, tmp_path_factory):
    return oracle.write_checkpoint(tmp_path_factory.mktemp("sv") / "pretrained_eres2netv2w24s4ep4.ckpt",
                                   upstream_model)


def test_embedding_matches_upstream_forward3(upstream_model, official_ckpt):
    feats = oracle.fbank(speech_like(2.0, seed=3))[None]  # [1, 198, 80]
    capped = []
    hook = upstream_model.layer4.register_forward_hook(
        lambda _m, _i, out: capped.append(float((out >= speaker.RELU_CAP).float().mean())))
    try:
        ref = oracle.forward3(upstream_model, feats)
    finally:
        hook.remove()
    # a meaningful comparison: neither near zero nor saturated, and the blocks' cap at 20 is exercised
    assert ref.shape == (1, EMBEDDING_DIM)
    assert 1.0 < ref.std() < 100.0
    assert 0.0 < capped[0] < 0.2

    model = parity.load_model("speaker", official_ckpt, kernels=False)
    assert isinstance(model, speaker.Model)
    assert model.args.embedding_dim == EMBEDDING_DIM
    assert loading.is_fresh(official_ckpt.with_suffix(".mlx"), official_ckpt, "speaker")

    ours = model.forward3(mx.array(feats))
    assert ours.shape == (1, EMBEDDING_DIM) and ours.dtype == mx.float32
    err = rel_err(np.array(ours), ref)
    assert err <= REL_TOL, f"max |ours - upstream| = {err:.2e} of the peak {np.abs(ref).max():.1f}"


def _state(upstream_model) -> dict:
    return {k: v.clone() for k, v in upstream_model.state_dict().items()}


def test_strict_load_names_a_missing_key(upstream_model, tmp_path):
    state = _state(upstream_model)
    del state["layer2.1.bns.3.running_var"]
    path = tmp_path / "missing.ckpt"
    torch.save(state, path)
    with pytest.raises(PrimeSpeechError, match=r"missing 1 \(layer2\.1\.bns\.3\.running_var\)"):
        loading.load_model("speaker", path)
    assert not path.with_suffix(".mlx").exists()


def test_strict_load_names_an_extra_key(upstream_model, tmp_path):
    state = _state(upstream_model)
    state["layer1.0.extra.weight"] = torch.zeros(3)
    path = tmp_path / "extra.ckpt"
    torch.save(state, path)
    with pytest.raises(PrimeSpeechError, match=r"unexpected 1 \(layer1\.0\.extra\.weight\)"):
        loading.load_model("speaker", path)


def test_another_file_is_refused_with_what_to_give(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"conv1.weight": torch.zeros(2, 1, 3, 3)}, path)
    with pytest.raises(PrimeSpeechError, match=r"not an ERes2NetV2 .*pretrained_eres2netv2w24s4ep4\.ckpt"):
        loading.load_model("speaker", path)


def test_cli_converts_the_speaker_model(official_ckpt, tmp_path, capsys):
    from dora_primespeech_mlx.cli import main

    assert main(["convert", "--sv", str(official_ckpt), "--out", str(tmp_path / "out")]) == 0
    assert "sv:" in capsys.readouterr().out
    assert loading.conversion_kind(tmp_path / "out") == "speaker"
    assert isinstance(speaker.load_model(tmp_path / "out"), speaker.Model)  # a converted folder loads as it is
