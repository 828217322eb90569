"""The one loader: official file -> `Model.sanitize` (once) -> safetensors cache -> strict load ->
`runtime.accelerate`, for every model kind."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS before MLX)
from dora_primespeech_mlx import loading, runtime
from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.models import t2s

TINY_T2S = {"vocab_size": 11, "EOS": 10, "phoneme_vocab_size": 13, "embedding_dim": 16, "hidden_dim": 16,
            "head": 2, "n_layer": 1, "bert_dim": 8}
TINY_HUBERT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
               "conv_dim": [32] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}
TINY_ROBERTA = {"hidden_size": 64, "num_hidden_layers": 5, "num_attention_heads": 4, "intermediate_size": 128}

import mlx.core as mx  # noqa: E402  (after the package: OpenBLAS first)
from mlx.utils import tree_flatten  # noqa: E402


def _tiny_t2s() -> t2s.Model:
    return t2s.Model(t2s.ModelArgs(**TINY_T2S))


def _params(model) -> dict:
    return dict(tree_flatten(model.parameters()))


# ------------------------------------------------------------------------------------- strict loading


def test_strict_load_names_missing_unexpected_and_misshaped_keys():
    model = _tiny_t2s()
    weights = _params(model)
    before = np.array(model.bert_proj.weight)
    del weights["h.layers.0.norm2.bias"]
    weights["h.layers.0.self_attn.extra"] = mx.zeros((3,))
    weights["bert_proj.bias"] = mx.zeros((7,))
    weights["bert_proj.weight"] = mx.ones((16, 8))
    with pytest.raises(PrimeSpeechError) as info:
        loading.load_weights(model, weights, "GPT (T2S) (voice.mlx)", "Delete voice.mlx and convert again.")
    message = str(info.value)
    assert message.startswith("GPT (T2S) (voice.mlx) weights do not match the model: ")
    assert "missing 1 (h.layers.0.norm2.bias)" in message
    assert "unexpected 1 (h.layers.0.self_attn.extra)" in message
    assert "1 with the wrong shape (bert_proj.bias: file (7,), model (16,))" in message
    assert message.endswith(". Delete voice.mlx and convert again.")
    np.testing.assert_array_equal(np.array(model.bert_proj.weight), before)  # nothing loaded


def test_strict_load_names_a_few_keys_and_counts_the_rest():
    model = _tiny_t2s()
    n = len(_params(model))
    with pytest.raises(PrimeSpeechError, match=rf"missing {n} \(([^,()]+, ){{4}}[^,()]+ and {n - 5} more\)"):
        loading.load_weights(model, {}, "GPT (T2S)")


def test_strict_load_of_matching_weights():
    model = _tiny_t2s()
    weights = {k: mx.full(v.shape, 0.25) for k, v in _params(model).items()}
    loading.load_weights(model, weights, "GPT (T2S)")
    assert all(np.all(np.array(v) == 0.25) for v in _params(model).values())


# ------------------------------------------------------------------------------------- kinds and flow


def test_a_registered_kind_goes_through_the_same_flow(tmp_path, monkeypatch):
    """What issue #13's speaker model needs: a reader of its plain state-dict file, nothing more."""
    from safetensors.numpy import load_file, save_file

    official = {f"model.{k}": np.array(v).astype(np.float16) for k, v in _params(_tiny_t2s()).items()}
    source = tmp_path / "plain.safetensors"
    save_file(official, str(source))
    monkeypatch.setitem(loading.KINDS, "demo", loading.Kind(
        "demo", "Demo", t2s.__name__, lambda path: (load_file(str(path)), dict(TINY_T2S)), "demo file"))

    model = loading.load_model("demo", source)
    assert loading.is_fresh(tmp_path / "plain.mlx", source, "demo")
    assert loading.is_converted(tmp_path / "plain.mlx", "demo")
    for key, value in _params(model).items():
        assert value.dtype == mx.float32
        np.testing.assert_array_equal(np.array(value), official[f"model.{key}"].astype(np.float32), err_msg=key)


