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
`prompt_lang`, `text_lang`, `speed_factor`, `aliases`, and optionally `aux_ref_audio_paths`: more clips of
the speaker whose styles SoVITS averages with the reference's, upstream's parameter of that name), either as `{"voices": {name: entry}}` or as a
bare `{name: entry}` mapping. Relative paths are resolved against `<model_root>/moyoyo`. They are read
from `<model_root>/voices.json` when that file exists and from an explicit file (the node passes
PRIMESPEECH_VOICES_FILE); a user voice with a built-in's name replaces it.

Two settings of the original dora-primespeech shape the registry (`VoiceRegistry.from_config`): REPOSITORY,
the hub repository the built-in voices and the shared encoders come from, and GPT_MODEL_PATH,
SOVITS_MODEL_PATH, REFERENCE_AUDIO_PATH, files that replace VOICE_NAME's own (`voice_files`). An override
path is resolved like a voices.json path (absolute, `~`, or relative to `<model_root>/moyoyo`); the
original declared these variables without ever reading them, so it fixes no other base.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .config import FILE_OVERRIDES, NodeConfig
from .errors import PrimeSpeechError

logger = logging.getLogger(__name__)

# a CUSTOM/TRAINED message's reference language: upstream's prompt_lang values (the original node: zh/en/ja/auto)
CUSTOM_LANGS = ("auto", "auto_yue", "zh", "all_zh", "en", "ja", "all_ja", "ko", "all_ko", "yue", "all_yue")
ENCODER_KINDS = ("hubert", "roberta")
_REQUIRED_KEYS = ("gpt_weights", "sovits_weights", "reference_audio", "prompt_text")
_FILE_KEYS = ("gpt_weights", "sovits_weights", "reference_audio")


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
    def speaker(self) -> Path:
        """The speaker-verification model v2Pro/v2ProPlus voices need (upstream's
        pretrained_models/sv/ file, fetched by `primespeech-mlx download --sv`)."""
        return self.moyoyo / "sv" / "pretrained_eres2netv2w24s4ep4.ckpt"

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
    aux_ref_audios: tuple[Path, ...] = ()  # more clips of the speaker: SoVITS averages their styles

    @property
    def references(self) -> tuple[Path, ...]:
        """The reference clip, then the auxiliary ones."""
        return (self.ref_audio, *self.aux_ref_audios)


def builtin_config() -> dict[str, Any]:
    """The packaged `configs/voices.json` as a dict."""
    text = resources.files("dora_primespeech_mlx").joinpath("configs", "voices.json").read_text("utf-8")
    return json.loads(text)


def normalize_name(name: str) -> str:
    """Case-, space-, dash- and underscore-insensitive lookup key: "Luo Xiang" == "luoxiang"."""
    return "".join(ch for ch in name.lower() if ch not in " _-")


