"""CLI subcommands: `voices`, `download` (with a fake hub) and `say` (on the random-weight test voice)."""

from __future__ import annotations

import sys
import types
import wave

import pytest

from dora_primespeech_mlx import cli
from dora_primespeech_mlx.commands import download_plan, run_download
from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.voices import VoiceRegistry


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


class FakeHub:
    """Records hf_hub_download / snapshot_download calls and writes the files."""

    def __init__(self, fail_on: str | None = None):
        self.calls = []
        self.fail_on = fail_on

    def hf_hub_download(self, repo_id, filename, local_dir):
        self.calls.append((repo_id, filename, local_dir))
        if filename == self.fail_on:
            raise ConnectionError("network unreachable")
        path = f"{local_dir}/{filename}"
        _touch(__import__("pathlib").Path(path))
        return path

    def snapshot_download(self, repo_id, local_dir):
        self.calls.append((repo_id, None, local_dir))
        return local_dir


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ("say", "voices", "download", "convert", "bench"):
        assert command in out


def test_voices_lists_installed_state(tmp_path, capsys):
    reg = VoiceRegistry(tmp_path)
    for path in [*reg.encoder_files(), reg.get("Cove").gpt_path, reg.get("Cove").sovits_path,
                 reg.get("Cove").ref_audio]:
        _touch(path)
    assert cli.main(["voices", "--model-root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len([line for line in lines if "built-in" in line]) == 15
    cove = next(line for line in lines if line.strip().startswith("Cove"))
    doubao = next(line for line in lines if line.strip().startswith("Doubao"))
    assert "installed" in cove and "en" in cove and "1.0" in cove
    assert "missing" in doubao


def test_download_plan(tmp_path):
    reg = VoiceRegistry(tmp_path)
    plan = download_plan(reg, ["Doubao"], with_g2pw=False)
    files = [f for _, f, _ in plan]
    assert {r for r, _, _ in plan} == {"MoYoYoTech/tone-models"}
    assert {d for _, _, d in plan} == {tmp_path / "moyoyo"}
    assert files == ["chinese-hubert-base/config.json", "chinese-hubert-base/preprocessor_config.json",
                     "chinese-hubert-base/pytorch_model.bin", "chinese-roberta-wwm-ext-large/config.json",
                     "chinese-roberta-wwm-ext-large/pytorch_model.bin",
                     "chinese-roberta-wwm-ext-large/tokenizer.json", "GPT_weights/doubao-mixed.ckpt",
                     "SoVITS_weights/doubao-mixed.pth", "ref_audios/doubao_ref_mix_new.wav"]
    _touch(tmp_path / "moyoyo" / "GPT_weights" / "doubao-mixed.ckpt")  # present files are skipped
    assert len(download_plan(reg, ["Doubao"], with_g2pw=False)) == 8
    everything = download_plan(reg, reg.names(), with_g2pw=True)
    assert len(everything) == 6 + 3 * 15 - 1 + 1
    assert everything[-1] == ("alextomcat/G2PWModel", None, tmp_path / "G2PWModel")


def test_run_download_fetches_and_reports_failures(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    reg = VoiceRegistry(tmp_path)
    plan = download_plan(reg, ["Maple"], with_g2pw=True)
    hub = FakeHub()
    run_download(plan, hub=hub)
    assert len(hub.calls) == len(plan) and hub.calls[-1][1] is None
    assert (tmp_path / "moyoyo" / "GPT_weights" / "maple_best_gpt.ckpt").is_file()
    assert download_plan(reg, ["Maple"], with_g2pw=False) == []
    failing = FakeHub(fail_on="SoVITS_weights/cove_best_sovits.pth")
    with pytest.raises(PrimeSpeechError, match="could not download SoVITS_weights/cove_best_sovits.pth from "
                                               "MoYoYoTech/tone-models .*network unreachable.*resume"):
        run_download(download_plan(reg, ["Cove"], with_g2pw=False), hub=failing)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PrimeSpeechError, match="HF_HUB_OFFLINE"):
        run_download(plan, hub=hub)


def test_download_command_without_huggingface_hub(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    assert cli.main(["download", "--voice", "Maple", "--model-root", str(tmp_path)]) == 2
    assert "pip install 'dora-primespeech-mlx[download]'" in capsys.readouterr().err


def test_download_command_uses_the_hub(tmp_path, monkeypatch, capsys):
    hub = FakeHub()
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(
        hf_hub_download=hub.hf_hub_download, snapshot_download=hub.snapshot_download))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert cli.main(["download", "--voice", "luoxiang", "--model-root", str(tmp_path)]) == 0
    assert [f for _, f, _ in hub.calls][-3:] == ["GPT_weights/luoxiang_best_gpt.ckpt",
                                                 "SoVITS_weights/luoxiang_best_sovits.pth",
                                                 "ref_audios/luoxiang_ref.wav"]
    assert cli.main(["download", "--voice", "Luo Xiang", "--model-root", str(tmp_path)]) == 0
    assert "already installed" in capsys.readouterr().err
    assert cli.main(["download", "--voice", "Nobody", "--model-root", str(tmp_path)]) == 2


def test_say_without_installed_voice_explains_how_to_download(tmp_path, capsys):
    assert cli.main(["say", "你好", "--model-root", str(tmp_path), "-o", str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err
    assert "voice 'Doubao' is not installed" in err and "primespeech-mlx download --voice \"Doubao\"" in err
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.slow
def test_say_writes_a_wav(tmp_path, capsys):
    from dora_primespeech_mlx.oracle.voice import shared_test_voice

    files = shared_test_voice()
    out = tmp_path / "sub" / "hello.wav"
    assert cli.main(["say", "你好，世界。", "--voice", "test", "--model-root", str(files.model_root),
                     "-o", str(out), "--stream"]) == 0
    err = capsys.readouterr().err
    assert "first audio after" in err and "real-time factor" in err
    with wave.open(str(out)) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, 32000)
        assert f.getnframes() > 32000  # at least one second: 50 codes of speech (2 s) + 0.07 s
