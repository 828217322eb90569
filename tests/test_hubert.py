"""CNHuBERT in MLX against upstream's pure-torch HubertInferenceModel on identical random weights.

The weights are written as the official `chinese-hubert-base/pytorch_model.bin` (torch.save, fp16,
Hugging Face key names) and go through our converter; upstream loads the same folder with its own
loader. Both of our paths are checked: the pure-MLX model (what every device runs) and the model
with the CPU accelerator's native twins installed (`cpu.encoders.install`). Tolerance: max |ours -
upstream| <= 1e-4 x max |upstream| (float32 on CPU).
"""

from __future__ import annotations

import gc
import json

import numpy as np
import parity
import pytest
from parity import rel_err

import dora_primespeech_mlx  # noqa: F401  (loads OpenBLAS before mlx)
from dora_primespeech_mlx import loading
from dora_primespeech_mlx.errors import PrimeSpeechError

torch = pytest.importorskip("torch")
mx = pytest.importorskip("mlx.core")

from mlx.utils import tree_flatten  # noqa: E402

from dora_primespeech_mlx.cpu import encoders as cpu_encoders  # noqa: E402
from dora_primespeech_mlx.models import hubert  # noqa: E402
from primespeech_devtools.oracle import encoders as oracle  # noqa: E402

REL_TOL = 1e-4
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
        "conv_dim": [32] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}


