"""The package's configuration: every environment variable the package uses is read here, once.

`NodeConfig.from_env(os.environ)` returns the configuration and a list of problems. A variable with an
invalid value is reported as a problem (the node logs it through its `log` output) and replaced by its
default; reading the configuration never raises. The node and the CLI read it at start-up and pass what
the library needs down as arguments; nothing else in the package reads the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_VOICE = "Doubao"
DEFAULT_MODEL_DIR = "~/.dora/models/primespeech"
DEFAULT_REPOSITORY = "MoYoYoTech/tone-models"
# The configured voice's files that the original's GPT_MODEL_PATH, SOVITS_MODEL_PATH and REFERENCE_AUDIO_PATH
# replace, by the voices.json key of each file.
FILE_OVERRIDES = {"gpt_weights": "GPT_MODEL_PATH", "sovits_weights": "SOVITS_MODEL_PATH",
                  "reference_audio": "REFERENCE_AUDIO_PATH"}
TEXT_LANGS = ("auto", "auto_yue", "en", "zh", "ja", "yue", "ko", "all_zh", "all_ja", "all_yue", "all_ko")
SPLIT_METHODS = ("cut0", "cut1", "cut2", "cut3", "cut4", "cut5")
LOG_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}
DEVICES = ("auto", "cpu", "gpu")
DTYPES = ("auto", "float32", "float16", "bfloat16")
ENCODER_BACKENDS = ("auto", "mlx", "coreml")
CPU_KERNELS = ("auto", "off")
T2S_BITS = ("16", "8", "4")
FRAGMENT_INTERVAL_BATCH = 0.07
FRAGMENT_INTERVAL_STREAMING = 0.3

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
# Common mistakes seen in dataflows, answered with the code that was meant.
_LANG_HINTS = {"cn": "zh", "chinese": "zh", "zh-cn": "zh", "english": "en", "japanese": "ja", "jp": "ja",
               "korean": "ko", "kr": "ko", "cantonese": "yue"}


@dataclass(frozen=True)
class NodeConfig:
    """Everything the node reads from its environment (names as in the original dora-primespeech)."""

    voice_name: str = DEFAULT_VOICE
    model_dir: Path = field(default_factory=lambda: Path(DEFAULT_MODEL_DIR).expanduser())
    text_lang: str = "auto"
    prompt_lang: str | None = None  # None: the voice's own language
    prompt_text: str | None = None  # None: the voice's own transcript
    speed_factor: float | None = None  # None: the voice's default speed
    fragment_interval: float = FRAGMENT_INTERVAL_BATCH
    return_fragment: bool = False
    top_k: int = 5
    top_p: float = 1.0
    temperature: float = 1.0
    seed: int = 233333
    text_split_method: str = "cut5"
    batch_size: int = 100
    split_bucket: bool = True
    use_gpu: bool = False  # accepted for compatibility; the MLX device comes from `device`
    legacy_device: str = "cpu"  # DEVICE, accepted for compatibility
    log_level: str = "INFO"
    sample_rate: int = 32000  # read like the original; output is always the model's 32 kHz
    num_threads: int = 4  # read like the original; unused
    device: str = "auto"  # PRIMESPEECH_DEVICE
    dtype: str = "auto"  # PRIMESPEECH_DTYPE
    voices_file: Path | None = None  # PRIMESPEECH_VOICES_FILE
    encoder_backend: str = "auto"  # PRIMESPEECH_ENCODER_BACKEND
    max_voices: int = 3  # PRIMESPEECH_MAX_VOICES
    max_text_chars: int = 5000  # PRIMESPEECH_MAX_TEXT_CHARS
    stream_chunk: int = 16  # PRIMESPEECH_STREAM_CHUNK: codes in the first streamed chunk (0: whole segments)
    cpu_kernels: str = "auto"  # PRIMESPEECH_CPU_KERNELS: the CPU accelerator's switch (auto, off)
    t2s_bits: int = 16  # PRIMESPEECH_T2S_BITS: T2S weights quantized to 8 or 4 bits on MLX's own step
    hf_endpoint: str | None = None  # HF_ENDPOINT: hub mirror for `download` (None: huggingface_hub's own)
    hf_hub_offline: bool = False  # HF_HUB_OFFLINE: `download` refuses to run
    # The original's overrides of VOICE_NAME's files (None: the voice's own). Relative paths are resolved
    # by the voice registry against <model root>/moyoyo, like the paths of voices.json.
    gpt_model_path: Path | None = None  # GPT_MODEL_PATH
    sovits_model_path: Path | None = None  # SOVITS_MODEL_PATH
    reference_audio_path: Path | None = None  # REFERENCE_AUDIO_PATH
    repository: str = DEFAULT_REPOSITORY  # REPOSITORY: the hub repository of the built-in voices and encoders

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> tuple[NodeConfig, list[str]]:
        """Read the configuration from `environ` (default os.environ): (config, problems)."""
        env = _Reader(os.environ if environ is None else environ)
        streaming = env.boolean("RETURN_FRAGMENT", False)
        text_lang = env.language("TEXT_LANG", "auto")
        prompt_lang = env.language("PROMPT_LANG", None)
        config = cls(
            voice_name=env.text("VOICE_NAME", DEFAULT_VOICE),
            model_dir=env.path("PRIMESPEECH_MODEL_DIR", DEFAULT_MODEL_DIR),
            text_lang=text_lang or "auto",
            prompt_lang=None if prompt_lang == "auto" else prompt_lang,
            prompt_text=env.text("PROMPT_TEXT", None),
            speed_factor=env.number("SPEED_FACTOR", None, float, low=0.1, high=5.0),
            fragment_interval=env.number(
                "FRAGMENT_INTERVAL", FRAGMENT_INTERVAL_STREAMING if streaming else FRAGMENT_INTERVAL_BATCH,
                float, low=0.0, high=10.0),
            return_fragment=streaming,
            top_k=env.number("TOP_K", 5, int, low=1, high=1000),
            top_p=env.number("TOP_P", 1.0, float, low=0.0, high=1.0, low_open=True),
            temperature=env.number("TEMPERATURE", 1.0, float, low=0.0, high=10.0, low_open=True),
            seed=env.number("SEED", 233333, int, low=-1, high=2**32 - 1),
            text_split_method=env.choice("TEXT_SPLIT_METHOD", "cut5", SPLIT_METHODS),
            batch_size=env.number("BATCH_SIZE", 100, int, low=1, high=10000),
            split_bucket=env.boolean("SPLIT_BUCKET", True),
            use_gpu=env.boolean("USE_GPU", False),
            legacy_device=env.text("DEVICE", None) or "cpu",
            log_level=env.log_level("LOG_LEVEL", "INFO"),
            sample_rate=env.number("SAMPLE_RATE", 32000, int, low=8000, high=192000),
            num_threads=env.number("NUM_THREADS", 4, int, low=1, high=1024),
            device=env.choice("PRIMESPEECH_DEVICE", "auto", DEVICES),
            dtype=env.choice("PRIMESPEECH_DTYPE", "auto", DTYPES),
            voices_file=env.path("PRIMESPEECH_VOICES_FILE", None),
            encoder_backend=env.choice("PRIMESPEECH_ENCODER_BACKEND", "auto", ENCODER_BACKENDS),
            max_voices=env.number("PRIMESPEECH_MAX_VOICES", 3, int, low=1, high=64),
            max_text_chars=env.number("PRIMESPEECH_MAX_TEXT_CHARS", 5000, int, low=1, high=1_000_000),
            stream_chunk=env.number("PRIMESPEECH_STREAM_CHUNK", 16, int, low=0, high=1500),
            cpu_kernels=env.choice("PRIMESPEECH_CPU_KERNELS", "auto", CPU_KERNELS),
            t2s_bits=int(env.choice("PRIMESPEECH_T2S_BITS", "16", T2S_BITS)),
            hf_endpoint=env.text("HF_ENDPOINT", None),
            hf_hub_offline=env.flag("HF_HUB_OFFLINE"),
            gpt_model_path=env.file("GPT_MODEL_PATH"),
            sovits_model_path=env.file("SOVITS_MODEL_PATH"),
            reference_audio_path=env.file("REFERENCE_AUDIO_PATH"),
            repository=env.repository("REPOSITORY", DEFAULT_REPOSITORY),
        )
        return config, env.problems

    def file_overrides(self) -> dict[str, Path]:
        """The configured voice's files replaced by GPT_MODEL_PATH, SOVITS_MODEL_PATH, REFERENCE_AUDIO_PATH,
        by voices.json key (`gpt_weights`, `sovits_weights`, `reference_audio`); empty when none is set."""
        paths = {"gpt_weights": self.gpt_model_path, "sovits_weights": self.sovits_model_path,
                 "reference_audio": self.reference_audio_path}
        return {key: path for key, path in paths.items() if path is not None}

    def notes(self) -> list[str]:
        """Informational remarks about accepted-but-ignored settings, for the start-up log."""
        notes = []
        if self.use_gpu or self.legacy_device != "cpu":
            notes.append(f"USE_GPU={self.use_gpu} / DEVICE={self.legacy_device} are accepted for compatibility "
                         f"only; MLX runs on PRIMESPEECH_DEVICE={self.device}")
        if self.sample_rate != 32000:
            notes.append(f"SAMPLE_RATE={self.sample_rate} is ignored: audio is always sent at 32000 Hz")
        return notes


_VAR = re.compile(r"\$(\w+|\{[^}]*\})")
# A Hugging Face repository id: owner/name, letters, digits, "-", "_", "." (no "--" or ".." in a name).
_REPO_PART = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"
_REPOSITORY = re.compile(rf"{_REPO_PART}/{_REPO_PART}")


def expand_path(raw: str, environ: Mapping[str, str]) -> str:
    """`~` and `$VAR`/`${VAR}` expanded from `environ` (unknown variables are left as they are)."""

    def var(match: re.Match[str]) -> str:
        name = match.group(1).strip("{}")
        return environ.get(name, match.group(0))

    raw = _VAR.sub(var, raw)
    if raw == "~" or raw.startswith("~/"):
        home = environ.get("HOME")
        return (home + raw[1:]) if home else os.path.expanduser(raw)
    return os.path.expanduser(raw)


class _Reader:
    """Typed access to an environment mapping that records problems instead of raising."""

    def __init__(self, environ: Mapping[str, str]):
        self.environ = environ
        self.problems: list[str] = []

    def _raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        if value is None:
            return None
        value = str(value).strip()
        return value or None

    def _bad(self, name: str, raw: str, expected: str, default: Any) -> Any:
        self.problems.append(f"invalid {name}={raw!r}: expected {expected}; using the default {default!r}")
        return default

    def text(self, name: str, default: str | None) -> str | None:
        raw = self._raw(name)
        return default if raw is None else raw

    def path(self, name: str, default: str | None) -> Path | None:
        raw = self._raw(name) or default
        if raw is None:
            return None
        return Path(expand_path(raw, self.environ))

    def file(self, name: str) -> Path | None:
        """An optional file path (`~` and `$VARS` expanded; a relative one stays relative). A variable it
        names that is not set makes it invalid: None, as when unset."""
        raw = self._raw(name)
        if raw is None:
            return None
        expanded = expand_path(raw, self.environ)
        unset = [m.group(0) for m in _VAR.finditer(expanded)]
        if unset:
            self.problems.append(f"invalid {name}={raw!r}: {', '.join(unset)} is not set; using the voice's "
                                 "own file")
            return None
        return Path(expanded)

    def repository(self, name: str, default: str) -> str:
        raw = self._raw(name)
        if raw is None:
            return default
        if _REPOSITORY.fullmatch(raw) and "--" not in raw and ".." not in raw:
            return raw
        return self._bad(name, raw, "a Hugging Face repository id such as owner/name", default)

    def boolean(self, name: str, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        return self._bad(name, raw, "true or false", default)

    def flag(self, name: str) -> bool:
        """A variable another library owns (huggingface_hub's): true when it says so, never a problem."""
        raw = self._raw(name)
        return raw is not None and raw.lower() in _TRUE

    def number(self, name: str, default: Any, kind: Callable[[str], Any], *, low: float, high: float,
               low_open: bool = False) -> Any:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = kind(raw)
        except ValueError:
            value = None
        if kind is float and value is not None and value != value:  # NaN
            value = None
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        if value is None or value < low or value > high or (low_open and value == low):
            return self._bad(name, raw, f"{'an integer' if kind is int else 'a number'} in {interval}", default)
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.lower() in choices:
            return raw.lower()
        return self._bad(name, raw, "one of " + ", ".join(choices), default)

    def language(self, name: str, default: str | None) -> str | None:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.lower() in TEXT_LANGS:
            return raw.lower()
        hint = _LANG_HINTS.get(raw.lower())
        expected = "one of " + ", ".join(TEXT_LANGS) + (f" (did you mean {hint!r}?)" if hint else "")
        return self._bad(name, raw, expected, default or "auto")

    def log_level(self, name: str, default: str) -> str:
        raw = self._raw(name)
        if raw is None:
            return default
        level = {"WARN": "WARNING", "ERR": "ERROR"}.get(raw.upper(), raw.upper())
        if level in LOG_LEVELS:
            return level
        return self._bad(name, raw, "one of DEBUG, INFO, WARNING, ERROR", default)
