"""The dora-primespeech message protocol: what a text or control message says, and what the node answers.

Pure: no dora, MLX or engine imports (numpy and pyarrow for the payloads, `voices` for the reference
languages a custom voice may have), so the grammar and the formats can be tested alone.

Text input (`text`, a pyarrow StringArray whose element 0 is the message):
- plain text, or JSON `{"prompt": "..."}` (the prompt bridge's payload; a JSON object without a string
  `prompt` is an error, text that starts with `{` but is no JSON is plain text). Beside `prompt`, the
  Moxin-Voice fork's `speed` (0.5-2.0), `pitch` (semitones, -12..12) and `volume` (percent, 0-200):
  numbers out of range are clamped, other types are an error, null means absent, other fields are
  ignored. `prompt` may itself be such an object, or a string holding one (the bridge wrapping a
  payload again), at most MAX_PAYLOAD_NESTING levels deep; an outer field wins over an inner one;
- `VOICE:<name>|<text>`: that built-in or user voice for this text only;
- `VOICE:CUSTOM|<absolute ref wav>|<prompt text>|<lang>|<text>`: clone from a reference clip with
  the default voice's weights (lang: any TEXT_LANG value, e.g. zh, en, ja, ko, yue, auto; anything else
  becomes auto);
- `VOICE:TRAINED|<gpt ckpt>|<sovits pth>|<ref wav>|<prompt text>|<lang>|<text>`: own weights.
The text to speak (after the prefix) may be SSML: text starting with `<speak` (after blanks) is parsed as
the subset in `parse_ssml`; anything else is plain text, untouched.
Empty, whitespace-only and punctuation-only text has nothing to say.

Control input (`control`): `reset`, `stats`, `stop` / `cancel`, `voice:<name>` (case-insensitive).

Answers. Every text gets exactly one terminal `segment_complete`: `completed` (after its audio), `error`,
`cancelled`, or `empty` (after `skipped`; no audio). With RETURN_FRAGMENT=true the audio goes out in
fragments numbered by `fragment_index` from 0, and `is_last_fragment: true` marks the final fragment of
a text that completes (if the engine's last piece is empty, a 10 ms silence carries the flag). Every
audio message also carries `is_final` (true on the last audio message of a text that completes: the
single message in batch mode, the `is_last_fragment` one when streaming), `is_silence` (true for an SSML
break's fragment), `fragment_total` (1 in batch mode; when streaming, on the final fragment only, the
one message sent once the total is known) and the applied `speed`, `pitch` and `volume`. When
synthesis fails or is cancelled after some fragments were sent, none of them carries
`is_last_fragment: true`: the `error` (or `cancelled`) `segment_complete` that follows is the terminal
answer, and the fragments already sent are all there will be.

Status events (`status` output, JSON with the same dict, less its null fields, as metadata): `start`
once ready (or failed); `voice_change` after each `voice:` control, with state `error` and the reason
in `error` when the voice is unknown or fails to load; `request` after each text, whatever its answer;
`heartbeat` (state `busy`, with `activity` and `elapsed`) while a voice loads or a text is
synthesised; `stop` last, always. Every status carries the process's resident memory `rss_mb` and MLX's
peak memory `mlx_peak_mb` (null where unknown). Log lines (`log` output) are JSON `{"node", "level", "message"}`,
the same dict as metadata.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from xml.parsers import expat

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
# The Moxin-Voice fork's payload fields and ranges (out-of-range numbers are clamped, as the fork does).
SPEED_RANGE = (0.5, 2.0)
PITCH_RANGE = (-12.0, 12.0)  # semitones
VOLUME_RANGE = (0.0, 200.0)  # percent
MAX_PAYLOAD_NESTING = 2  # {"prompt": {"prompt": {"prompt": "..."}}} at most
# SSML: breaks longer than this are clamped (a break makes silence samples, sent in one message)
MAX_BREAK_SECONDS = 10.0
# <break strength="..."> without a time (SSML's default is medium); the durations are Azure's
BREAK_STRENGTHS = {"none": 0.0, "x-weak": 0.25, "weak": 0.5, "medium": 0.75, "strong": 1.0, "x-strong": 1.25}
# <prosody rate="..."> keywords, as speed multipliers
RATE_WORDS = {"x-slow": 0.5, "slow": 0.75, "medium": 1.0, "default": 1.0, "fast": 1.25, "x-fast": 1.5}
SSML_ELEMENTS = ("speak", "break", "prosody", "s", "p")


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
class Adjustments:
    """The payload's `speed`, `pitch`, `volume`, clamped to their ranges (speed None: not asked for)."""

    speed: float | None = None
    pitch: float = 0.0
    volume: float = 100.0