def speech_like(seconds: float, seed: int = 0, sample_rate: int = 16000) -> np.ndarray:
    """A voiced, amplitude-modulated signal with noise: varied enough that every frame differs."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.1 * t) ** 2
    wave = 0.15 * envelope * voiced + 0.02 * rng.standard_normal(t.shape)
    return wave.astype(np.float32)


pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="session")
def full_folder(upstream):
    return oracle.model_folder("hubert", seed=0)


def load(folder, path: str) -> hubert.Model:
    """The model on one path: "accelerated" (as loaded on this CPU: the native twins installed) or
    "mlx" (loaded with the CPU kernels switched off: pure MLX, as on every other device)."""
    model = parity.load_model("hubert", folder, kernels=path != "mlx")
    # the native CPU kernels are built and serve this model, unless switched off
    assert isinstance(model.encoder, cpu_encoders.HubertEncoder if path == "accelerated" else hubert.Encoder)
    return model


@pytest.fixture(scope="session")
def full_model(full_folder):
    return load(full_folder, "accelerated")


@pytest.fixture(scope="session")
def tiny_folder(upstream):
    return oracle.model_folder("hubert", seed=1, overrides=TINY)


@pytest.mark.parametrize("seconds", [1.0, 3.3, 10.0])
def test_last_hidden_state_matches_upstream(full_folder, full_model, seconds):
    wave = speech_like(seconds, seed=int(seconds * 10))
    ref = oracle.hubert_reference(full_folder, wave)
    ours = np.array(full_model(mx.array(wave)))
    assert ours.shape == (1, full_model.args.num_frames(wave.shape[0]), 768) == (1,) + ref.shape
    assert rel_err(ours[0], ref) <= REL_TOL
    # Informative: frames differ from each other and nothing is saturated.
    assert ref.std(axis=0).mean() > 0.1 * ref.std()
    assert np.abs(ref).max() < 20


def test_pure_mlx_and_accelerated_models_agree(full_folder, full_model):
    # The pure-MLX model is what a GPU runs; on this CPU the accelerated one serves. Both must give
    # upstream's result, and so agree with each other.
    pure = load(full_folder, "mlx")
    wave = speech_like(3.3, seed=11)
    ref = oracle.hubert_reference(full_folder, wave)
    ours = np.array(pure(mx.array(wave)))[0]
    assert rel_err(ours, ref) <= REL_TOL
    assert rel_err(np.array(full_model(mx.array(wave)))[0], ours) <= REL_TOL


@pytest.mark.parametrize("path", ["accelerated", "mlx"])
def test_batch_and_unbatched_inputs_agree(tiny_folder, path):
    model = load(tiny_folder, path)
    waves = np.stack([speech_like(1.2, seed=3), speech_like(1.2, seed=4)])
    batched = np.array(model(mx.array(waves)))
    for i in range(2):
        single = np.array(model(mx.array(waves[i])))[0]
        np.testing.assert_allclose(batched[i], single, rtol=0, atol=1e-5)
        assert rel_err(single, oracle.hubert_reference(tiny_folder, waves[i])) <= REL_TOL


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_threads_match_upstream(tiny_folder, threads, monkeypatch):
    # The native twins split their work over `threads` pool threads: products by output features,
    # the first layer, windows and attention by time pieces. Any split must give upstream's result.
    monkeypatch.setattr(cpu_encoders, "pool_threads", lambda: threads)
    model = load(tiny_folder, "accelerated")
    waves = np.stack([speech_like(2.1, seed=8), speech_like(2.1, seed=9)])
    ours = np.array(model(mx.array(waves)))
    for i in range(2):
        assert rel_err(ours[i], oracle.hubert_reference(tiny_folder, waves[i])) <= REL_TOL


def test_split_range():
    assert cpu_encoders.split_range(10, 2) == [(0, 5), (5, 10)]
    assert cpu_encoders.split_range(1, 2) == [(0, 1)]
    assert cpu_encoders.split_range(7, 3) == [(0, 2), (2, 4), (4, 7)]
    assert 1 <= cpu_encoders.pool_threads() <= cpu_encoders.MAX_THREADS


def parameter_bytes(model) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def test_accelerated_model_holds_no_weight_twice(full_folder):
    # The twins read the MLX weights in place; the positional conv's weight is re-laid out once and
    # its MLX layout released. Only the derived W0 + W2 of the pair convolutions are new.
    model = load(full_folder, "mlx")
    before, active = parameter_bytes(model), mx.get_active_memory()
    assert cpu_encoders.install(model) and not cpu_encoders.install(model)  # once
    gc.collect()
    derived = sum(v.nbytes for v in model.feature_extractor.outer_sums.values())
    assert 0 < derived < 0.05 * before
    assert parameter_bytes(model) == before + derived
    assert mx.get_active_memory() - active <= derived
    pointers = [np.array(v, copy=False).ctypes.data for _, v in tree_flatten(model.parameters())]
    assert len(set(pointers)) == len(pointers)


@pytest.mark.parametrize("path", ["accelerated", "mlx"])
def test_input_is_not_normalised(tiny_folder, path):
    # TTS.py calls the model on the raw waveform, skipping the folder's zero-mean/unit-variance
    # feature extractor: with that step an affine change of the input would change nothing.
    model = load(tiny_folder, path)
    wave = speech_like(1.0, seed=5)
    a = np.array(model(mx.array(wave)))[0]
    b = np.array(model(mx.array(wave * 3.0 + 0.1)))[0]
    assert np.max(np.abs(a - b)) > 1e-3
    assert rel_err(b, oracle.hubert_reference(tiny_folder, wave * 3.0 + 0.1)) <= REL_TOL


def test_weight_norm_forms_and_safetensors_convert_alike(tiny_folder, tmp_path):
    from safetensors.numpy import save_file

    from dora_primespeech_mlx.checkpoint import read_checkpoint
    from dora_primespeech_mlx.loading import load_converted

    state = read_checkpoint(tiny_folder / "pytorch_model.bin")
    assert "encoder.pos_conv_embed.conv.weight_g" in state and "masked_spec_embed" in state
    renamed = {}
    for key, value in state.items():
        key = key.replace("conv.weight_g", "conv.parametrizations.weight.original0")
        key = key.replace("conv.weight_v", "conv.parametrizations.weight.original1")
        renamed["hubert." + key] = value
    other = tmp_path / "chinese-hubert-base"
    other.mkdir()
    save_file(renamed, str(other / "model.safetensors"))
    (other / "config.json").write_text((tiny_folder / "config.json").read_text())

    a, _ = load_converted(loading.convert("hubert", tiny_folder, tmp_path / "a"))
    b, _ = load_converted(loading.convert("hubert", other))
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(np.array(a[key]), np.array(b[key]), err_msg=key)

    # The fused weight is g * v / ||v|| with the norm over every axis but the kernel one (dim=2).
    g = state["encoder.pos_conv_embed.conv.weight_g"].astype(np.float32)
    v = state["encoder.pos_conv_embed.conv.weight_v"].astype(np.float32)
    expected = v * g / np.sqrt((v * v).sum(axis=(0, 1), keepdims=True))
    np.testing.assert_allclose(np.array(a["encoder.pos_conv_embed.conv.weight"]),
                               np.moveaxis(expected, 1, 2), rtol=1e-6, atol=1e-7)


def test_conversion_is_cached_and_redone_on_change(tiny_folder, tmp_path):
    import shutil

    folder = tmp_path / "moyoyo" / "chinese-hubert-base"
    shutil.copytree(tiny_folder, folder, ignore=shutil.ignore_patterns("mlx"))
    out = loading.convert("hubert", folder)
    assert out == folder / "mlx"
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert loading.convert("hubert", folder) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # skipped: unchanged source
    oracle.write_hubert_folder(folder, seed=7, overrides=TINY)
    loading.convert("hubert", folder)
    assert (out / "model.safetensors").stat().st_mtime_ns != stamp  # new weights: converted again
    model = loading.load_model("hubert", out)  # a converted folder loads directly
    wave = speech_like(1.0, seed=6)
    assert rel_err(np.array(model(mx.array(wave)))[0], oracle.hubert_reference(folder, wave)) <= REL_TOL


def test_cli_convert_dispatches(tiny_folder, tmp_path, capsys):
    from dora_primespeech_mlx.cli import main

    assert main(["convert", "--hubert", str(tiny_folder), "--out", str(tmp_path / "out")]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["conversion"]["kind"] == "hubert" and config["hidden_size"] == 64
    assert "hubert" in capsys.readouterr().out


def test_strict_weights_and_config(tiny_folder, tmp_path):
    from dora_primespeech_mlx.checkpoint import read_checkpoint

    state = read_checkpoint(tiny_folder / "pytorch_model.bin")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_folder / "config.json").read_text())
    torch.save({k: torch.from_numpy(v) for k, v in state.items()
                if not k.startswith("encoder.layers.1.")}, bad / "pytorch_model.bin")
    with pytest.raises(PrimeSpeechError, match="missing"):
        loading.convert("hubert", bad)
    state["encoder.extra.weight"] = np.zeros(3, np.float16)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, bad / "pytorch_model.bin")
    with pytest.raises(PrimeSpeechError, match="unexpected"):
        loading.convert("hubert", bad)
    with pytest.raises(PrimeSpeechError, match="feat_extract_norm"):
        hubert.ModelArgs.from_dict({"feat_extract_norm": "layer"})
    with pytest.raises(PrimeSpeechError, match="too short"):
        loading.load_model("hubert", tiny_folder)(mx.zeros((300,)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PrimeSpeechError, match="no config.json"):
        loading.convert("hubert", empty)
    (empty / "config.json").write_text("{}")
    with pytest.raises(PrimeSpeechError, match="neither pytorch_model.bin nor model.safetensors"):
        loading.convert("hubert", empty)
