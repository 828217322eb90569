"""Encoder backend selection (`auto` | `mlx` | `coreml`) on Linux, and the macOS branch with a fake Core ML.

On Linux: `auto` picks MLX and logs why, `coreml` fails with a clear message. The macOS branch runs
with `running_on_macos` patched to True and `coremltools.models.MLModel` replaced by a fake whose
`predict` evaluates the real exported package with our numpy interpreter (float16 emulation, float16
output, as Core ML returns it), so the padding, slicing, dtype and fallback logic of the Core ML
backend is exercised end to end and compared with the MLX encoders.
"""

from __future__ import annotations

import logging
import shutil
import sys

import pytest

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS before MLX)

ct = pytest.importorskip("coremltools", reason="coremltools (extra `coreml`) is not installed")

import coreml_reference as reference  # noqa: E402
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from dora_primespeech_mlx import coreml, encoders, loading  # noqa: E402
from dora_primespeech_mlx.coreml import export, readback  # noqa: E402
from dora_primespeech_mlx.errors import PrimeSpeechError  # noqa: E402

SMALL_HUBERT = {"hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 192,
                "conv_dim": [48] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}
SMALL_ROBERTA = {"hidden_size": 64, "num_hidden_layers": 5, "num_attention_heads": 4, "intermediate_size": 128}
FLOAT16_RTOL = 1e-2  # Core ML computes in float16: the fake emulates it (measured about 2e-3)
TEXT = "今天天气很好，我们一起去公园散步吧。"


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _small_root(root):
    from primespeech_devtools.oracle.encoders import model_folder

    for kind, overrides in (("hubert", SMALL_HUBERT), ("roberta", SMALL_ROBERTA)):
        shutil.copytree(model_folder(kind, 5, overrides), export.model_folder(root, kind),
                        ignore=shutil.ignore_patterns("mlx"))
    return root


@pytest.fixture(scope="session")
def model_root(upstream, tmp_path_factory):
    """A model root with small random-weight encoder folders in the official layout (MLX only)."""
    return _small_root(tmp_path_factory.mktemp("encoder-root"))


@pytest.fixture(scope="session")
def converted(upstream, tmp_path_factory):
    """{kind: converted MLX folder holding an exported package}, in a model root of its own."""
    root = _small_root(tmp_path_factory.mktemp("exported-root"))
    return {kind: export.export_encoder(kind, export.model_folder(root, kind)).package.parent
            for kind in export.KINDS}


class FakeMLModel:
    """Stands in for `coremltools.models.MLModel` on macOS: evaluates the package's program."""

    instances: list[FakeMLModel] = []

    def __init__(self, path, compute_units=None):
        self.path = path
        self.compute_units = compute_units
        self.program = readback.read_program(path)
        self.inputs_seen: list[dict[str, tuple]] = []
        FakeMLModel.instances.append(self)

    def predict(self, inputs):
        self.inputs_seen.append({k: (v.shape, v.dtype) for k, v in inputs.items()})
        out = reference.run_program(self.program, inputs, precision="float16")
        return {k: v.astype(np.float16) for k, v in out.items()}


@pytest.fixture
def fake_macos(monkeypatch):
    FakeMLModel.instances = []
    monkeypatch.setattr(coreml, "running_on_macos", lambda: True)
    monkeypatch.setattr(ct.models, "MLModel", FakeMLModel)
    return FakeMLModel


def _mlx_reference(folder_or_converted):

    return loading.load_model("hubert", folder_or_converted["hubert"]), loading.load_model("roberta", folder_or_converted["roberta"])


# -- Linux -------------------------------------------------------------------------------------------
def test_mlx_setting_runs_the_mlx_encoders(model_root, converted):
    # the references come from the exported root's converted folders: the same weights
    backend = encoders.select_encoder_backend("mlx", model_root)
    assert backend.name == "mlx" and backend.describe() == "mlx (requested)"
    hubert, bert = _mlx_reference(converted)
    wave = np.random.default_rng(0).standard_normal(9_000).astype(np.float32) * 0.3
    got = backend.hubert_model()(wave)  # numpy in, MLX out, same as the model itself
    assert isinstance(got, mx.array) and got.dtype == mx.float32
    assert np.array_equal(np.array(got), np.array(hubert(mx.array(wave))))
    ids = backend.roberta_tokenizer().encode(TEXT).ids
    assert np.array_equal(np.array(backend.roberta_model()(np.array([ids]))), np.array(bert(mx.array([ids]))))


def test_auto_on_linux_uses_mlx_and_says_why(model_root, converted, caplog):
    with caplog.at_level(logging.INFO, logger="dora_primespeech_mlx.encoders"):
        backend = encoders.select_encoder_backend("auto", model_root)
    assert backend.name == "mlx"
    assert f"encoder backend: mlx (auto: Core ML runs only on macOS (this is {sys.platform}))" in caplog.messages