@dataclass(frozen=True)
class Speech:
    """Text to speak at `rate` times the request's speed (an SSML `<prosody rate>` span, else 1)."""

    text: str
    rate: float = 1.0


@dataclass(frozen=True)
class Pause:
    """An SSML `<break>`: this many seconds of silence."""

    seconds: float


Piece = Speech | Pause


@dataclass(frozen=True)
class TextRequest:
    """What a text message asks for: the text to speak, the voice, the payload's adjustments and, for SSML,
    the pieces (spans and breaks) parsed from the text."""

    text: str
    voice: VoiceSpec
    adjustments: Adjustments = Adjustments()
    pieces: tuple[Piece, ...] | None = None  # None for plain text: the text is one Speech

    @property
    def parts(self) -> tuple[Piece, ...]:
        """What to render, in order: the SSML pieces, or the plain text as one Speech."""
        return (Speech(self.text),) if self.pieces is None else self.pieces

    @property
    def speakable(self) -> bool:
        return any(isinstance(p, Speech) and is_speakable(p.text) for p in self.parts)


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


def _json_object(raw: Any) -> dict[str, Any] | None:
    """`raw` as a JSON object: a dict as it is, a string holding a JSON object parsed; else None."""
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str) or not raw.lstrip().startswith("{"):
        return None
    try:
        payload = json.loads(raw)
    except ValueError:
        return None  # plain text that happens to start with "{"
    return payload if isinstance(payload, dict) else None


