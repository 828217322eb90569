"""CLI subcommands: `voices`, `download` (with a fake hub, and offline with the real one against a closed
local port), `say` (with a fake engine, and on the random-weight test voice), logging and help texts.

No test here touches the network: HF_ENDPOINT points at a closed port on 127.0.0.1 and proxies are unset.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import types
import wave
from pathlib import Path

import numpy as np
import pytest

from dora_primespeech_mlx import cli, commands
from dora_primespeech_mlx.commands import download_plan, hub_endpoint, run_download
from dora_primespeech_mlx.config import NodeConfig
from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.voices import VoiceRegistry

PACKAGE_LOGGER = logging.getLogger("dora_primespeech_mlx")


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    """Every test: the hub endpoint is a closed local port, no proxy; the package logger restored after."""
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    handlers, level = list(PACKAGE_LOGGER.handlers), PACKAGE_LOGGER.level
    yield endpoint
    PACKAGE_LOGGER.handlers[:] = handlers
    PACKAGE_LOGGER.setLevel(level)


def listing(root: Path) -> dict[str, int]:
    """Every path under root (relative) with its size (-1 for folders)."""
    return {str(p.relative_to(root)): (-1 if p.is_dir() else p.stat().st_size) for p in root.rglob("*")}


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


class FakeHub:
    """Records hf_hub_download / snapshot_download calls and writes the files."""

    def __init__(self, fail_on: str | None = None):
        self.calls = []
        self.fail_on = fail_on

    def hf_hub_download(self, repo_id, filename, local_dir, **kwargs):
        self.calls.append((repo_id, filename, local_dir))
        if filename == self.fail_on:
            raise ConnectionError("network unreachable")
        path = f"{local_dir}/{filename}"
        _touch(__import__("pathlib").Path(path))
        return path

    def snapshot_download(self, repo_id, local_dir, **kwargs):
        self.calls.append((repo_id, None, local_dir))
        return local_dir


@pytest.fixture
def fake_hub(monkeypatch) -> FakeHub:
    """A FakeHub standing in for huggingface_hub, the hub reachable."""
    hub = FakeHub()
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(
        hf_hub_download=hub.hf_hub_download, snapshot_download=hub.snapshot_download))
    monkeypatch.setattr(commands, "hub_problem", lambda endpoint: None)
    return hub


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


def test_download_plan_with_the_speaker_model(tmp_path):
    reg = VoiceRegistry(tmp_path)
    plan = download_plan(reg, ["Doubao"], with_g2pw=False, with_speaker=True)
    assert plan[-1] == ("lj1995/GPT-SoVITS", "sv/pretrained_eres2netv2w24s4ep4.ckpt", tmp_path / "moyoyo")
    assert tmp_path / "moyoyo" / plan[-1][1] == reg.speaker_path  # lands where the engine looks for it
    _touch(reg.speaker_path)
    assert download_plan(reg, ["Doubao"], with_g2pw=False, with_speaker=True) == plan[:-1]
    assert "--sv" in "".join(_help(["download", "--help"]))


def _help(argv) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.main(argv)
    return out.getvalue()


def test_voices_shows_each_voice_version(tmp_path, capsys, monkeypatch):
    from dora_primespeech_mlx import loading

    reg = VoiceRegistry(tmp_path)
    for name in ("Cove", "Maple"):
        for path in (reg.get(name).gpt_path, reg.get(name).sovits_path, reg.get(name).ref_audio):
            _touch(path)
    reg.get("Maple").sovits_path.write_bytes(b"06" + b"\0" * 30)  # a v2ProPlus header
    assert cli.main(["voices", "--model-root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    line = {n: next(x for x in lines if x.strip().startswith(n)) for n in ("Cove", "Maple", "Doubao")}
    assert "v2ProPlus" in line["Maple"]
    assert " ? " in line["Cove"]  # an empty file: unreadable
    assert " - " in line["Doubao"]  # not downloaded
    assert loading.sovits_version(reg.get("Maple").sovits_path) == "v2ProPlus"


def test_run_download_fetches_and_reports_failures(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    reg = VoiceRegistry(tmp_path)
    plan = download_plan(reg, ["Maple"], with_g2pw=True)
    hub = FakeHub()
    run_download(plan, hub=hub, probe=False)
    assert len(hub.calls) == len(plan) and hub.calls[-1][1] is None
    assert (tmp_path / "moyoyo" / "GPT_weights" / "maple_best_gpt.ckpt").is_file()
    assert download_plan(reg, ["Maple"], with_g2pw=False) == []
    failing = FakeHub(fail_on="SoVITS_weights/cove_best_sovits.pth")
    with pytest.raises(PrimeSpeechError, match="could not download SoVITS_weights/cove_best_sovits.pth from "
                                               "MoYoYoTech/tone-models .*network unreachable.*resume"):
        run_download(download_plan(reg, ["Cove"], with_g2pw=False), hub=failing, probe=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PrimeSpeechError, match="HF_HUB_OFFLINE"):
        run_download(plan, hub=hub, probe=False)


def test_run_download_takes_the_hub_settings_from_the_config(tmp_path, monkeypatch):
    reg = VoiceRegistry(tmp_path)
    plan = download_plan(reg, ["Maple"], with_g2pw=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the explicit config wins over the environment
    hub = FakeHub()
    run_download(plan[:1], hub=hub, probe=False, config=NodeConfig())
    assert len(hub.calls) == 1
    with pytest.raises(PrimeSpeechError, match="HF_HUB_OFFLINE"):
        run_download(plan, hub=FakeHub(), probe=False, config=NodeConfig(hf_hub_offline=True))
    probed = []
    monkeypatch.setattr(commands, "hub_problem", lambda endpoint: probed.append(endpoint) or "refused")
    with pytest.raises(PrimeSpeechError, match="cannot reach the Hugging Face hub at http://mirror.example"):
        run_download(plan, hub=FakeHub(), config=NodeConfig(hf_endpoint="http://mirror.example/"))
    assert probed == ["http://mirror.example"]


def test_hub_endpoint():
    hub = types.SimpleNamespace(constants=types.SimpleNamespace(ENDPOINT="https://hub.internal/"))
    assert hub_endpoint(hub, "http://mirror.example/") == "http://mirror.example"
    assert hub_endpoint(hub) == "https://hub.internal"
    assert hub_endpoint(None) == "https://huggingface.co"


def test_cli_defaults_come_from_the_node_config(tmp_path, monkeypatch, capsys):
    user = tmp_path / "mine.json"
    user.write_text('{"Mine": {"gpt_weights": "a.ckpt", "sovits_weights": "a.pth", "reference_audio": "a.wav", '
                    '"prompt_text": "x"}}')
    monkeypatch.setenv("MODELS", str(tmp_path))
    monkeypatch.setenv("PRIMESPEECH_MODEL_DIR", "$MODELS/root")
    monkeypatch.setenv("PRIMESPEECH_VOICES_FILE", str(user))
    assert cli.main(["voices"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"model root: {tmp_path / 'root'}"
    assert re.search(r"^  Mine .* user$", out, re.M)
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    for command in ("say", "voices", "download"):
        args = sub.choices[command].parse_args([] if command != "say" else ["hi"])
        assert (args.model_root, args.voices_file) == (tmp_path / "root", user)
    monkeypatch.delenv("PRIMESPEECH_MODEL_DIR")
    monkeypatch.delenv("PRIMESPEECH_VOICES_FILE")
    monkeypatch.setenv("HOME", str(tmp_path))
    args = next(a for a in cli.build_parser()._actions if a.dest == "command").choices["voices"].parse_args([])
    assert (args.model_root, args.voices_file) == (tmp_path / ".dora" / "models" / "primespeech", None)


def test_download_command_without_huggingface_hub(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    assert cli.main(["download", "--voice", "Maple", "--model-root", str(tmp_path)]) == 2
    assert "pip install 'dora-primespeech-mlx[download]'" in capsys.readouterr().err


def test_download_command_uses_the_hub(tmp_path, monkeypatch, fake_hub, capsys):
    hub = fake_hub
    assert cli.main(["download", "--voice", "luoxiang", "--model-root", str(tmp_path)]) == 0
    assert [f for _, f, _ in hub.calls][-3:] == ["GPT_weights/luoxiang_best_gpt.ckpt",
                                                 "SoVITS_weights/luoxiang_best_sovits.pth",
                                                 "ref_audios/luoxiang_ref.wav"]
    assert cli.main(["download", "--voice", "Luo Xiang", "--model-root", str(tmp_path)]) == 0
    assert "already installed" in capsys.readouterr().err
    assert cli.main(["download", "--voice", "Nobody", "--model-root", str(tmp_path)]) == 2
    assert "unknown voice 'Nobody'" in capsys.readouterr().err


def test_say_without_installed_voice_explains_how_to_download(tmp_path, capsys):
    assert cli.main(["say", "你好", "--model-root", str(tmp_path), "-o", str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err
    assert "voice 'Doubao' is not installed" in err and "primespeech-mlx download --voice \"Doubao\"" in err
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.slow
def test_say_writes_a_wav(tmp_path, capsys):
    from primespeech_devtools.oracle.voice import shared_test_voice

    files = shared_test_voice()  # what `make run VOICE=test` builds in out/test-voice
    out = tmp_path / "sub" / "hello.wav"
    assert cli.main(["say", "你好，世界。", "--model-root", str(files.model_root), "--voice", files.name,
                     "-o", str(out), "--stream"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^\+\d+\.\d\ds  chunk 1: \d+\.\d\d s of audio  \"你好，世界。\"$", err, re.M), err
    assert "warming up" in err and "real-time factor" in err and "first audio after" in err
    with wave.open(str(out)) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, 32000)
        assert f.getnframes() > 32000  # at least one second: 50 codes of speech (2 s) + 0.07 s


# ------------------------------------------------------------------------------------- unknown voices
def test_an_unknown_voice_suggests_close_names(tmp_path, capsys):
    assert cli.main(["say", "hi", "--voice", "Doubau", "--model-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown voice 'Doubau'" in err and "did you mean 'Doubao'?" in err
    assert "test-voice" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["say", "download"])
def test_the_test_voice_outside_its_model_root_says_how_to_use_it(tmp_path, capsys, command):
    argv = ["say", "hi"] if command == "say" else ["download"]
    assert cli.main([*argv, "--voice", "test", "--model-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown voice 'test'" in err and str(tmp_path) in err
    assert "make run VOICE=test" in err and "primespeech-mlx say --model-root out/test-voice --voice test" in err
    assert not (tmp_path / "moyoyo").exists()


def test_a_model_root_holding_the_test_voice_finds_it(tmp_path, capsys):
    # the layout build_test_voice writes (see primespeech_devtools/oracle/voice.py): voices.json registers "test"
    (tmp_path / "voices.json").write_text('{"voices": {"test": {"gpt_weights": "GPT_weights/test_best_gpt.ckpt", '
                                          '"sovits_weights": "SoVITS_weights/test_best_sovits.pth", '
                                          '"reference_audio": "ref_audios/test_ref.wav", "prompt_text": "x", '
                                          '"prompt_lang": "zh", "text_lang": "zh"}}}')
    assert cli.main(["say", "hi", "--model-root", str(tmp_path), "--voice", "test"]) == 2
    err = capsys.readouterr().err
    assert "voice 'test' is not installed" in err  # found, its files not written here


# ----------------------------------------------------------------------------------------- languages
def test_say_offers_only_the_languages_the_frontend_supports(capsys):
    from dora_primespeech_mlx.text import SUPPORTED_MODES

    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    action = next(a for a in sub.choices["say"]._actions if a.dest == "text_lang")
    assert tuple(action.choices) == tuple(SUPPORTED_MODES)
    with pytest.raises(SystemExit):
        cli.main(["say", "--help"])
    text_lang_help = capsys.readouterr().out.split("--text-lang")[1].split("--speed")[0]
    assert all(re.search(rf"\b{mode}\b", text_lang_help) for mode in SUPPORTED_MODES)
    with pytest.raises(SystemExit):
        cli.main(["say", "bonjour", "--text-lang", "fr"])
    assert "invalid choice: 'fr'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- logging, progress
@pytest.mark.parametrize("flags, shown, hidden", [
    ([], ["converting x.ckpt", "warning: careful"], ["detail"]),
    (["-q"], ["warning: careful"], ["converting", "detail"]),
    (["-v"], ["INFO dora_primespeech_mlx.loading: converting x.ckpt", "DEBUG", "detail"], []),
])
def test_cli_logging_is_terse_by_default(tmp_path, capsys, monkeypatch, flags, shown, hidden):
    def voices(args):
        log = logging.getLogger("dora_primespeech_mlx.loading")
        log.info("converting x.ckpt")
        log.debug("detail")
        log.warning("careful")
        logging.getLogger("some.other.library").info("not ours")
        return 0

    monkeypatch.setattr(commands, "_voices", voices)
    for argv in (flags + ["voices", "--model-root", str(tmp_path)], ["voices", "--model-root", str(tmp_path)] + flags):
        assert cli.main(argv) == 0
        err = capsys.readouterr().err
        for line in shown:
            assert err.count(line) == 1, (argv, err)
        for word in hidden + ["not ours"]:
            assert word not in err, (argv, err)
        if not flags:
            assert err.splitlines()[0] == "converting x.ckpt"


def test_first_use_conversion_is_announced_with_its_time(tmp_path, caplog):
    from dora_primespeech_mlx.loading import ensure_converted

    source = tmp_path / "voice.ckpt"
    source.write_bytes(b"weights")

    def convert(src, out):
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"")

    with caplog.at_level(logging.INFO, logger="dora_primespeech_mlx"):
        ensure_converted(source, "t2s", convert)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"converting {source} to MLX") for m in messages), messages
    assert any(re.match(r"converted voice\.ckpt in \d+\.\ds", m) for m in messages), messages


class FakeEngine:
    """The Synthesizer interface `say` uses: two segments, the first streamed in two chunks. (Text dropped as
    unspeakable is the engine's own warning.)"""

    device = "cpu"

    def __init__(self, model_root, registry=None, device="auto"):
        self.registry = registry

    def load_voice(self, voice):
        logging.getLogger("dora_primespeech_mlx.engine").info("loading voice %r", voice.name)

    def warmup(self, voice):
        pass

    def _results(self, text):
        from dora_primespeech_mlx.engine import Result

        sizes = [(0, "你好，世界。", 16000), (0, "", 32000), (1, "今天天气很好。", 48000)]
        for n, (index, piece, samples) in enumerate(sizes):
            yield Result(audio=np.zeros(samples, np.float32), sample_rate=32000, segment_index=index,
                         is_last=n == 2, text=piece)

    def stream(self, text, voice, options):
        yield from self._results(text)

    def synthesize(self, text, voice, options):
        from dora_primespeech_mlx.engine import Result

        audio = np.concatenate([r.audio for r in self._results(text)])
        return Result(audio=audio, sample_rate=32000, segment_index=0, is_last=True, text=text)


def install_voice(root: Path, name: str = "Maple") -> None:
    reg = VoiceRegistry(root)
    voice = reg.get(name)
    for path in [*reg.encoder_files(), voice.gpt_path, voice.sovits_path, voice.ref_audio]:
        _touch(path)


@pytest.mark.parametrize("stream", [True, False])
def test_say_reports_warm_up_and_chunks(tmp_path, capsys, monkeypatch, stream):
    from dora_primespeech_mlx import engine

    install_voice(tmp_path)
    monkeypatch.setattr(engine, "Synthesizer", FakeEngine)
    out = tmp_path / "out.wav"
    argv = ["say", "你好，世界。今天天气很好。", "--voice", "Maple", "--model-root", str(tmp_path), "-o", str(out)]
    assert cli.main(argv + (["--stream"] if stream else [])) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "loading voice 'Maple'" and lines[1].startswith("warming up")
    chunks = [line for line in lines if re.match(r"\+\d", line)]
    if stream:
        assert len(chunks) == 3
        assert re.fullmatch(r"\+\d+\.\d\ds  chunk 1: 0\.50 s of audio  \"你好，世界。\"", chunks[0])
        assert re.fullmatch(r"\+\d+\.\d\ds  chunk 2: 1\.00 s of audio  \(more of \"你好，世界。\"\)", chunks[1])
        assert re.fullmatch(r"\+\d+\.\d\ds  chunk 3: 1\.50 s of audio  \"今天天气很好。\"", chunks[2])
    else:
        assert chunks == []
    assert re.fullmatch(rf"wrote {re.escape(str(out))}: 3\.00 s of audio in \d+\.\d\d s \(real-time factor "
                        rf"\d+\.\d\d{'; first audio after [0-9.]+ s' if stream else ''}\)", lines[-1])
    with wave.open(str(out)) as f:
        assert f.getnframes() == 96000


# ------------------------------------------------------------------------------------- download offline
def test_download_offline_fails_once_fast_and_leaves_the_model_root_unchanged(tmp_path, capsys, offline_hub):
    pytest.importorskip("huggingface_hub")
    root = tmp_path / "models"
    _touch(root / "moyoyo" / "GPT_weights" / "mine.ckpt")
    (root / "voices.json").write_text("{}")
    before = listing(root)
    assert cli.main(["download", "--voice", "Doubao", "--model-root", str(root)]) != 0
    err = capsys.readouterr().err
    assert err.count(f"cannot reach the Hugging Face hub at {offline_hub}") == 1, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert "Retry" not in err
    assert listing(root) == before


def test_download_from_a_script_exits_non_zero_with_one_message(tmp_path, offline_hub):
    pytest.importorskip("huggingface_hub")
    root = tmp_path / "new" / "models"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(HF_ENDPOINT=offline_hub, OPENBLAS_NUM_THREADS="1")
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run([sys.executable, "-m", "dora_primespeech_mlx.cli", "download", "--voice", "Maple",
                           "--model-root", str(root)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach the Hugging Face hub at {offline_hub}")
    assert not (tmp_path / "new").exists()


class MessyHub(FakeHub):
    """Leaves what huggingface_hub leaves behind when a download fails: lock files, an empty partial
    file, its cache folder, the file's folder; one partial file with data; the first file completes."""

    def hf_hub_download(self, repo_id, filename, local_dir, **kwargs):
        self.calls.append((repo_id, filename, local_dir))
        cache = Path(local_dir) / ".cache" / "huggingface"
        (cache / "download" / Path(filename).parent).mkdir(parents=True, exist_ok=True)
        (cache / ".gitignore").write_text("*")
        (cache / "download" / f"{filename}.lock").write_bytes(b"")
        (Path(local_dir) / filename).parent.mkdir(parents=True, exist_ok=True)
        if len(self.calls) == 1:
            _touch(Path(local_dir) / filename)
            return str(Path(local_dir) / filename)
        if len(self.calls) == 2:
            (cache / "download" / "abc.etag.incomplete").write_bytes(b"partial data")
            raise ConnectionError("connection reset")
        raise AssertionError("not reached")


def test_a_failed_download_removes_what_it_created_and_keeps_the_rest(tmp_path):
    root = tmp_path / "models"
    _touch(root / "moyoyo" / "ref_audios" / "mine.wav")
    _touch(root / "moyoyo" / ".cache" / "huggingface" / "download" / "old.lock")
    before = listing(root)
    reg = VoiceRegistry(root)
    with pytest.raises(PrimeSpeechError, match="connection reset"):
        run_download(download_plan(reg, ["Maple"], with_g2pw=False), hub=MessyHub(), probe=False)
    after = listing(root)
    assert set(before) <= set(after)  # nothing that existed is gone
    added = sorted(set(after) - set(before))
    hubert = "moyoyo/chinese-hubert-base"
    partial = "moyoyo/.cache/huggingface/download/abc.etag.incomplete"
    assert added == sorted([hubert, f"{hubert}/config.json", partial])  # finished, and partial to resume


def test_a_failed_download_into_a_new_root_removes_the_root(tmp_path):
    root = tmp_path / "a" / "models"
    failing = FakeHub(fail_on="chinese-hubert-base/config.json")
    with pytest.raises(PrimeSpeechError):
        run_download(download_plan(VoiceRegistry(root), ["Maple"], with_g2pw=False), hub=failing, probe=False)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ REPOSITORY and the file overrides
def test_download_plan_uses_the_repository_and_skips_overridden_files(tmp_path):
    reg = VoiceRegistry(tmp_path, repository="mirror/tones",
                        voice_files={"Maple": {"gpt_weights": tmp_path / "mine.ckpt"}})
    plan = download_plan(reg, ["Maple"], with_g2pw=False)
    assert {r for r, _, _ in plan} == {"mirror/tones"}
    files = [f for _, f, _ in plan]
    assert "SoVITS_weights/maple_best_sovits.pth" in files and "ref_audios/maple_ref.wav" in files
    assert not [f for f in files if "GPT_weights" in f]


def test_download_command_takes_repository_from_the_environment(tmp_path, monkeypatch, fake_hub, capsys):
    hub = fake_hub
    monkeypatch.setenv("REPOSITORY", "mirror/tones")
    assert cli.main(["download", "--voice", "Cove", "--model-root", str(tmp_path)]) == 0
    assert {repo for repo, _, _ in hub.calls} == {"mirror/tones"}
    assert "downloaded from mirror/tones" in capsys.readouterr().err


def test_download_with_an_override_naming_no_file_says_so_and_fails(tmp_path, monkeypatch, fake_hub, capsys):
    hub = fake_hub
    monkeypatch.setenv("VOICE_NAME", "Cove")
    monkeypatch.setenv("GPT_MODEL_PATH", str(tmp_path / "nowhere.ckpt"))
    assert cli.main(["download", "--voice", "Cove", "--model-root", str(tmp_path)]) == 1
    assert not [f for _, f, _ in hub.calls if "GPT_weights" in f]
    assert f"GPT_MODEL_PATH names {tmp_path / 'nowhere.ckpt'}, which does not exist" in capsys.readouterr().err


def test_say_names_a_missing_override_and_the_repository(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REPOSITORY", "mirror/tones")
    assert cli.main(["say", "hi", "--voice", "Maple", "--model-root", str(tmp_path)]) == 2
    assert "Hugging Face repository mirror/tones" in capsys.readouterr().err
    monkeypatch.setenv("VOICE_NAME", "Maple")
    monkeypatch.setenv("REFERENCE_AUDIO_PATH", "ref_audios/none.wav")
    assert cli.main(["say", "hi", "--voice", "Maple", "--model-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"REFERENCE_AUDIO_PATH names {tmp_path / 'moyoyo' / 'ref_audios' / 'none.wav'}" in err