class VoiceRegistry:
    """Built-in and user voices, resolved against one model root.

    `repository` replaces the hub repository of the built-in voices and the shared encoders (REPOSITORY);
    `voice_files` maps a voice name to files replacing its own, by voices.json key (`gpt_weights`,
    `sovits_weights`, `reference_audio`). A name no voice answers to (the node then falls back to the
    default voice, as the original did) gives its files to the default voice. An override file is not
    checked here: a missing one makes the voice fail to load, with `missing_message` saying why.
    """

    def __init__(self, model_root: str | os.PathLike, user_voices_file: str | os.PathLike | None = None, *,
                 repository: str | None = None,
                 voice_files: Mapping[str, Mapping[str, str | os.PathLike]] | None = None):
        self.root = ModelRoot(Path(model_root))
        self.model_root = self.root.path
        self.config = builtin_config()
        self.repository: str = repository or self.config["repository"]
        self.default_voice: str = self.config["default_voice"]
        self._entries: dict[str, dict[str, Any]] = {}
        self._builtin: set[str] = set()
        self._overrides: dict[str, dict[str, Path]] = {}  # canonical name -> voices.json key -> file
        for name, entry in self.config["voices"].items():
            self._add(name, dict(entry, repository=self.repository), builtin=True)
        if self.root.user_voices.is_file():
            self._load_user_file(self.root.user_voices, strict=False)
        if user_voices_file:
            path = Path(user_voices_file).expanduser()
            if not path.is_file():
                raise PrimeSpeechError(f"user voices file not found: {path} (check PRIMESPEECH_VOICES_FILE)")
            self._load_user_file(path, strict=True)
        for name, files in (voice_files or {}).items():
            self._override(name, files)

    @classmethod
    def from_config(cls, config: NodeConfig, model_root: str | os.PathLike | None = None,
                    user_voices_file: str | os.PathLike | None = None) -> VoiceRegistry:
        """The registry the configuration describes: its model root and user voices file (unless given
        here), REPOSITORY, and GPT_MODEL_PATH / SOVITS_MODEL_PATH / REFERENCE_AUDIO_PATH for VOICE_NAME."""
        overrides = config.file_overrides()
        return cls(config.model_dir if model_root is None else model_root,
                   config.voices_file if user_voices_file is None else user_voices_file,
                   repository=config.repository,
                   voice_files={config.voice_name: overrides} if overrides else None)

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

    @property
    def speaker_path(self) -> Path:
        return self.root.speaker

    # -- lookup ------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Voice names, built-ins first in the original's order, then user voices."""
        return list(self._entries)

    def knows(self, name: str) -> bool:
        """Whether `name` is a voice of this registry (built-in or user)."""
        return self._canonical(name) is not None

    def is_builtin(self, name: str) -> bool:
        return self._canonical(name) in self._builtin

    def get(self, name: str) -> Voice:
        """The voice called `name` (case/space-insensitive; stems and aliases accepted)."""
        canonical = self._canonical(name)
        if canonical is None:
            raise PrimeSpeechError(f"unknown voice {name!r}; known: {', '.join(self.names())}")
        entry = dict(self._entries[canonical], **self._overrides.get(canonical, {}))
        return Voice(
            name=canonical,
            gpt_path=self.root.resolve(entry["gpt_weights"]),
            sovits_path=self.root.resolve(entry["sovits_weights"]),
            ref_audio=self.root.resolve(entry["reference_audio"]),
            prompt_text=entry["prompt_text"],
            prompt_lang=entry.get("prompt_lang", entry.get("text_lang", "auto")),
            text_lang=entry.get("text_lang", "auto"),
            speed=float(entry.get("speed_factor", 1.0)),
            aux_ref_audios=tuple(self.root.resolve(p) for p in entry.get("aux_ref_audio_paths", ())),
        )

    def entry(self, name: str) -> dict[str, Any]:
        """The raw table entry of a voice (paths as written in the JSON, overrides not applied)."""
        self.get(name)
        return dict(self._entries[self._canonical(name)])

    def encoder_files(self) -> list[Path]:
        """Files every voice needs: the shared HuBERT and RoBERTa (+ tokenizer)."""
        return self.root.encoder_files()

    def missing_files(self, name: str) -> list[Path]:
        """Files this voice needs that are not on disk (empty when installed)."""
        voice = self.get(name)
        needed = [voice.gpt_path, voice.sovits_path, *voice.references, *self.encoder_files()]
        return [p for p in needed if not p.is_file()]

    def overridden(self, name: str) -> dict[str, Path]:
        """The voice's files replaced by `voice_files`, by voices.json key, as resolved paths."""
        canonical = self._canonical(name)
        return {key: self.root.resolve(path) for key, path in self._overrides.get(canonical or "", {}).items()}

    def missing_message(self, name: str) -> str | None:
        """None when the voice is installed, else what is missing and what to do: fix or unset an override
        variable that names no file, or download the voice (from `repository`)."""
        missing = self.missing_files(name)
        if not missing:
            return None
        voice = self.get(name)
        wrong = [(key, path) for key, path in self.overridden(name).items() if path in missing]
        if wrong:
            return "; ".join(f"voice {voice.name!r}: {FILE_OVERRIDES[key]} names {path}, which does not exist: "
                             f"point it at the voice's {key.replace('_', ' ')} file or unset it"
                             for key, path in wrong)
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        message = f"voice {voice.name!r} is not installed in {self.model_root} (missing {missing[0]}{more}): "
        source = self._entries[voice.name].get("repository")
        if not source:
            return message + "it is a user voice without a hub repository: copy its files there by hand"
        return (message + f"run `primespeech-mlx download --voice \"{voice.name}\" --model-root {self.model_root}` "
                f"(it downloads from the Hugging Face repository {source}; REPOSITORY names another)")

    def installed(self, name: str) -> bool:
        """True when the voice's weights, reference clip and the shared encoders are all present."""
        return not self.missing_files(name)

    def custom(self, ref_audio: str | os.PathLike, prompt_text: str, prompt_lang: str,
               gpt_path: str | os.PathLike | None = None, sovits_path: str | os.PathLike | None = None) -> Voice:
        """A zero-shot voice (`VOICE:CUSTOM`: Doubao's weights) or a trained one (`VOICE:TRAINED`: own weights).

        As in the original, a language outside upstream's values (`CUSTOM_LANGS`) becomes auto, and the
        speed is 1.1.
        """
        ref = Path(ref_audio).expanduser()
        if not ref.is_file():
            raise PrimeSpeechError(f"reference audio not found: {ref} (give an absolute path to a 3-10 s WAV)")
        lang = prompt_lang if prompt_lang in CUSTOM_LANGS else "auto"
        base = self.get(self.default_voice)
        trained = gpt_path is not None or sovits_path is not None
        voice = replace(base, name="TRAINED" if trained else "CUSTOM", ref_audio=ref, prompt_text=prompt_text,
                        prompt_lang=lang, text_lang=lang, speed=1.1, aux_ref_audios=())
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

    def _override(self, name: str, files: Mapping[str, str | os.PathLike]) -> None:
        unknown = sorted(set(files) - set(_FILE_KEYS))
        if unknown:
            raise ValueError(f"voice_files: unknown keys {unknown}: expected some of {', '.join(_FILE_KEYS)}")
        canonical = self._canonical(name)
        if canonical is None:
            canonical = self._canonical(self.default_voice) or self.default_voice
            logger.warning("file overrides for unknown voice %r apply to %r", name, canonical)
        self._overrides.setdefault(canonical, {}).update({key: Path(path) for key, path in files.items()})

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
    aux = entry.get("aux_ref_audio_paths", [])
    if not isinstance(aux, list) or not all(isinstance(p, str) for p in aux):
        return "has an aux_ref_audio_paths that is not a list of paths"
    return None