def _payload_number(name: str, value: Any, bounds: tuple[float, float]) -> float:
    """A payload field's number clamped to `bounds`; BadInput for anything but a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadInput(f'the "{name}" field must be a number, got {json.dumps(value, ensure_ascii=False)[:40]}')
    if not math.isfinite(value):
        raise BadInput(f'the "{name}" field must be a finite number, got {value}')
    low, high = bounds
    return min(high, max(low, float(value)))


def parse_payload(raw: str) -> tuple[str, Adjustments]:
    """The prompt and adjustments of a JSON object payload; any other text as it is, with no adjustments.

    `prompt` may be an object (or a string holding a JSON object with a `prompt`) up to
    MAX_PAYLOAD_NESTING levels deep; the outermost non-null `speed`/`pitch`/`volume` wins, as in the fork."""
    if not raw.lstrip().startswith("{"):
        return raw, Adjustments()
    payload = _json_object(raw)
    if payload is None:
        return raw, Adjustments()
    found: dict[str, Any] = {}
    for depth in range(MAX_PAYLOAD_NESTING + 1):
        for name in ("speed", "pitch", "volume"):
            if found.get(name) is None:
                found[name] = payload.get(name)
        prompt = payload.get("prompt")
        inner = _json_object(prompt)
        if inner is None or not (isinstance(prompt, dict) or "prompt" in inner):
            break  # a string prompt that is no wrapped payload is the text itself
        if depth == MAX_PAYLOAD_NESTING:
            raise BadInput(f'a JSON text input nests "prompt" objects at most {MAX_PAYLOAD_NESTING} levels deep')
        payload = inner
    if not isinstance(prompt, str):
        raise BadInput('a JSON text input needs a string "prompt" field')
    adjustments = Adjustments(
        speed=None if found["speed"] is None else _payload_number("speed", found["speed"], SPEED_RANGE),
        pitch=0.0 if found["pitch"] is None else _payload_number("pitch", found["pitch"], PITCH_RANGE),
        volume=100.0 if found["volume"] is None else _payload_number("volume", found["volume"], VOLUME_RANGE),
    )
    return prompt, adjustments


def unwrap_json_prompt(raw: str) -> str:
    """The `prompt` of a JSON object payload; any other text (JSON-looking or not) as it is."""
    return parse_payload(raw)[0]


def effective_speed(base: float, adjustments: Adjustments, rate: float = 1.0) -> float:
    """The speed to synthesise a span with. The payload's speed replaces the configured one (SPEED_FACTOR or
    the voice's default, `base`) as in the Moxin fork, which speaks with the voice's speed unless the payload
    sets one; an SSML rate multiplies it. A result from either is clamped to SPEED_RANGE; with neither,
    `base` is used as configured."""
    if adjustments.speed is None and rate == 1.0:
        return float(base)
    speed = (base if adjustments.speed is None else adjustments.speed) * rate
    return min(SPEED_RANGE[1], max(SPEED_RANGE[0], float(speed)))


# ------------------------------------------------------------------------------------------- SSML
def is_ssml(text: str) -> bool:
    """True for text that starts (after blanks) with a `<speak>` element; everything else is plain text."""
    return re.match(r"\s*<speak[\s/>]", text) is not None


def parse_rate(value: str) -> float:
    """A `<prosody rate>` as a speed multiplier, clamped to SPEED_RANGE: a keyword (RATE_WORDS), a
    multiplier ("1.2"), a percentage of the normal rate ("120%") or a relative change ("+20%", "-20%").
    ValueError for anything else or a rate that is not positive."""
    text = value.strip().lower()
    if text in RATE_WORDS:
        return RATE_WORDS[text]
    match = re.fullmatch(r"([+-]?)(\d+(?:\.\d*)?|\.\d+)(%?)", text)
    if match is None:
        raise ValueError(f'rate="{value}" is not a multiplier, a percentage or one of {", ".join(RATE_WORDS)}')
    sign, number, percent = match.groups()
    if sign and not percent:
        raise ValueError(f'rate="{value}": a signed rate must be a percentage ("+20%")')
    amount = float(number)
    rate = (1.0 + (-amount if sign == "-" else amount) / 100.0) if sign else amount / (100.0 if percent else 1.0)
    if rate <= 0:
        raise ValueError(f'rate="{value}" must be above zero')
    return min(SPEED_RANGE[1], max(SPEED_RANGE[0], rate))


def parse_break(attrs: Mapping[str, str]) -> float:
    """A `<break>`'s seconds of silence: `time` in ms or s ("500ms", "1.5s"), else `strength`
    (BREAK_STRENGTHS; no attribute: medium), clamped to MAX_BREAK_SECONDS. ValueError when malformed."""
    if "time" in attrs:
        match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)", attrs["time"].strip().lower())
        if match is None:
            raise ValueError(f'time="{attrs["time"]}" is not a duration such as "500ms" or "1.5s"')
        seconds = float(match.group(1)) / (1000.0 if match.group(2) == "ms" else 1.0)
    else:
        strength = attrs.get("strength", "medium").strip().lower()
        if strength not in BREAK_STRENGTHS:
            raise ValueError(f'strength="{attrs["strength"]}" is not one of {", ".join(BREAK_STRENGTHS)}')
        seconds = BREAK_STRENGTHS[strength]
    return min(seconds, MAX_BREAK_SECONDS)


class _SSMLReader:
    """Builds the pieces of an SSML document from expat's events (see `parse_ssml`)."""

    def __init__(self, parser: Any):
        self.parser = parser
        self.stack: list[tuple[str, float]] = []  # open elements and the rate inside each
        self.pieces: list[Piece] = []
        self.text: list[str] = []

    def fail(self, message: str) -> None:
        line, column = self.parser.CurrentLineNumber, self.parser.CurrentColumnNumber + 1
        raise BadInput(f"malformed SSML at line {line}, column {column}: {message}")

    @property
    def rate(self) -> float:
        return self.stack[-1][1] if self.stack else 1.0

    def flush(self) -> None:
        text = " ".join("".join(self.text).split())
        self.text = []
        if text:
            self.pieces.append(Speech(text, self.rate))

    def start(self, name: str, attrs: dict[str, str]) -> None:
        if name not in SSML_ELEMENTS:
            self.fail(f"unsupported element <{name}> (supported: {', '.join(SSML_ELEMENTS)})")
        if self.stack and self.stack[-1][0] == "break":
            self.fail("<break> must be empty")
        if name == "speak" and self.stack:
            self.fail("<speak> inside <speak>")
        rate = self.rate
        try:
            if name == "break":
                seconds = parse_break(attrs)
                self.flush()
                self.pieces.append(Pause(seconds))
            elif name == "prosody" and "rate" in attrs:
                rate = min(SPEED_RANGE[1], max(SPEED_RANGE[0], rate * parse_rate(attrs["rate"])))
        except ValueError as exc:
            self.fail(f"<{name}>: {exc}")
        if name in ("prosody", "s", "p"):
            self.flush()
        self.stack.append((name, rate))

    def end(self, name: str) -> None:
        if name in ("prosody", "s", "p", "speak"):
            self.flush()
        self.stack.pop()

    def data(self, text: str) -> None:
        if self.stack and self.stack[-1][0] == "break" and text.strip():
            self.fail("<break> must be empty")
        self.text.append(text)


