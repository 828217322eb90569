"""Voice registry and the model-root layout: the 15 built-in voices of dora-primespeech plus user voices.

The built-in table is `configs/voices.json` (shipped in the package). Files live under the model root in
the original's layout (`ModelRoot`, the one place that knows it), so an existing dora-primespeech download
works unchanged:

    <model_root>/moyoyo/GPT_weights/<stem>_best_gpt.ckpt
    <model_root>/moyoyo/SoVITS_weights/<stem>_best_sovits.pth
    <model_root>/moyoyo/ref_audios/<stem>_ref.wav
    <model_root>/moyoyo/chinese-hubert-base/, chinese-roberta-wwm-ext-large/   (shared encoders)
    <model_root>/G2PWModel/                                                   (optional g2pW)
    <model_root>/voices.json                                                  (optional user voices)

Converted MLX weights are cached beside their official files (see `loading.converted_dir_for`), so they
follow this layout without a place of their own.

User voices use the same entry format (`gpt_weights`, `sovits_weights`, `reference_audio`, `prompt_text`,
`prompt_lang`, `text_lang`, `speed_factor`, `aliases`), either as `{"voices": {name: entry}}` or as a
bare `{name: entry}` mapping. Relative paths are resolved against `<model_root>/moyoyo`. They are read
from `<model_root>/voices.json` when that file exists and from an explicit file (the node passes
PRIMESPEECH_VOICES_FILE); a user voice with a built-in's name replaces it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import PrimeSpeechError

logger = logging.getLogger(__name__)

CUSTOM_LANGS = ("zh", "en", "ja", "auto")
ENCODER_KINDS = ("hubert", "roberta")
_REQUIRED_KEYS = ("gpt_weights", "sovits_weights", "reference_audio", "prompt_text")


@dataclass(frozen=True)
class ModelRoot:
    """Every path of a model root, in the original dora-primespeech's layout (`~` is expanded)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).expanduser())

    @property
    def moyoyo(self) -> Path:
        """The folder of the voices and the shared encoders; voice paths are relative to it."""
        return self.path / "moyoyo"

    @property
    def gpt_weights(self) -> Path:
        return self.moyoyo / "GPT_weights"

    @property
    def sovits_weights(self) -> Path:
        return self.moyoyo / "SoVITS_weights"

    @property
    def ref_audios(self) -> Path:
        return self.moyoyo / "ref_audios"

    @property
    def hubert(self) -> Path:
        """The official CNHuBERT folder (config.json, preprocessor_config.json, pytorch_model.bin)."""
        return self.moyoyo / "chinese-hubert-base"

    @property
    def roberta(self) -> Path:
        """The official Chinese RoBERTa folder (config.json, pytorch_model.bin, tokenizer.json)."""
        return self.moyoyo / "chinese-roberta-wwm-ext-large"

    @property
    def g2pw(self) -> Path:
        """The optional g2pW polyphone model folder."""
        return self.path / "G2PWModel"

    @property
    def user_voices(self) -> Path:
        """The user voices file read automatically when it exists."""
        return self.path / "voices.json"

    def encoder(self, kind: str) -> Path:
        """The official folder of a shared encoder: `hubert` or `roberta`."""
        if kind not in ENCODER_KINDS:
            raise ValueError(f"unknown encoder {kind!r}: expected one of {', '.join(ENCODER_KINDS)}")
        return self.hubert if kind == "hubert" else self.roberta

    def encoder_files(self) -> list[Path]:
        """Files every voice needs: the shared HuBERT and RoBERTa (+ tokenizer)."""
        return [self.hubert / "config.json", self.hubert / "pytorch_model.bin",
                self.roberta / "config.json", self.roberta / "pytorch_model.bin", self.roberta / "tokenizer.json"]

    def g2pw_tokenizers(self) -> list[Path]:
        """Where g2pW's BERT tokenizer.json may be, in order: its own folder, the shared RoBERTa, and a
        RoBERTa folder directly under the root."""
        return [self.g2pw / "tokenizer.json", self.roberta / "tokenizer.json",
                self.path / self.roberta.name / "tokenizer.json"]

    def resolve(self, path: str | os.PathLike) -> Path:
        """A voice file path as written in a voices table: absolute, `~`, or relative to `moyoyo/`."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.moyoyo / p


@dataclass(frozen=True)
class Voice:
    """Everything needed to speak with one voice."""

    name: str
    gpt_path: Path
    sovits_path: Path
    ref_audio: Path
    prompt_text: str
    prompt_lang: str
    text_lang: str
    speed: float


def builtin_config() -> dict[str, Any]:
    """The packaged `configs/voices.json` as a dict."""
    text = resources.files("dora_primespeech_mlx").joinpath("configs", "voices.json").read_text("utf-8")
    return json.loads(text)


def normalize_name(name: str) -> str:
    """Case-, space-, dash- and underscore-insensitive lookup key: "Luo Xiang" == "luoxiang"."""
    return "".join(ch for ch in name.lower() if ch not in " _-")


class VoiceRegistry:
    """Built-in and user voices, resolved against one model root."""

    def __init__(self, model_root: str | os.PathLike, user_voices_file: str | os.PathLike | None = None):
        self.root = ModelRoot(Path(model_root))
        self.model_root = self.root.path
        self.config = builtin_config()
        self.repository: str = self.config["repository"]
        self.default_voice: str = self.config["default_voice"]
        self._entries: dict[str, dict[str, Any]] = {}
        self._builtin: set[str] = set()
        for name, entry in self.config["voices"].items():
            self._add(name, dict(entry, repository=self.repository), builtin=True)
        if self.root.user_voices.is_file():
            self._load_user_file(self.root.user_voices, strict=False)
        if user_voices_file:
            path = Path(user_voices_file).expanduser()
            if not path.is_file():
                raise PrimeSpeechError(f"user voices file not found: {path} (check PRIMESPEECH_VOICES_FILE)")
            self._load_user_file(path, strict=True)

    # -- layout (the engine's view of `root`) -------------------------------------------------------
    @property
    def hubert_dir(self) -> Path:
        return self.root.hubert

    @property
    def roberta_dir(self) -> Path:
        return self.root.roberta

    @property
    def g2pw_dir(self) -> Path:
        return self.root.g2pw

    # -- lookup ------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Voice names, built-ins first in the original's order, then user voices."""
        return list(self._entries)

    def is_builtin(self, name: str) -> bool:
        return self._canonical(name) in self._builtin

    def get(self, name: str) -> Voice:
        """The voice called `name` (case/space-insensitive; stems and aliases accepted)."""
        canonical = self._canonical(name)
        if canonical is None:
            raise PrimeSpeechError(f"unknown voice {name!r}; known: {', '.join(self.names())}")
        entry = self._entries[canonical]
        return Voice(
            name=canonical,
            gpt_path=self.root.resolve(entry["gpt_weights"]),
            sovits_path=self.root.resolve(entry["sovits_weights"]),
            ref_audio=self.root.resolve(entry["reference_audio"]),
            prompt_text=entry["prompt_text"],
            prompt_lang=entry.get("prompt_lang", entry.get("text_lang", "auto")),
            text_lang=entry.get("text_lang", "auto"),
            speed=float(entry.get("speed_factor", 1.0)),
        )

    def entry(self, name: str) -> dict[str, Any]:
        """The raw table entry of a voice (paths as written in the JSON)."""
        self.get(name)
        return dict(self._entries[self._canonical(name)])

    def encoder_files(self) -> list[Path]:
        """Files every voice needs: the shared HuBERT and RoBERTa (+ tokenizer)."""
        return self.root.encoder_files()

    def missing_files(self, name: str) -> list[Path]:
        """Files this voice needs that are not on disk (empty when installed)."""
        voice = self.get(name)
        needed = [voice.gpt_path, voice.sovits_path, voice.ref_audio, *self.encoder_files()]
        return [p for p in needed if not p.is_file()]

    def installed(self, name: str) -> bool:
        """True when the voice's weights, reference clip and the shared encoders are all present."""
        return not self.missing_files(name)

    def custom(self, ref_audio: str | os.PathLike, prompt_text: str, prompt_lang: str,
               gpt_path: str | os.PathLike | None = None, sovits_path: str | os.PathLike | None = None) -> Voice:
        """A zero-shot voice (`VOICE:CUSTOM`: Doubao's weights) or a trained one (`VOICE:TRAINED`: own weights).

        As in the original, a language outside zh/en/ja/auto becomes auto, and the speed is 1.1.
        """
        ref = Path(ref_audio).expanduser()
        if not ref.is_file():
            raise PrimeSpeechError(f"reference audio not found: {ref} (give an absolute path to a 3-10 s WAV)")
        lang = prompt_lang if prompt_lang in CUSTOM_LANGS else "auto"
        base = self.get(self.default_voice)
        trained = gpt_path is not None or sovits_path is not None
        voice = replace(base, name="TRAINED" if trained else "CUSTOM", ref_audio=ref, prompt_text=prompt_text,
                        prompt_lang=lang, text_lang=lang, speed=1.1)
        if gpt_path is not None:
            voice = replace(voice, gpt_path=self._existing(gpt_path, "GPT weights"))
        if sovits_path is not None:
            voice = replace(voice, sovits_path=self._existing(sovits_path, "SoVITS weights"))
        return voice

    # -- internals ---------------------------------------------------------------------------------
    def _canonical(self, name: str) -> str | None:
        if name in self._entries:
            return name
        key = normalize_name(name)
        for canonical, entry in self._entries.items():
            if key == normalize_name(canonical) or key in (normalize_name(a) for a in entry.get("aliases", ())):
                return canonical
        return None

    def _existing(self, path: str | os.PathLike, what: str) -> Path:
        p = self.root.resolve(path)
        if not p.exists():
            raise PrimeSpeechError(f"{what} not found: {p}")
        return p

    def _add(self, name: str, entry: dict[str, Any], *, builtin: bool) -> None:
        existing = self._canonical(name)
        if existing is not None:
            logger.info("user voice %r replaces %r", name, existing)
            del self._entries[existing]
            self._builtin.discard(existing)
        self._entries[name] = entry
        if builtin:
            self._builtin.add(name)

    def _load_user_file(self, path: Path, *, strict: bool) -> None:
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            if strict:
                raise PrimeSpeechError(f"cannot read user voices file {path}: {exc}") from exc
            logger.warning("ignoring %s: %s", path, exc)
            return
        voices = data.get("voices", data) if isinstance(data, dict) else None
        if not isinstance(voices, dict):
            msg = f"{path}: expected {{\"voices\": {{name: entry}}}}"
            if strict:
                raise PrimeSpeechError(msg)
            logger.warning("ignoring %s", msg)
            return
        for name, entry in voices.items():
            problem = _entry_problem(entry)
            if problem:
                if strict:
                    raise PrimeSpeechError(f"{path}: voice {name!r} {problem}")
                logger.warning("%s: skipping voice %r (%s)", path, name, problem)
                continue
            self._add(name, dict(entry), builtin=False)


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "is not an object"
    missing = [k for k in _REQUIRED_KEYS if not isinstance(entry.get(k), str)]
    if missing:
        return f"lacks {', '.join(missing)}"
    try:
        float(entry.get("speed_factor", 1.0))
    except (TypeError, ValueError):
        return "has a non-numeric speed_factor"
    return None
