"""The dora-primespeech message protocol: what a text or control message says, and what the node answers.

Pure: no dora, MLX or engine imports (numpy and pyarrow for the payloads, `voices` for the reference
languages a custom voice may have), so the grammar and the formats can be tested alone.

Text input (`text`, a pyarrow StringArray whose element 0 is the message):
- plain text, or JSON `{"prompt": "..."}` (the prompt bridge's payload; a JSON object without a string
  `prompt` is an error, text that starts with `{` but is no JSON is plain text);
- `VOICE:<name>|<text>`: that built-in or user voice for this text only;
- `VOICE:CUSTOM|<absolute ref wav>|<prompt text>|<lang>|<text>`: clone from a reference clip with
  the default voice's weights (lang zh, en, ja or auto; anything else becomes auto);
- `VOICE:TRAINED|<gpt ckpt>|<sovits pth>|<ref wav>|<prompt text>|<lang>|<text>`: own weights.
Empty, whitespace-only and punctuation-only text has nothing to say.

Control input (`control`): `reset`, `stats`, `stop` / `cancel`, `voice:<name>` (case-insensitive).

Answers. Every text gets exactly one terminal `segment_complete`: `completed` (after its audio), `error`,
`cancelled`, or `empty` (after `skipped`; no audio). With RETURN_FRAGMENT=true the audio goes out in
fragments numbered by `fragment_index` from 0, and `is_last_fragment: true` marks the final fragment of
a text that completes (if the engine's last piece is empty, a 10 ms silence carries the flag). When
synthesis fails or is cancelled after some fragments were sent, none of them carries
`is_last_fragment: true`: the `error` (or `cancelled`) `segment_complete` that follows is the terminal
answer, and the fragments already sent are all there will be.

Status events (`status` output, JSON with the same dict, less its null fields, as metadata): `start`
once ready (or failed); `voice_change` after each `voice:` control, with state `error` and the reason
in `error` when the voice is unknown or fails to load; `request` after each text, whatever its answer;
`heartbeat` (state `busy`, with `activity` and `elapsed`) while a voice loads or a text is
synthesised; `stop` last, always. Log lines (`log` output) are JSON `{"node", "level", "message"}`,
the same dict as metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from .errors import PrimeSpeechError
from .voices import CUSTOM_LANGS

NODE_NAME = "primespeech-tts"  # the "node" field of log lines and statuses, as the original wrote it
# Text made only of these characters (or whitespace) is answered "skipped" + "empty" (the contract's set,
# with the curly quotes the original's source meant).
PUNCTUATION = frozenset("。！？.!?,，、；：\"'“”‘’（）【】《》")
VOICE_PREFIX = "VOICE:"
CUSTOM_PREFIX = "VOICE:CUSTOM|"
TRAINED_PREFIX = "VOICE:TRAINED|"
CUSTOM_SYNTAX = "VOICE:CUSTOM|<absolute ref wav>|<prompt text>|<lang>|<text>"
TRAINED_SYNTAX = "VOICE:TRAINED|<gpt ckpt>|<sovits pth>|<ref wav>|<prompt text>|<lang>|<text>"
NAMED_SYNTAX = "VOICE:<voice name>|<text>"
CANCEL_COMMANDS = ("stop", "cancel")
SEGMENT_STATES = ("completed", "skipped", "empty", "error", "cancelled")
# Streaming: when the engine's last piece of a text is empty, this much silence carries is_last_fragment.
END_FRAGMENT_SECONDS = 0.01


class BadInput(PrimeSpeechError):
    """A message that cannot be turned into a request; a text is answered with an error."""


# -------------------------------------------------------------------------------------- text input
@dataclass(frozen=True)
class DefaultVoice:
    """No `VOICE:` prefix: the node's current default voice."""


@dataclass(frozen=True)
class NamedVoice:
    """`VOICE:<name>|...`: a built-in or user voice."""

    name: str


@dataclass(frozen=True)
class CustomVoice:
    """`VOICE:CUSTOM|...`: zero-shot cloning from a reference clip (fields as written in the message)."""

    ref_audio: str
    prompt_text: str
    lang: str


@dataclass(frozen=True)
class TrainedVoice:
    """`VOICE:TRAINED|...`: own GPT and SoVITS weights plus a reference clip (fields as written)."""

    gpt_weights: str
    sovits_weights: str
    ref_audio: str
    prompt_text: str
    lang: str


VoiceSpec = DefaultVoice | NamedVoice | CustomVoice | TrainedVoice


@dataclass(frozen=True)
class TextRequest:
    """What a text message asks for: the text to speak and the voice to speak it with."""

    text: str
    voice: VoiceSpec

    @property
    def speakable(self) -> bool:
        return is_speakable(self.text)