def test_wrong_sources_are_refused_with_what_to_give(tmp_path):
    hubert_folder = loading.save_converted(tmp_path / "hubert.mlx", {"w": np.zeros(2, np.float32)}, {},
                                           kind="hubert")
    with pytest.raises(PrimeSpeechError, match=r"holds a converted hubert model, not GPT \(T2S\)"):
        loading.load_model("t2s", hubert_folder)
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(PrimeSpeechError, match=r"is a folder: give the GPT checkpoint \(GPT_weights"):
        loading.load_model("t2s", plain)
    with pytest.raises(PrimeSpeechError, match="GPT .* model not found: .*absent.ckpt"):
        loading.load_model("t2s", tmp_path / "absent.ckpt")
    with pytest.raises(PrimeSpeechError, match="unknown model kind 'nope': use t2s, sovits, hubert, roberta"):
        loading.load_model("nope", hubert_folder)


def _official(kind: str, tmp_path: Path) -> Path:
    """An official file (or folder) of `kind` with random weights, as upstream writes it."""
    if kind == "t2s":
        from primespeech_devtools.oracle import t2s as oracle

        config = oracle.make_config(n_layer=1)
        return oracle.save_checkpoint(oracle.build_decoder(config, seed=0), config, tmp_path / "voice.ckpt")
    if kind == "sovits":
        from primespeech_devtools.oracle import sovits as oracle

        return oracle.save_official(oracle.shared_upstream("v2"), tmp_path / "voice.pth")
    from primespeech_devtools.oracle import encoders as oracle

    if kind == "hubert":
        return oracle.write_hubert_folder(tmp_path / oracle.HUBERT_NAME, seed=1, overrides=TINY_HUBERT)
    return oracle.write_roberta_folder(tmp_path / oracle.ROBERTA_NAME, seed=1, overrides=TINY_ROBERTA)


@pytest.mark.parametrize("kind", ["t2s", "sovits", "hubert", "roberta"])
def test_each_kind_is_sanitized_once_and_accelerated_after_every_load(kind, tmp_path, monkeypatch, upstream):
    source = _official(kind, tmp_path)
    module = loading.get_kind(kind).model_module()
    sanitize = module.Model.sanitize
    sanitized = []
    accelerated = []

    def counting(*args, **kwargs):
        sanitized.append(kind)
        return sanitize(*args, **kwargs)

    monkeypatch.setattr(module.Model, "sanitize", staticmethod(counting))
    monkeypatch.setattr(runtime, "accelerate", lambda model: accelerated.append(model) or model)

    first = loading.load_model(kind, source)  # converts: the one sanitize
    assert sanitized == [kind]
    cached = loading.load_model(kind, source)  # the cache holds sanitized weights
    folder = loading.converted_dir_for(source)
    from_folder = loading.load_model(kind, folder)
    assert sanitized == [kind]
    assert [id(m) for m in accelerated] == [id(first), id(cached), id(from_folder)]
    assert isinstance(first, module.Model)
    assert loading.is_fresh(folder, source, kind)
    ours, again = _params(first), _params(from_folder)
    assert sorted(ours) == sorted(again)
    for key, value in ours.items():
        assert mx.array_equal(value, again[key]), key
    if kind == "roberta":
        assert (folder / "tokenizer.json").is_file()


def test_models_import_neither_the_loader_nor_each_other():
    """Model modules reach the loader only from inside `load_model` (no import circle) and share no readers;
    the loader imports the model modules only when a kind is used."""
    package = Path(loading.__file__).parent
    kinds = {kind.module.rsplit(".", 1)[1] for kind in loading.KINDS.values()}
    for name in kinds:
        tree = ast.parse((package / "models" / f"{name}.py").read_text())
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                assert not (node.level == 2 and node.module in ("loading", "checkpoint")), (name, node.module)
                assert not (node.level == 1 and node.module in kinds), (name, node.module)
    tree = ast.parse((package / "loading.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("models"), node.module
