"""NodeConfig.from_env: the original's defaults, every variable parsed, bad values -> problem + default."""

from __future__ import annotations

import ast
import dataclasses
import os
from pathlib import Path

import pytest

from dora_primespeech_mlx.config import NodeConfig

DEFAULTS = {
    "voice_name": "Doubao", "text_lang": "auto", "prompt_lang": None, "prompt_text": None,
    "speed_factor": None, "fragment_interval": 0.07, "return_fragment": False, "top_k": 5, "top_p": 1.0,
    "temperature": 1.0, "seed": 233333, "text_split_method": "cut5", "batch_size": 100, "split_bucket": True,
    "use_gpu": False, "legacy_device": "cpu", "log_level": "INFO", "sample_rate": 32000, "num_threads": 4,
    "device": "auto", "dtype": "auto", "voices_file": None, "encoder_backend": "auto", "max_voices": 3,
    "max_text_chars": 5000, "stream_chunk": 16, "cpu_kernels": "auto", "t2s_bits": 16, "hf_endpoint": None, "hf_hub_offline": False,
    "gpt_model_path": None, "sovits_model_path": None, "reference_audio_path": None,
    "repository": "MoYoYoTech/tone-models",
}


def test_defaults_are_the_originals():
    config, problems = NodeConfig.from_env({})
    assert problems == []
    assert {k: v for k, v in dataclasses.asdict(config).items() if k != "model_dir"} == DEFAULTS
    assert config.model_dir == Path(os.path.expanduser("~/.dora/models/primespeech"))
    assert config.notes() == []


def test_every_variable_is_read():
    env = {
        "VOICE_NAME": "Luo Xiang", "PRIMESPEECH_MODEL_DIR": "/models", "TEXT_LANG": "ZH", "PROMPT_LANG": "en",
        "PROMPT_TEXT": "a transcript", "SPEED_FACTOR": "1.25", "FRAGMENT_INTERVAL": "0.2",
        "RETURN_FRAGMENT": "TRUE", "TOP_K": "10", "TOP_P": "0.9", "TEMPERATURE": "0.7", "SEED": "-1",
        "TEXT_SPLIT_METHOD": "cut1", "BATCH_SIZE": "8", "SPLIT_BUCKET": "false", "USE_GPU": "true",
        "DEVICE": "cuda:0", "LOG_LEVEL": "debug", "SAMPLE_RATE": "16000", "NUM_THREADS": "2",
        "PRIMESPEECH_DEVICE": "CPU", "PRIMESPEECH_DTYPE": "float16", "PRIMESPEECH_VOICES_FILE": "/v.json",
        "PRIMESPEECH_ENCODER_BACKEND": "coreml", "PRIMESPEECH_MAX_VOICES": "5",
        "PRIMESPEECH_MAX_TEXT_CHARS": "300", "PRIMESPEECH_STREAM_CHUNK": "0", "PRIMESPEECH_CPU_KERNELS": "OFF",
        "PRIMESPEECH_T2S_BITS": "8",
        "HF_ENDPOINT": "https://mirror.example", "HF_HUB_OFFLINE": "1", "GPT_MODEL_PATH": "/w/a.ckpt",
        "SOVITS_MODEL_PATH": "SoVITS_weights/b.pth", "REFERENCE_AUDIO_PATH": "~/c.wav", "REPOSITORY": "me/my-voices",
    }
    config, problems = NodeConfig.from_env(env)
    assert problems == []
    assert config == NodeConfig(
        voice_name="Luo Xiang", model_dir=Path("/models"), text_lang="zh", prompt_lang="en",
        prompt_text="a transcript", speed_factor=1.25, fragment_interval=0.2, return_fragment=True, top_k=10,
        top_p=0.9, temperature=0.7, seed=-1, text_split_method="cut1", batch_size=8, split_bucket=False,
        use_gpu=True, legacy_device="cuda:0", log_level="DEBUG", sample_rate=16000, num_threads=2,
        device="cpu", dtype="float16", voices_file=Path("/v.json"), encoder_backend="coreml", max_voices=5,
        max_text_chars=300, stream_chunk=0, cpu_kernels="off", t2s_bits=8, hf_endpoint="https://mirror.example",
        hf_hub_offline=True, gpt_model_path=Path("/w/a.ckpt"), sovits_model_path=Path("SoVITS_weights/b.pth"),
        reference_audio_path=Path(os.path.expanduser("~/c.wav")), repository="me/my-voices")
    notes = " ".join(config.notes())
    assert "USE_GPU" in notes and "PRIMESPEECH_DEVICE=cpu" in notes and "SAMPLE_RATE=16000" in notes


def test_fragment_interval_default_depends_on_streaming():
    assert NodeConfig.from_env({"RETURN_FRAGMENT": "true"})[0].fragment_interval == 0.3
    assert NodeConfig.from_env({"RETURN_FRAGMENT": "false"})[0].fragment_interval == 0.07