def test_coreml_on_linux_is_a_clear_error(model_root, converted):
    with pytest.raises(PrimeSpeechError, match="encoder backend coreml is not available: Core ML runs only on macOS"):
        encoders.select_encoder_backend("coreml", model_root)


def test_unknown_setting_and_missing_folders():
    with pytest.raises(PrimeSpeechError, match="unknown encoder backend 'ane': use auto, mlx, coreml"):
        encoders.select_encoder_backend("ane", "/nowhere")
    with pytest.raises(PrimeSpeechError, match="give model_root"):
        encoders.select_encoder_backend("mlx")
    with pytest.raises(PrimeSpeechError, match="unknown Core ML compute units 'NE'"):
        encoders.select_encoder_backend("auto", "/nowhere", compute_units="NE")


# -- macOS, with Core ML faked ---------------------------------------------------------------------
def test_macos_auto_picks_coreml_and_matches_mlx(converted, fake_macos, caplog):
    with caplog.at_level(logging.INFO, logger="dora_primespeech_mlx.encoders"):
        backend = encoders.select_encoder_backend("auto", hubert_dir=converted["hubert"],
                                                  roberta_dir=converted["roberta"], compute_units="CPU_AND_NE")
    assert backend.name == "coreml"
    assert "encoder backend: coreml (Core ML packages loaded, compute units CPU_AND_NE)" in caplog.messages
    assert [m.compute_units for m in fake_macos.instances] == [ct.ComputeUnit.CPU_AND_NE] * 2
    hubert_fake, bert_fake = fake_macos.instances
    hubert, bert = _mlx_reference(converted)

    wave = np.random.default_rng(1).standard_normal(12_345).astype(np.float32) * 0.3
    got = backend.hubert_model()(mx.array(wave))
    assert isinstance(got, mx.array) and got.dtype == mx.float32
    want = np.array(hubert(mx.array(wave)))
    assert got.shape == want.shape and _rel(got, want) < FLOAT16_RTOL
    assert hubert_fake.inputs_seen == [{"waveform": ((1, 12_345), np.float32)}]

    ids = backend.roberta_tokenizer().encode(TEXT).ids  # 20 tokens -> padded to 32
    got = backend.roberta_model()(mx.array([ids]))
    want = np.array(bert(mx.array([ids])))
    assert got.shape == want.shape == (1, len(ids), SMALL_ROBERTA["hidden_size"])
    assert _rel(got, want) < FLOAT16_RTOL
    assert bert_fake.inputs_seen == [{"input_ids": ((1, 32), np.int32)}]
    assert backend.hubert_model().calls == {"coreml": 1, "mlx": 0}


def test_macos_inputs_a_package_cannot_take_go_to_mlx(converted, fake_macos, caplog):
    backend = encoders.select_encoder_backend("coreml", hubert_dir=converted["hubert"],
                                              roberta_dir=converted["roberta"])
    hubert, bert = _mlx_reference(converted)
    long_wave = np.random.default_rng(2).standard_normal(169_601).astype(np.float32) * 0.3  # > 10.6 s
    with caplog.at_level(logging.INFO, logger="dora_primespeech_mlx.coreml.runtime"):
        got = backend.hubert_model()(long_wave)
    assert np.array_equal(np.array(got), np.array(hubert(mx.array(long_wave))))
    assert any("outside the package's 400..169600" in m for m in caplog.messages)
    ids = [101, 0, 791, 102]  # the pad id inside the text would be masked by the package
    assert np.array_equal(np.array(backend.roberta_model()(ids)), np.array(bert(mx.array([ids]))))
    mask = np.array([[1, 1, 1, 0]])
    got = backend.roberta_model()(np.array([[101, 791, 1921, 102]]), attention_mask=mask)
    assert np.array_equal(np.array(got), np.array(bert(mx.array([[101, 791, 1921, 102]]),
                                                       attention_mask=mx.array(mask))))
    assert backend.hubert_model().calls == {"coreml": 0, "mlx": 1}
    assert backend.roberta_model().calls == {"coreml": 0, "mlx": 2}
    assert all(not m.inputs_seen for m in fake_macos.instances)


def test_macos_without_packages_falls_back_or_fails(model_root, fake_macos, tmp_path, caplog):
    empty = {kind: tmp_path / kind for kind in export.KINDS}
    for kind, folder in empty.items():
        shutil.copytree(export.model_folder(model_root, kind), folder, ignore=shutil.ignore_patterns("mlx"))
        export.converted_folder(kind, folder)  # converted for MLX, never exported
    with caplog.at_level(logging.INFO, logger="dora_primespeech_mlx.encoders"):
        backend = encoders.select_encoder_backend("auto", hubert_dir=empty["hubert"] / "mlx",
                                                  roberta_dir=empty["roberta"] / "mlx")
    assert backend.name == "mlx"
    assert "no Core ML package" in backend.reason and "run `primespeech-mlx coreml-export`" in backend.reason
    assert any(m.startswith("encoder backend: mlx (auto: no Core ML package") for m in caplog.messages)
    with pytest.raises(PrimeSpeechError, match="coreml is not available: no Core ML package .*coreml-export"):
        encoders.select_encoder_backend("coreml", hubert_dir=empty["hubert"] / "mlx",
                                        roberta_dir=empty["roberta"] / "mlx")
    assert not fake_macos.instances