def parse_ssml(text: str) -> tuple[Piece, ...]:
    """The pieces of an SSML text, in order: Speech spans and Pause breaks.

    Elements: `<speak>` (the root; its attributes are ignored), `<break time="500ms"/>` (see `parse_break`),
    `<prosody rate="...">` (see `parse_rate`; nested rates multiply, other attributes are ignored),
    `<s>` and `<p>` (a sentence or paragraph: its own span, so its text is never joined to its
    neighbours'). Runs of whitespace are one space. BadInput, with the line and column, for malformed XML,
    any other element and bad attribute values."""
    parser = expat.ParserCreate()
    reader = _SSMLReader(parser)
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.CharacterDataHandler = reader.data
    try:
        parser.Parse(text, True)
    except expat.ExpatError as exc:
        raise BadInput(f"malformed SSML at line {exc.lineno}, column {exc.offset + 1}: "
                       f"{expat.ErrorString(exc.code)}") from None
    return tuple(reader.pieces)


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
    prompt, adjustments = parse_payload(string_value(value, "text"))
    spec, text = split_voice_prefix(prompt)
    if len(text) > max_chars:
        raise BadInput(f"text too long: {len(text)} characters (limit {max_chars}, "
                       "PRIMESPEECH_MAX_TEXT_CHARS); split it into sentences upstream")
    pieces = parse_ssml(text) if is_ssml(text) else None
    return TextRequest(text=text, voice=spec, adjustments=adjustments, pieces=pieces)