def is_speakable(text: str) -> bool:
    """False for empty text, whitespace and the contract's punctuation-only text."""
    return any(not ch.isspace() and ch not in PUNCTUATION for ch in text)


def string_value(value: Any, what: str) -> str:
    """Element 0 of a pyarrow string array; BadInput for anything else."""
    if not isinstance(value, pa.Array):
        raise BadInput(f"{what} must be a pyarrow StringArray, got {type(value).__name__}")
    kind = value.type
    is_text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    is_text = is_text or getattr(pa.types, "is_string_view", lambda _: False)(kind)
    if not is_text:
        raise BadInput(f"{what} must be a pyarrow StringArray, got an array of {kind}")
    if len(value) == 0:
        raise BadInput(f"{what} is an empty array")
    text = value[0].as_py()
    if text is None:
        raise BadInput(f"{what} element 0 is null")
    return text


def unwrap_json_prompt(raw: str) -> str:
    """The `prompt` of a JSON object payload; any other text (JSON-looking or not) as it is."""
    if not raw.lstrip().startswith("{"):
        return raw
    try:
        payload = json.loads(raw)
    except ValueError:
        return raw  # plain text that happens to start with "{"
    if not isinstance(payload, dict):
        return raw
    prompt = payload.get("prompt")
    if not isinstance(prompt, str):
        raise BadInput('a JSON text input needs a string "prompt" field')
    return prompt


def split_voice_prefix(text: str) -> tuple[VoiceSpec, str]:
    """Split a `VOICE:` prefix off: (voice spec, the text to speak); BadInput when malformed."""
    if not text.startswith(VOICE_PREFIX):
        return DefaultVoice(), text
    if text.startswith(CUSTOM_PREFIX):
        parts = text[len(CUSTOM_PREFIX):].split("|", 3)
        if len(parts) != 4:
            raise BadInput(f"bad VOICE:CUSTOM message: expected {CUSTOM_SYNTAX}")
        return CustomVoice(*parts[:3]), parts[3]
    if text.startswith(TRAINED_PREFIX):
        parts = text[len(TRAINED_PREFIX):].split("|", 5)
        if len(parts) != 6:
            raise BadInput(f"bad VOICE:TRAINED message: expected {TRAINED_SYNTAX}")
        return TrainedVoice(*parts[:5]), parts[5]
    name, sep, body = text[len(VOICE_PREFIX):].partition("|")
    if not sep or not name.strip():
        raise BadInput(f"bad VOICE: message: expected {NAMED_SYNTAX}")
    return NamedVoice(name.strip()), body


def parse_text(value: Any, max_chars: int) -> TextRequest:
    """The request of a `text` input value; BadInput when it is malformed or longer than `max_chars`."""
    spec, text = split_voice_prefix(unwrap_json_prompt(string_value(value, "text")))
    if len(text) > max_chars:
        raise BadInput(f"text too long: {len(text)} characters (limit {max_chars}, "
                       "PRIMESPEECH_MAX_TEXT_CHARS); split it into sentences upstream")
    return TextRequest(text=text, voice=spec)


def custom_lang(lang: str) -> str | None:
    """The reference language of a CUSTOM/TRAINED message (zh, en, ja, auto), None when unsupported
    (the original then used auto)."""
    lang = lang.strip().lower()
    return lang if lang in CUSTOM_LANGS else None


def reference_path(raw: str) -> Path:
    """The reference clip of a CUSTOM/TRAINED message: an absolute path to an existing file."""
    path = Path(raw.strip()).expanduser()
    if not path.is_absolute():
        raise BadInput(f"the reference audio must be an absolute path, got {raw.strip()!r}")
    if not path.is_file():
        raise BadInput(f"reference audio not found: {path}")
    return path


def weights_path(raw: str, what: str) -> Path:
    """A weights file named by a TRAINED message; BadInput when it does not exist."""
    path = Path(raw.strip()).expanduser()
    if not path.exists():
        raise BadInput(f"VOICE:TRAINED: {what} not found: {raw.strip()}")
    return path


# ----------------------------------------------------------------------------------- control input
@dataclass(frozen=True)
class Control:
    """A control command: kind is reset, stats, cancel, voice or unknown.

    argument: the voice name (voice), the command as lowered (cancel), the command as sent (unknown)."""

    kind: str
    argument: str = ""


def parse_control(value: Any) -> Control:
    """The command of a `control` input value; BadInput when it is not a string array."""
    command = string_value(value, "control").strip()
    lowered = command.lower()
    if lowered in ("reset", "stats"):
        return Control(lowered)
    if lowered.startswith("voice:"):
        return Control("voice", command[len("voice:"):].strip())
    if lowered in CANCEL_COMMANDS:
        return Control("cancel", lowered)
    return Control("unknown", command)