def test_macos_without_coremltools_or_with_a_failing_load(converted, fake_macos, monkeypatch):
    dirs = {"hubert_dir": converted["hubert"], "roberta_dir": converted["roberta"]}

    def broken(path, compute_units=None):
        raise RuntimeError("Error compiling model")

    monkeypatch.setattr(ct.models, "MLModel", broken)
    backend = encoders.select_encoder_backend("auto", **dirs)
    assert backend.name == "mlx" and "Core ML cannot load" in backend.reason
    with pytest.raises(PrimeSpeechError, match="Error compiling model"):
        encoders.select_encoder_backend("coreml", **dirs)

    monkeypatch.setitem(sys.modules, "coremltools", None)
    backend = encoders.select_encoder_backend("auto", **dirs)
    assert backend.name == "mlx" and "pip install 'dora-primespeech-mlx[coreml]'" in backend.reason


def test_macos_stale_package_is_not_used(model_root, converted, fake_macos, tmp_path):
    from safetensors.numpy import load_file, save_file

    stale = shutil.copytree(converted["roberta"], tmp_path / "roberta-mlx")
    weights = load_file(str(stale / "model.safetensors"))
    weights["embeddings.LayerNorm.weight"] = weights["embeddings.LayerNorm.weight"] * np.float16(2)
    save_file(weights, str(stale / "model.safetensors"), metadata={"format": "mlx"})
    backend = encoders.select_encoder_backend("auto", hubert_dir=converted["hubert"], roberta_dir=stale)
    assert backend.name == "mlx" and "stale" in backend.reason


def test_macos_model_root_of_official_folders(converted, fake_macos):
    from dora_primespeech_mlx.loading import is_fresh

    root = converted["hubert"].parents[2]
    for kind in export.KINDS:  # the conversions are current: the packages beside them are used
        assert is_fresh(converted[kind], export.model_folder(root, kind), kind)
    backend = encoders.select_encoder_backend("auto", root)
    assert backend.name == "coreml"


def test_macos_compiled_model_is_cached_beside_the_package(converted, fake_macos, monkeypatch, tmp_path):
    from dora_primespeech_mlx.coreml import runtime

    folder = shutil.copytree(converted["hubert"], tmp_path / "mlx")
    package = folder / "hubert.mlpackage"
    compiled_by_coreml = tmp_path / "coreml-tmp" / "model.mlmodelc"
    compiled_by_coreml.mkdir(parents=True)
    (compiled_by_coreml / "model.espresso.net").write_text("compiled")

    class Compiling(FakeMLModel):
        def get_compiled_model_path(self):
            return str(compiled_by_coreml)

    class Compiled:
        def __init__(self, path, compute_units=None):
            self.path = path

    monkeypatch.setattr(ct.models, "MLModel", Compiling)
    monkeypatch.setattr(ct.models, "CompiledMLModel", Compiled)
    assert isinstance(runtime.load_mlmodel(package), Compiling)  # first load compiles the package
    cache = runtime.compiled_path(package)
    assert (cache / "model.espresso.net").read_text() == "compiled"
    again = runtime.load_mlmodel(package)
    assert isinstance(again, Compiled) and again.path == str(cache)

    (package / "Manifest.json").write_text((package / "Manifest.json").read_text() + " ")  # a new package
    assert isinstance(runtime.load_mlmodel(package), Compiling)
    assert isinstance(runtime.load_mlmodel(package), Compiled)
    from coremltools.models.model import MLModel

    monkeypatch.setattr(ct.models, "MLModel", MLModel)  # the exporter needs the real class
    export.export_encoder("hubert", folder, force=True)
    assert not cache.exists()  # a re-export drops the stale compiled model


def test_macos_export_compiles_the_package_once(converted, monkeypatch, tmp_path):
    from dora_primespeech_mlx.coreml import runtime

    folder = shutil.copytree(converted["roberta"], tmp_path / "mlx")
    loaded = []
    monkeypatch.setattr(coreml, "running_on_macos", lambda: True)
    monkeypatch.setattr(runtime, "load_mlmodel", lambda path, compute_units="ALL": loaded.append(path))
    result = export.export_encoder("roberta", folder, force=True)
    assert loaded == [result.package]
