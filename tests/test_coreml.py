"""Core ML export of CNHuBERT and Chinese RoBERTa, proven on Linux as far as Linux allows.

Core ML itself cannot run here (coremltools' Linux wheel has no Core ML bindings), so the proof is:
1. the packages load as specs (`skip_model_load=True`) with the designed inputs, outputs, dtypes and
   flexible shapes;
2. every weight stored in a package equals the official checkpoint's tensor (read independently of
   the exporter's own mapping), so a wrong mapping cannot hide;
3. the saved MIL program, evaluated op by op by our numpy interpreter, equals the MLX encoders
   (1e-4 relative in float32; the float16 emulation is reported with a looser bound);
4. the same at full size, once per session.
Random weights are written in the official format with torch.save by the encoders' oracle (small
models) or by `_write_full_size_folder` (full size, fast).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS before MLX)

ct = pytest.importorskip("coremltools", reason="coremltools (extra `coreml`) is not installed")

import coreml_reference as reference  # noqa: E402
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
import parity  # noqa: E402
from mlx.utils import tree_flatten, tree_unflatten  # noqa: E402

from dora_primespeech_mlx import loading  # noqa: E402
from dora_primespeech_mlx.checkpoint import read_checkpoint  # noqa: E402
from dora_primespeech_mlx.coreml import export, programs, readback  # noqa: E402
from dora_primespeech_mlx.errors import PrimeSpeechError  # noqa: E402

SMALL_HUBERT = {"hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 192,
                "conv_dim": [48] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}
SMALL_ROBERTA = {"hidden_size": 64, "num_hidden_layers": 5, "num_attention_heads": 4, "intermediate_size": 128}
FLOAT32_RTOL = 1e-4  # our interpreter in float32 vs MLX in float32, relative to the output's max |value|
FLOAT16_RTOL = 1e-2  # the float16 emulation vs MLX in float32 (measured about 2e-3)
TEXT = "今天天气很好，我们一起去公园散步吧。"


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max() / np.abs(b).max())


@pytest.fixture(scope="session")
def small_folders(upstream):
    from primespeech_devtools.oracle.encoders import model_folder

    return {"hubert": model_folder("hubert", 3, SMALL_HUBERT), "roberta": model_folder("roberta", 3, SMALL_ROBERTA)}


@pytest.fixture(scope="session")
def small_packages(small_folders):
    return {kind: export.export_encoder(kind, folder).package for kind, folder in small_folders.items()}


def _mlx_with_package_weights(kind: str, converted: Path):
    """The MLX encoder with every weight rounded to float16, as the package stores it (the HuBERT
    waveform stage stays float32 there, and its source weights are float16 values already)."""
    # the pure-MLX encoder (the one the packages mirror), not the CPU twins
    model = parity.load_model(kind, converted, kernels=False)
    rounded = [(k, v.astype(mx.float16).astype(mx.float32)) for k, v in tree_flatten(model.parameters())]
    model.update(tree_unflatten(rounded))
    return model


# -- what the official checkpoint says each package constant must be (independent of the exporter) --
def _official_to_package(kind: str, folder: Path) -> dict[str, np.ndarray]:
    """{constant name: value} from pytorch_model.bin with Hugging Face keys; the positional conv's
    weight norm is fused here in float64 (compared to float16 within half an ulp)."""
    config = json.loads((folder / "config.json").read_text())
    state = read_checkpoint(folder / "pytorch_model.bin")
    out = {}
    if kind == "hubert":
        fp32 = {"feature_extractor.conv_layers.0.conv.weight", "feature_extractor.conv_layers.0.layer_norm.weight",
                "feature_extractor.conv_layers.0.layer_norm.bias"}
        for key, value in state.items():
            key = key.removeprefix("hubert.")
            if key == "masked_spec_embed" or key.endswith(("weight_g", "weight_v")):
                continue
            out[key.replace(".", "_")] = value.astype(np.float32 if key in fp32 else np.float16)
        g = state["encoder.pos_conv_embed.conv.weight_g"].astype(np.float64)
        v = state["encoder.pos_conv_embed.conv.weight_v"].astype(np.float64)
        out["encoder_pos_conv_embed_conv_weight"] = v * g / np.sqrt((v * v).sum(axis=(0, 1), keepdims=True))
    else:
        used_layers = config["num_hidden_layers"] - 2  # hidden_states[-3]
        for key, value in state.items():
            key = key.removeprefix("bert.")
            if key.startswith(("cls.", "pooler.")) or key == "embeddings.position_ids":
                continue
            if key.startswith("encoder.layer.") and int(key.split(".")[2]) >= used_layers:
                continue
            if key == "embeddings.token_type_embeddings.weight":
                value = value[0]
            out[key.replace(".", "_")] = value.astype(np.float16)
    return out


def _check_package_against_official(kind: str, folder: Path, package: Path) -> int:
    want = _official_to_package(kind, folder)
    program = readback.read_program(package)
    found = readback.program_constants(program)
    float_consts = {k for k, v in found.items() if v.dtype.kind == "f"}
    assert float_consts == set(want), (sorted(float_consts ^ set(want))[:5])
    for name, value in want.items():
        got = found[name]
        if name == "encoder_pos_conv_embed_conv_weight":
            assert got.dtype == np.float16 and got.shape == value.shape
            np.testing.assert_allclose(got.astype(np.float64), value, rtol=2.0**-11, atol=2.0**-24)
        else:
            assert got.dtype == value.dtype and got.shape == value.shape, name
            assert np.array_equal(got, value), name
    return len(want)


def _check_interface(kind: str, package: Path, *, layers: int | None = None):
    model = ct.models.MLModel(str(package), skip_model_load=True)
    spec = model.get_spec()
    assert spec.WhichOneof("Type") == "mlProgram"
    info = readback.package_info(package, spec)
    (inp,), (out,) = info.inputs, info.outputs
    assert (out.name, out.dtype) == ("hidden_states", "float16")
    if kind == "hubert":
        assert (inp.name, inp.dtype) == ("waveform", "float32")
        assert inp.ranges == ((1, 1), (400, 169_600))  # 10.6 s at 16 kHz
        assert info.metadata["primespeech.output"] == "last_hidden_state"
    else:
        assert (inp.name, inp.dtype) == ("input_ids", "int32")
        assert sorted(s[1] for s in inp.enumerated) == list(programs.BERT_LENGTHS)
        assert max(s[1] for s in inp.enumerated) == 512
        assert all(s[0] == 1 for s in inp.enumerated)
        assert info.metadata["primespeech.output"] == f"hidden_states[{layers}]"
    assert info.metadata["primespeech.kind"] == kind
    assert model.user_defined_metadata["primespeech.kind"] == kind


# -- small models: fast, exhaustive ----------------------------------------------------------------
def test_small_packages_have_the_designed_interface(small_packages):
    _check_interface("hubert", small_packages["hubert"])
    _check_interface("roberta", small_packages["roberta"], layers=SMALL_ROBERTA["num_hidden_layers"] - 2)


def test_small_package_weights_equal_the_official_checkpoint(small_folders, small_packages):
    for kind in ("hubert", "roberta"):
        count = _check_package_against_official(kind, small_folders[kind], small_packages[kind])
        assert count > 20


def test_verification_catches_a_wrong_mapping(small_folders, small_packages):
    from safetensors.numpy import load_file

    converted = small_packages["roberta"].parent
    weights = load_file(str(converted / "model.safetensors"))
    shape = programs.BertShape.from_config(json.loads((converted / "config.json").read_text()))
    keys = programs.bert_keys(shape)
    export.verify_package(small_packages["roberta"], "roberta", weights, keys, converted)  # the real one passes

    swapped = dict(weights)
    q, k = "encoder.layer.1.attention.self.query.weight", "encoder.layer.1.attention.self.key.weight"
    swapped[q], swapped[k] = weights[k], weights[q]
    with pytest.raises(PrimeSpeechError, match="query_weight: values differ"):
        export.verify_package(small_packages["roberta"], "roberta", swapped, keys, converted)
    nudged = dict(weights)
    ln = "encoder.layer.0.output.LayerNorm.bias"
    nudged[ln] = weights[ln].copy()
    nudged[ln][3] += np.float16(0.01)
    problems = readback.compare_constants(readback.program_constants(readback.read_program(small_packages["roberta"])),
                                         programs.expected_constants("roberta", nudged, keys))
    assert len(problems) == 1 and problems[0].startswith("encoder_layer_0_output_LayerNorm_bias: values differ")


@pytest.mark.parametrize("samples", [400, 401, 3_210, 16_000 + 123])
def test_hubert_program_equals_the_mlx_encoder(small_packages, samples):
    package = small_packages["hubert"]
    program = readback.read_program(package)
    wave = np.random.default_rng(samples).standard_normal(samples).astype(np.float32) * 0.3
    got = reference.run_program(program, {"waveform": wave[None]})["hidden_states"]
    model = _mlx_with_package_weights("hubert", package.parent)
    want = np.array(model(mx.array(wave)[None]))
    assert got.shape == want.shape == (1, (samples - 400) // 320 + 1, SMALL_HUBERT["hidden_size"])
    assert np.abs(want).max() > 0.5 and want.std() > 0.1  # informative, not saturated / ~0
    assert _rel(got, want) < FLOAT32_RTOL


def test_bert_program_equals_the_mlx_encoder_with_padding(small_folders, small_packages):
    from dora_primespeech_mlx.models.roberta import load_tokenizer

    package = small_packages["roberta"]
    program = readback.read_program(package)
    ids = load_tokenizer(small_folders["roberta"]).encode(TEXT).ids
    model = _mlx_with_package_weights("roberta", package.parent)
    want = np.array(model(mx.array([ids])))
    assert np.abs(want).max() > 0.5 and want.std() > 0.1
    outputs = []
    for length in (32, 64):  # both enumerated; the pad rows must not leak into the real ones
        padded = np.zeros((1, length), np.int32)
        padded[0, :len(ids)] = ids
        outputs.append(reference.run_program(program, {"input_ids": padded})["hidden_states"][:, :len(ids)])
        assert _rel(outputs[-1], want) < FLOAT32_RTOL
    assert _rel(outputs[0], outputs[1]) < 1e-6


def test_float16_emulation_stays_close(small_folders, small_packages):
    from dora_primespeech_mlx.models import roberta

    wave = np.random.default_rng(0).standard_normal(8_000).astype(np.float32) * 0.3
    program = readback.read_program(small_packages["hubert"])
    got = reference.run_program(program, {"waveform": wave[None]}, precision="float16")["hidden_states"]
    assert _rel(got, np.array(loading.load_model("hubert", small_packages["hubert"].parent)(mx.array(wave)))) < FLOAT16_RTOL
    ids = roberta.load_tokenizer(small_folders["roberta"]).encode(TEXT).ids
    padded = np.zeros((1, 32), np.int32)
    padded[0, :len(ids)] = ids
    program = readback.read_program(small_packages["roberta"])
    got = reference.run_program(program, {"input_ids": padded}, precision="float16")["hidden_states"]
    want = np.array(loading.load_model("roberta", small_packages["roberta"].parent)(mx.array([ids])))
    assert _rel(got[:, :len(ids)], want) < FLOAT16_RTOL


def test_export_is_cached_and_a_changed_conversion_makes_it_stale(small_folders, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = shutil.copytree(small_folders["roberta"], tmp_path / "roberta", ignore=shutil.ignore_patterns("mlx"))
    first = export.export_encoder("roberta", folder)
    assert first.exported
    converted = first.package.parent
    again = export.export_encoder("roberta", converted)  # a converted folder is accepted as well
    assert not again.exported and again.package == first.package
    assert export.package_problem(converted, "roberta") is None

    weights = load_file(str(converted / "model.safetensors"))
    weights["embeddings.LayerNorm.bias"] = weights["embeddings.LayerNorm.bias"] + np.float16(1)
    save_file(weights, str(converted / "model.safetensors"), metadata={"format": "mlx"})
    assert "stale" in export.package_problem(converted, "roberta")
    assert export.export_encoder("roberta", converted).exported
    assert export.package_problem(converted, "roberta") is None


def test_cli_exports_and_checks(small_folders, tmp_path, capsys):
    from dora_primespeech_mlx.coreml.cli import add_coreml_command

    root = tmp_path / "models"
    for kind in export.KINDS:
        shutil.copytree(small_folders[kind], export.model_folder(root, kind), ignore=shutil.ignore_patterns("mlx"))
    parser = argparse.ArgumentParser()
    add_coreml_command(parser.add_subparsers(dest="command"))

    args = parser.parse_args(["coreml-export", "--model-root", str(root), "--check"])
    assert args.func(args) == 1  # nothing exported yet
    report = json.loads(capsys.readouterr().out)
    assert [r["kind"] for r in report] == ["hubert", "roberta"] and all("problem" in r for r in report)

    args = parser.parse_args(["coreml-export", "--model-root", str(root)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "hubert: exported" in out and "roberta: exported" in out

    from dora_primespeech_mlx.loading import converted_dir_for, is_fresh

    for kind in export.KINDS:  # exporting leaves each folder's MLX conversion current
        folder = export.model_folder(root, kind)
        assert is_fresh(converted_dir_for(folder), folder, kind)
    args = parser.parse_args(["coreml-export", "--model-root", str(root), "--check"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert all(r["ok"] for r in report)
    assert report[1]["inputs"][0]["name"] == "input_ids"

    args = parser.parse_args(["coreml-export", "--model-root", str(tmp_path / "nowhere")])
    with pytest.raises(PrimeSpeechError, match="folder not found"):
        args.func(args)


def test_missing_coremltools_is_an_actionable_error(monkeypatch):
    from dora_primespeech_mlx.coreml import require_coremltools

    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(PrimeSpeechError, match=r"pip install 'dora-primespeech-mlx\[coreml\]'"):
        require_coremltools()


# -- full size, once per session ---------------------------------------------------------------------
def _write_full_size_folder(kind: str, folder: Path, seed: int) -> Path:
    """The shipped config and a torch.save'd fp16 state dict with every Hugging Face key of the
    upstream module (shapes from a meta-device build); uniform random values at 1/sqrt(fan_in), norms
    near 1. Tensors GPT-SoVITS never reads (MLM head, BERT layers after hidden_states[-3]) are zeros."""
    import torch

    from primespeech_devtools.oracle import import_upstream
    from primespeech_devtools.oracle.encoders import HUBERT_NAME, ROBERTA_NAME, shipped_folder

    import_upstream()
    from types import SimpleNamespace

    name = HUBERT_NAME if kind == "hubert" else ROBERTA_NAME
    config = json.loads((shipped_folder(name) / "config.json").read_text())
    cfg = SimpleNamespace(**config, conv_pos_batch_norm=False)
    with torch.device("meta"):
        if kind == "hubert":
            from feature_extractor.cnhubert import HubertInferenceModel
            module = HubertInferenceModel(cfg)
        else:
            from text.chinese_bert import BertForMaskedLM
            module = BertForMaskedLM(cfg)
    unused = ("cls.",) + tuple(f"layer.{i}." for i in range(config.get("num_hidden_layers", 0) - 2,
                                                            config.get("num_hidden_layers", 0)))
    rng = np.random.default_rng(seed)
    state = {}
    for key, meta in module.state_dict().items():
        shape = tuple(meta.shape)
        if not meta.is_floating_point():
            state[key] = torch.arange(shape[-1]).reshape(shape)
        elif kind == "roberta" and any(u in key for u in unused):
            state[key] = torch.zeros(shape, dtype=torch.float16)
        else:
            if "norm" in key.lower() and key.endswith("weight"):
                value = 1 + 0.2 * (rng.random(shape, dtype=np.float32) - 0.5)
            elif len(shape) >= 2:
                value = (rng.random(shape, dtype=np.float32) - 0.5) * (3.46 / np.sqrt(np.prod(shape[1:])))
            else:
                value = 0.2 * (rng.random(shape, dtype=np.float32) - 0.5)
            state[key] = torch.from_numpy(value.astype(np.float16))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "pytorch_model.bin")
    shutil.copy(shipped_folder(name) / "config.json", folder)
    return folder


@pytest.fixture(scope="session")
def full_size(upstream, tmp_path_factory):
    root = tmp_path_factory.mktemp("coreml-full")
    folders = {kind: _write_full_size_folder(kind, export.model_folder(root, kind), seed)
               for seed, kind in enumerate(export.KINDS)}
    results = {r.kind: r for r in export.export_encoders(root)}
    return root, folders, results


@pytest.mark.slow
def test_full_size_export(full_size):
    _, folders, results = full_size
    assert all(r.exported for r in results.values())
    _check_interface("hubert", results["hubert"].package)
    _check_interface("roberta", results["roberta"].package, layers=22)
    n_hubert = _check_package_against_official("hubert", folders["hubert"], results["hubert"].package)
    n_bert = _check_package_against_official("roberta", folders["roberta"], results["roberta"].package)
    assert n_hubert == 7 + 2 + 4 + 2 + 2 + 12 * 16  # convs, GroupNorm, projection, pos conv, norm, layers
    assert n_bert == 5 + 22 * 16  # embeddings + 22 layers: hidden_states[-3] of 24
    assert 150 * 2**20 < results["hubert"].size_bytes < 220 * 2**20  # ~94M params in float16
    assert 520 * 2**20 < results["roberta"].size_bytes < 640 * 2**20  # ~300M params in float16


@pytest.mark.slow
def test_full_size_hubert_program_equals_the_mlx_encoder(full_size):
    package = full_size[2]["hubert"].package
    wave = np.random.default_rng(7).standard_normal(4_000).astype(np.float32) * 0.3
    got = reference.run_program(readback.read_program(package), {"waveform": wave[None]})["hidden_states"]
    want = np.array(_mlx_with_package_weights("hubert", package.parent)(mx.array(wave)))
    assert got.shape == want.shape == (1, 12, 768)
    assert _rel(got, want) < FLOAT32_RTOL