def test_paths_expand_home_and_variables_from_the_given_environment():
    env = {"HOME": "/home/u", "BASE": "/data", "PRIMESPEECH_MODEL_DIR": "$BASE/primespeech",
           "PRIMESPEECH_VOICES_FILE": "${BASE}/voices.json"}
    config, problems = NodeConfig.from_env(env)
    assert problems == []
    assert config.model_dir == Path("/data/primespeech") and config.voices_file == Path("/data/voices.json")
    assert NodeConfig.from_env({"HOME": "/home/u", "PRIMESPEECH_MODEL_DIR": "~/m"})[0].model_dir == Path("/home/u/m")
    assert NodeConfig.from_env({"HOME": "/home/u"})[0].model_dir == Path("/home/u/.dora/models/primespeech")
    assert NodeConfig.from_env({"PRIMESPEECH_MODEL_DIR": "$NOPE/x"})[0].model_dir == Path("$NOPE/x")


def test_prompt_lang_auto_means_the_voices_language():
    assert NodeConfig.from_env({"PROMPT_LANG": "auto"})[0].prompt_lang is None
    assert NodeConfig.from_env({"PROMPT_TEXT": "   "})[0].prompt_text is None


@pytest.mark.parametrize("name, value, field, default, hint", [
    ("TEXT_LANG", "cn", "text_lang", "auto", "did you mean 'zh'"),
    ("PROMPT_LANG", "chinese", "prompt_lang", None, "did you mean 'zh'"),
    ("TEXT_LANG", "xx", "text_lang", "auto", "one of auto"),
    ("SPEED_FACTOR", "fast", "speed_factor", None, "a number"),
    ("SPEED_FACTOR", "0", "speed_factor", None, "[0.1, 5.0]"),
    ("FRAGMENT_INTERVAL", "-1", "fragment_interval", 0.07, "[0.0, 10.0]"),
    ("RETURN_FRAGMENT", "maybe", "return_fragment", False, "true or false"),
    ("TOP_K", "5.5", "top_k", 5, "an integer"),
    ("TOP_K", "0", "top_k", 5, "[1, 1000]"),
    ("TOP_P", "0", "top_p", 1.0, "(0.0, 1.0]"),
    ("TOP_P", "nan", "top_p", 1.0, "a number"),
    ("TEMPERATURE", "-2", "temperature", 1.0, "a number"),
    ("SEED", "abc", "seed", 233333, "an integer"),
    ("TEXT_SPLIT_METHOD", "cut9", "text_split_method", "cut5", "cut0, cut1"),
    ("BATCH_SIZE", "0", "batch_size", 100, "an integer"),
    ("SPLIT_BUCKET", "2", "split_bucket", True, "true or false"),
    ("USE_GPU", "yes please", "use_gpu", False, "true or false"),
    ("LOG_LEVEL", "loud", "log_level", "INFO", "DEBUG, INFO"),
    ("SAMPLE_RATE", "44.1k", "sample_rate", 32000, "an integer"),
    ("NUM_THREADS", "-4", "num_threads", 4, "an integer"),
    ("PRIMESPEECH_DEVICE", "cuda", "device", "auto", "auto, cpu, gpu"),
    ("PRIMESPEECH_DTYPE", "int8", "dtype", "auto", "float32"),
    ("PRIMESPEECH_ENCODER_BACKEND", "onnx", "encoder_backend", "auto", "mlx, coreml"),
    ("PRIMESPEECH_MAX_VOICES", "0", "max_voices", 3, "[1, 64]"),
    ("PRIMESPEECH_MAX_TEXT_CHARS", "many", "max_text_chars", 5000, "an integer"),
    ("PRIMESPEECH_CPU_KERNELS", "on", "cpu_kernels", "auto", "one of auto, off"),
    ("PRIMESPEECH_T2S_BITS", "2", "t2s_bits", 16, "one of 16, 8, 4"),
    ("REPOSITORY", "tone-models", "repository", "MoYoYoTech/tone-models", "owner/name"),
    ("REPOSITORY", "https://huggingface.co/a/b", "repository", "MoYoYoTech/tone-models", "owner/name"),
    ("REPOSITORY", "a/b--c", "repository", "MoYoYoTech/tone-models", "owner/name"),
])
def test_invalid_values_are_problems_and_use_the_default(name, value, field, default, hint):
    config, problems = NodeConfig.from_env({name: value})
    assert getattr(config, field) == default
    assert len(problems) == 1
    assert problems[0].startswith(f"invalid {name}={value!r}: expected ") and hint in problems[0]