def is_cancel(value: Any) -> bool:
    """True for a `stop` or `cancel` control value (anything malformed is not one)."""
    try:
        return parse_control(value).kind == "cancel"
    except BadInput:
        return False


# ----------------------------------------------------------------------------------------- outputs
class Message(NamedTuple):
    """One output message: `node.send_output(output, value, metadata)`."""

    output: str
    value: pa.Array
    metadata: dict[str, Any]


def base_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The input's `question_id` and `session_status`, with the original's defaults."""
    return {"question_id": meta.get("question_id", "default"),
            "session_status": meta.get("session_status", "unknown")}


def audio_array(samples: np.ndarray) -> pa.Array:
    """One float32 list, as consumers expect: `pa.array([samples_f32])`."""
    return pa.array([samples], type=pa.list_(pa.float32()))


def audio_samples(audio: Any, allow_empty: bool = False) -> np.ndarray:
    """The engine's audio as the flat float32 samples sent; PrimeSpeechError when empty or not finite."""
    samples = np.asarray(audio, dtype=np.float32).reshape(-1)
    if samples.size == 0 and not allow_empty:
        raise PrimeSpeechError("the engine returned empty audio")
    if not np.all(np.isfinite(samples)):
        raise PrimeSpeechError("the engine returned audio with NaN or infinite samples")
    return samples


def closing_fragment(sample_rate: int) -> np.ndarray:
    """The short silence that carries `is_last_fragment` when the engine's last piece is empty."""
    return np.zeros(max(1, round(END_FRAGMENT_SECONDS * sample_rate)), np.float32)


def audio_message(samples: np.ndarray, meta: Mapping[str, Any], sample_rate: int, *,
                  fragment_index: int | None = None, is_last_fragment: bool | None = None) -> Message:
    """An `audio` message: the samples and {question_id, session_status, sample_rate, duration}, plus the
    input's session_id and segment_index when given, plus the fragment fields when streaming."""
    metadata = base_metadata(meta)
    metadata.update(sample_rate=int(sample_rate), duration=float(len(samples) / sample_rate))
    for key in ("session_id", "segment_index"):
        if key in meta:
            metadata[key] = meta[key]
    if fragment_index is not None:
        metadata.update(fragment_index=fragment_index, is_last_fragment=bool(is_last_fragment))
    return Message("audio", audio_array(samples), metadata)


def segment_complete(state: str, meta: Mapping[str, Any], error: str | None = None) -> Message:
    """A `segment_complete` message: `state` (see SEGMENT_STATES) with its metadata.

    completed, skipped, cancelled: {question_id, session_status}; empty: the input's metadata as sent
    (without the `timestamp` dora adds on receipt); error: {question_id, session_status: "error",
    error, error_stage: "synthesis"}."""
    if state == "empty":
        metadata = {k: v for k, v in meta.items() if k != "timestamp"}
    elif state == "error":
        if error is None:
            raise ValueError("an error segment_complete needs its error message")
        metadata = {"question_id": meta.get("question_id", "default"), "session_status": "error",
                    "error": error, "error_stage": "synthesis"}
    elif state in SEGMENT_STATES:
        metadata = base_metadata(meta)
    else:
        raise ValueError(f"unknown segment_complete state {state!r}")
    return Message("segment_complete", pa.array([state]), metadata)


def log_message(level: str, message: str) -> Message:
    """A `log` line: JSON {"node", "level", "message"}, the same dict as metadata."""
    record = {"node": NODE_NAME, "level": level, "message": message}
    return Message("log", pa.array([json.dumps(record, ensure_ascii=False)]), record)


def status_message(event: str, state: str, *, voice: str | None, device: str | None,
                   encoder_backend: str | None, streaming: bool, queue_depth: int, last_rtf: float | None,
                   requests: int, error: str | None, extra: Mapping[str, Any] | None = None) -> Message:
    """A `status` message: the JSON status and, as metadata, the same dict without its null fields."""
    status: dict[str, Any] = {
        "node": NODE_NAME,
        "event": event,
        "state": state,
        "voice": voice,
        "device": device,
        "encoder_backend": encoder_backend,
        "streaming": streaming,
        "queue_depth": queue_depth,
        "last_rtf": None if last_rtf is None else round(float(last_rtf), 4),
        "requests": requests,
        "error": error,
        **(extra or {}),
    }
    metadata = {k: v for k, v in status.items() if v is not None}
    return Message("status", pa.array([json.dumps(status, ensure_ascii=False)]), metadata)


def error_text(exc: BaseException) -> str:
    """How an exception reads in an answer: a PrimeSpeechError's own message, else `Type: message`."""
    text = str(exc).strip()
    if isinstance(exc, PrimeSpeechError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
