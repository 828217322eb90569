"""The torch-free checkpoint reader against files written by real torch.save."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest

from dora_primespeech_mlx.checkpoint import HEADER_VERSIONS, load_checkpoint, read_checkpoint, sniff_header
from dora_primespeech_mlx.errors import PrimeSpeechError

torch = pytest.importorskip("torch")


def _tensors():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=gen)
    return OrderedDict(
        half=torch.randn(3, 5, generator=gen).half(),
        float=torch.randn(2, 3, generator=gen),
        double=torch.randn(3, generator=gen).double(),
        bf16=torch.randn(2, 3, generator=gen).bfloat16(),
        long=torch.arange(-3, 7),
        int=torch.arange(5, dtype=torch.int32),
        uint8=torch.arange(200, 206, dtype=torch.uint8),
        bool=torch.tensor([True, False, True]),
        scalar=torch.tensor(3.5),
        empty=torch.zeros(0, 3),
        transposed=base.t(),  # strides (1, 6)
        sliced=base[1:3, 2:],  # offset 8, shared storage with `transposed`
        expanded=torch.randn(1, 3, generator=gen).expand(4, 3),  # stride 0
        param=torch.nn.Parameter(torch.ones(2, 2)),
    )


def _as_numpy(t):
    t = t.detach()
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_tensors_roundtrip_exactly(tmp_path, zip_format):
    tensors = _tensors()
    path = tmp_path / "model.pth"
    torch.save({"weight": tensors, "config": {"n": 3, "dt": torch.float16}, "info": "x"}, path,
               _use_new_zipfile_serialization=zip_format)
    ckpt = load_checkpoint(path)
    assert ckpt.format == ("zip" if zip_format else "legacy")
    assert ckpt.header_version is None
    assert ckpt.data["config"] == {"n": 3, "dt": "float16"}
    assert ckpt.data["info"] == "x"
    weight = ckpt.data["weight"]
    assert isinstance(weight, OrderedDict) and list(weight) == list(tensors)
    for key, tensor in tensors.items():
        ref = _as_numpy(tensor)
        got = weight[key]
        assert got.dtype == ref.dtype, key
        assert got.shape == ref.shape, key
        assert got.flags.c_contiguous, key
        np.testing.assert_array_equal(got, ref, err_msg=key)
    assert weight["bf16"].dtype == np.float32


def test_shared_storage_views_are_independent_copies(tmp_path):
    base = torch.arange(12, dtype=torch.float32)
    torch.save({"a": base, "b": base[3:7], "c": base.view(3, 4)[:, 1]}, tmp_path / "s.pt")
    data = read_checkpoint(tmp_path / "s.pt")
    np.testing.assert_array_equal(data["b"], np.arange(3, 7))
    np.testing.assert_array_equal(data["c"], [1, 5, 9])
    data["b"][0] = -1
    assert data["a"][3] == 3


class _HParams:
    """Stands in for upstream `utils.HParams` (pickled by its module and class name)."""

    def __init__(self, **kwargs):
        for key, value in kwargs.items():
            setattr(self, key, _HParams(**value) if isinstance(value, dict) else value)


_HParams.__module__ = "utils"
_HParams.__qualname__ = "HParams"


@pytest.fixture
def fake_utils_module(monkeypatch):
    import sys
    import types

    module = types.ModuleType("utils")
    module.HParams = _HParams
    monkeypatch.setitem(sys.modules, "utils", module)


@pytest.mark.parametrize("header", sorted(HEADER_VERSIONS))
def test_sovits_file_with_hparams_and_version_header(tmp_path, fake_utils_module, header):
    hps = _HParams(data={"sampling_rate": 32000, "hop_length": 640}, model={"version": "v2"})
    weight = {"enc_p.text_embedding.weight": torch.randn(4, 3).half()}
    path = tmp_path / "voice.pth"
    torch.save({"weight": weight, "config": hps, "info": "1epoch"}, path)
    raw = path.read_bytes()
    assert raw[:2] == b"PK"
    path.write_bytes(header + raw[2:])
    assert sniff_header(path) == HEADER_VERSIONS[header]
    ckpt = load_checkpoint(path)
    assert ckpt.header_version == HEADER_VERSIONS[header]
    config = ckpt.data["config"]
    assert type(config) is dict and type(config["data"]) is dict
    assert config == {"data": {"sampling_rate": 32000, "hop_length": 640}, "model": {"version": "v2"}}
    np.testing.assert_array_equal(ckpt.data["weight"]["enc_p.text_embedding.weight"],
                                  weight["enc_p.text_embedding.weight"].numpy())


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_before_running(tmp_path, zip_format, monkeypatch):
    path = tmp_path / "evil.ckpt"
    torch.save({"weight": {"x": torch.ones(1)}, "payload": _Evil()}, path,
               _use_new_zipfile_serialization=zip_format)
    calls = []
    monkeypatch.setattr(os, "system", lambda cmd: calls.append(cmd))
    with pytest.raises(PrimeSpeechError, match=r"disallowed global (posix|os)\.system"):
        read_checkpoint(path)
    assert calls == []


def test_arbitrary_class_is_refused(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"opt": torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)}, path)
    with pytest.raises(PrimeSpeechError, match="disallowed global torch.optim"):
        read_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(PrimeSpeechError):
        read_checkpoint(path)
    with pytest.raises(PrimeSpeechError, match="not found"):
        read_checkpoint(tmp_path / "missing.ckpt")


def test_truncated_zip(tmp_path):
    path = tmp_path / "t.pth"
    torch.save({"w": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(PrimeSpeechError):
        read_checkpoint(path)


def test_plain_pickle_is_not_accepted_as_tensor_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.ones(2)], path)
    with pytest.raises(PrimeSpeechError, match="not a dict"):
        read_checkpoint(path)
    with open(tmp_path / "p.pkl", "wb") as f:
        pickle.dump({"a": 1}, f)
    with pytest.raises(PrimeSpeechError):
        read_checkpoint(tmp_path / "p.pkl")