def test_file_overrides_are_the_originals_variables_by_voices_json_key():
    config, problems = NodeConfig.from_env({"GPT_MODEL_PATH": "$W/a.ckpt", "REFERENCE_AUDIO_PATH": " ",
                                            "W": "/weights"})
    assert problems == []
    assert config.file_overrides() == {"gpt_weights": Path("/weights/a.ckpt")}
    assert NodeConfig.from_env({})[0].file_overrides() == {}
    relative = NodeConfig.from_env({"SOVITS_MODEL_PATH": "SoVITS_weights/x.pth"})[0]
    assert relative.file_overrides() == {"sovits_weights": Path("SoVITS_weights/x.pth")}  # the registry resolves it


def test_an_override_naming_an_unset_variable_is_a_problem_and_the_voices_own_file_is_used():
    config, problems = NodeConfig.from_env({"GPT_MODEL_PATH": "$MODELS/a.ckpt", "SOVITS_MODEL_PATH": "/b.pth"})
    assert config.gpt_model_path is None and config.sovits_model_path == Path("/b.pth")
    assert problems == ["invalid GPT_MODEL_PATH='$MODELS/a.ckpt': $MODELS is not set; using the voice's own file"]


@pytest.mark.parametrize("repository", ["MoYoYoTech/tone-models", "a/b", "user_1/my.voices-2"])
def test_repository_ids(repository):
    assert NodeConfig.from_env({"REPOSITORY": repository}) == (NodeConfig(repository=repository), [])


def test_several_problems_are_all_reported():
    _, problems = NodeConfig.from_env({"TOP_K": "x", "TOP_P": "y", "LOG_LEVEL": "z", "VOICE_NAME": "Maple"})
    assert [p.split("=")[0] for p in problems] == ["invalid TOP_K", "invalid TOP_P", "invalid LOG_LEVEL"]


@pytest.mark.parametrize("raw, value", [("1", True), ("yes", True), ("On", True), ("0", False), ("no", False),
                                        ("OFF", False), ("", False)])
def test_booleans(raw, value):
    assert NodeConfig.from_env({"RETURN_FRAGMENT": raw})[0].return_fragment is value


def test_log_level_aliases():
    assert NodeConfig.from_env({"LOG_LEVEL": "warn"})[0].log_level == "WARNING"
    assert NodeConfig.from_env({"LOG_LEVEL": "Error"})[0].log_level == "ERROR"


def test_cpu_kernels_switch():
    assert NodeConfig.from_env({})[0].cpu_kernels == "auto"
    assert NodeConfig.from_env({"PRIMESPEECH_CPU_KERNELS": "auto"})[0].cpu_kernels == "auto"
    assert NodeConfig.from_env({"PRIMESPEECH_CPU_KERNELS": " Off "})[0].cpu_kernels == "off"


@pytest.mark.parametrize("raw, offline", [("1", True), ("TRUE", True), ("on", True), ("yes", True), ("0", False),
                                          ("", False), ("later", False)])
def test_huggingface_variables_are_read_as_huggingface_hub_reads_them(raw, offline):
    config, problems = NodeConfig.from_env({"HF_HUB_OFFLINE": raw, "HF_ENDPOINT": " "})
    assert (config.hf_hub_offline, config.hf_endpoint, problems) == (offline, None, [])


def test_from_env_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("VOICE_NAME", "Maple")
    monkeypatch.setenv("PRIMESPEECH_CPU_KERNELS", "off")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    config, _ = NodeConfig.from_env()
    assert (config.voice_name, config.cpu_kernels, config.hf_endpoint) == ("Maple", "off", "http://127.0.0.1:9")


PACKAGE = Path(__file__).resolve().parents[1] / "dora_primespeech_mlx"
# Still reading the environment, each for its own reason: runtime.py's OpenBLAS preload (before any
# configuration exists), the dev-only oracle/ and bench/ packages and the example helper nodes (separate
# Dora nodes), all on their way out of this package or of environment reading.
ENV_READERS_ASIDE = ("config.py", "runtime.py", "oracle", "bench", "nodes")


def test_node_config_is_the_only_reader_of_the_environment():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in ENV_READERS_ASIDE:
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            if name in ("environ", "getenv", "putenv", "unsetenv", "expandvars"):
                found.append(f"{relative}:{node.lineno}: {name}")
    assert found == []


@pytest.mark.parametrize("lang", ["auto", "auto_yue", "zh", "en", "ja", "ko", "yue", "all_zh", "all_ja", "all_ko",
                                  "all_yue"])
def test_every_upstream_language_value_is_accepted(lang):
    from dora_primespeech_mlx.text import SUPPORTED_MODES
    from dora_primespeech_mlx.voices import CUSTOM_LANGS

    config, problems = NodeConfig.from_env({"TEXT_LANG": lang.upper(), "PROMPT_LANG": lang})
    assert problems == [] and config.text_lang == lang
    assert config.prompt_lang == (None if lang == "auto" else lang)  # auto: the voice's own language
    assert lang in SUPPORTED_MODES and lang in CUSTOM_LANGS  # the frontend and VOICE:CUSTOM take it too