def custom_lang(lang: str) -> str | None:
    """The reference language of a CUSTOM/TRAINED message (a TEXT_LANG value), None when unsupported
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


# Messages are built from buffers, not with pa.array(): given Python objects, pa.array asks whether
# they are pandas ones and so imports pandas wherever it is installed (0.3-0.7 s, at the first status).


def audio_array(samples: np.ndarray) -> pa.Array:
    """One float32 list, as consumers expect: equal to `pa.array([samples_f32], pa.list_(pa.float32()))`."""
    samples = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
    values = pa.Array.from_buffers(pa.float32(), samples.size, [None, pa.py_buffer(samples)])
    offsets = pa.py_buffer(np.array([0, samples.size], dtype=np.int32))
    return pa.Array.from_buffers(pa.list_(pa.float32()), 1, [None, offsets], children=[values])


def string_array(text: str) -> pa.Array:
    """`text` as a one-element StringArray, equal to `pa.array([text])`."""
    data = text.encode("utf-8")
    offsets = np.array([0, len(data)], dtype=np.int32)
    return pa.StringArray.from_buffers(1, pa.py_buffer(offsets), pa.py_buffer(data))


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


def applied_metadata(speed: float, adjustments: Adjustments) -> dict[str, float]:
    """The `speed`, `pitch` and `volume` an audio message was made with, as the Moxin fork echoes them."""
    return {"speed": round(float(speed), 4), "pitch": float(adjustments.pitch), "volume": float(adjustments.volume)}


def audio_message(samples: np.ndarray, meta: Mapping[str, Any], sample_rate: int, *,
                  fragment_index: int | None = None, is_last_fragment: bool | None = None,
                  is_final: bool | None = None, fragment_total: int | None = None, is_silence: bool | None = None,
                  applied: Mapping[str, float] | None = None) -> Message:
    """An `audio` message: the samples and {question_id, session_status, sample_rate, duration}, plus the
    input's session_id and segment_index when given, plus the fragment fields when streaming, plus each of
    is_final, fragment_total, is_silence and the `applied` speed/pitch/volume that is given."""
    metadata = base_metadata(meta)
    metadata.update(sample_rate=int(sample_rate), duration=float(len(samples) / sample_rate))
    for key in ("session_id", "segment_index"):
        if key in meta:
            metadata[key] = meta[key]
    if fragment_index is not None:
        metadata.update(fragment_index=fragment_index, is_last_fragment=bool(is_last_fragment))
    if is_final is not None:
        metadata["is_final"] = bool(is_final)
    if fragment_total is not None:
        metadata["fragment_total"] = int(fragment_total)
    if is_silence is not None:
        metadata["is_silence"] = bool(is_silence)
    metadata.update(applied or {})
    return Message("audio", audio_array(samples), metadata)


def silence(seconds: float, sample_rate: int) -> np.ndarray:
    """An SSML break's samples."""
    return np.zeros(round(seconds * sample_rate), np.float32)


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
    return Message("segment_complete", string_array(state), metadata)


def log_message(level: str, message: str) -> Message:
    """A `log` line: JSON {"node", "level", "message"}, the same dict as metadata."""
    record = {"node": NODE_NAME, "level": level, "message": message}
    return Message("log", string_array(json.dumps(record, ensure_ascii=False)), record)


def status_message(event: str, state: str, *, voice: str | None, device: str | None,
                   encoder_backend: str | None, streaming: bool, queue_depth: int, last_rtf: float | None,
                   requests: int, error: str | None, extra: Mapping[str, Any] | None = None,
                   memory: Mapping[str, float | None] | None = None) -> Message:
    """A `status` message: the JSON status and, as metadata, the same dict without its null fields.
    `memory` (`memory_report`'s rss_mb and mlx_peak_mb) comes after the fixed fields when given."""
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
        **(memory or {}),
        **(extra or {}),
    }
    metadata = {k: v for k, v in status.items() if v is not None}
    return Message("status", string_array(json.dumps(status, ensure_ascii=False)), metadata)


def memory_report(rss_bytes: int | None, mlx_peak_bytes: int | None) -> dict[str, float | None]:
    """The memory fields of statuses: resident memory and MLX's peak memory in MB (None: unknown)."""
    def mb(value: int | None) -> float | None:
        return None if value is None else round(value / 2 ** 20, 1)

    return {"rss_mb": mb(rss_bytes), "mlx_peak_mb": mb(mlx_peak_bytes)}


def memory_text(memory: Mapping[str, float | None]) -> str:
    """How `memory_report` reads in the `stats` log line."""
    def show(value: float | None) -> str:
        return "unknown" if value is None else f"{value:.1f} MB"

    return f"resident memory {show(memory.get('rss_mb'))}, MLX peak memory {show(memory.get('mlx_peak_mb'))}"


def error_text(exc: BaseException) -> str:
    """How an exception reads in an answer: a PrimeSpeechError's own message, else `Type: message`."""
    text = str(exc).strip()
    if isinstance(exc, PrimeSpeechError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
