"""The dora-primespeech event loop, kept free of `dora` imports so that tests can drive it.

`TTSNode(node, config, engine).run()` takes any node-like object (iterable of event dicts, with
`send_output(id, array, metadata)` and ideally `try_recv()`), the `NodeConfig` and a `Synthesizer`.

Ordering and cancellation. Dora delivers non-input events (INPUT_CLOSED, STOP) ahead of queued inputs,
does not keep the order between different inputs, and drops the oldest messages of an input whose queue
(default 10) is full. So the loop never acts on the order of arrival: every event is first taken in
(`_intake`) into a pending list sorted by the sender's timestamp, and requests are taken from that list.
While a request is synthesised, the engine calls `should_cancel` at each segment boundary (and the loop
calls it between streamed pieces); it drains the node with the non-blocking `try_recv()`, so `control`
messages are seen during synthesis and queued texts leave dora's bounded queue. A `stop`/`cancel`
control abandons the current request if that request was sent before it, and answers every text sent
before it that is still queued (or arrives late) with segment_complete "cancelled". A STOP caused by
all inputs closing only ends the loop once the remaining events have been handled; a manual STOP
(ctrl-c, `dora stop`) cancels everything and ends it at once. While a voice loads or a text is
synthesised, a heartbeat thread sends a `busy` status now and then (see HEARTBEAT_SECONDS).
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .config import DEFAULT_VOICE, LOG_LEVELS, NodeConfig
from .errors import PrimeSpeechError

logger = logging.getLogger(__name__)

NODE_NAME = "primespeech-tts"  # the "node" field of log lines, as the original wrote it
# Text made only of these characters (or whitespace) is answered "skipped" + "empty" (the contract's set,
# with the curly quotes the original's source meant).
PUNCTUATION = frozenset("。！？.!?,，、；：\"'“”‘’（）【】《》")
CUSTOM_LANGS = ("zh", "en", "ja", "auto")
VOICE_PREFIX = "VOICE:"
CUSTOM_SYNTAX = "VOICE:CUSTOM|<absolute ref wav>|<prompt text>|<lang>|<text>"
TRAINED_SYNTAX = "VOICE:TRAINED|<gpt ckpt>|<sovits pth>|<ref wav>|<prompt text>|<lang>|<text>"
CANCEL_COMMANDS = ("stop", "cancel")
# dora >= 1.1 stops a dataflow whose nodes have all been silent (no output sent) for 120 s, which a long
# first-use conversion or synthesis can look like; a `status` heartbeat is sent while busy.
HEARTBEAT_SECONDS = 30.0


class BadInput(PrimeSpeechError):
    """A text message that cannot be turned into a request; it is answered with an error."""


class _NeverRaised(Exception):
    """Stands in for the engine's exception types when there is no engine."""


@dataclass
class _Pending:
    key: tuple[float, int]
    event: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __lt__(self, other: _Pending) -> bool:
        return self.key < other.key


@dataclass
class _Request:
    text: str
    voice: Any
    options: Any  # engine.SynthesisOptions


@dataclass
class _Stats:
    requests: int = 0
    completed: int = 0
    skipped: int = 0
    errors: int = 0
    cancelled: int = 0
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0


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


def audio_array(samples: np.ndarray) -> pa.Array:
    """One float32 list, as consumers expect: `pa.array([samples_f32])`."""
    return pa.array([samples], type=pa.list_(pa.float32()))


def split_voice_prefix(text: str) -> tuple[tuple[str, tuple[str, ...]], str]:
    """Split a `VOICE:` prefix off: ((kind, args), text); kind is default, named, custom or trained."""
    if not text.startswith(VOICE_PREFIX):
        return ("default", ()), text
    if text.startswith("VOICE:CUSTOM|"):
        parts = text[len("VOICE:CUSTOM|"):].split("|", 3)
        if len(parts) != 4:
            raise BadInput(f"bad VOICE:CUSTOM message: expected {CUSTOM_SYNTAX}")
        return ("custom", tuple(parts[:3])), parts[3]
    if text.startswith("VOICE:TRAINED|"):
        parts = text[len("VOICE:TRAINED|"):].split("|", 5)
        if len(parts) != 6:
            raise BadInput(f"bad VOICE:TRAINED message: expected {TRAINED_SYNTAX}")
        return ("trained", tuple(parts[:5])), parts[5]
    name, sep, body = text[len(VOICE_PREFIX):].partition("|")
    if not sep or not name.strip():
        raise BadInput("bad VOICE: message: expected VOICE:<voice name>|<text>")
    return ("named", (name.strip(),)), body


class TTSNode:
    """The dora-primespeech contract around a `Synthesizer`.

    engine may be None when it could not be built; `startup_error` then says why and every text is
    answered with that error. `problems` are configuration problems to log at start.
    """

    def __init__(self, node: Any, config: NodeConfig, engine: Any | None, *,
                 problems: list[str] | None = None, startup_error: str | None = None,
                 clock: Callable[[], float] = time.perf_counter, heartbeat_seconds: float = HEARTBEAT_SECONDS):
        self.node = node
        self.config = config
        self.engine = engine
        self.problems = list(problems or [])
        self.startup_error = startup_error if engine is None else None
        if engine is None and not self.startup_error:
            self.startup_error = "no TTS engine"
        # The engine module is imported only with an engine, so that a broken install still gets a node
        # that answers every text with the start-up error.
        self._cancelled: type[Exception] = _NeverRaised
        self._empty: type[Exception] = _NeverRaised
        self._options_type: Any = None
        if engine is not None:
            from .engine import Cancelled, EmptyTextError, SynthesisOptions

            self._cancelled, self._empty, self._options_type = Cancelled, EmptyTextError, SynthesisOptions
        self.clock = clock
        self.heartbeat_seconds = heartbeat_seconds
        self._node_lock = threading.Lock()  # the heartbeat thread sends while the main thread polls
        self.voice = None  # the default voice (VOICE_NAME or the last `voice:` control)
        self._configured_voice: str | None = None  # VOICE_NAME's voice: PROMPT_TEXT/PROMPT_LANG apply to it
        self.voice_error: str | None = None
        self.stats = _Stats()
        self.last_rtf: float | None = None
        self._events: Iterator[dict[str, Any]] = iter(node)
        self._try_recv = getattr(node, "try_recv", None)
        self._pending: list[_Pending] = []
        self._seq = 0
        self._last_time = 0.0
        self._closed = False  # the event stream has ended
        self._stopping = False  # a manual STOP arrived
        self._cancel_before: tuple[float, int] | None = None
        self._current: _Pending | None = None
        self._cancel_current = False

    # ------------------------------------------------------------------------------------- main loop
    def run(self) -> None:
        """Start up (log problems, warm the voice up, send status) and serve events until the end."""
        self._start()
        while True:
            self._poll()
            if self._stopping:
                break
            if self._pending:
                self._handle(self._pending.pop(0))
                continue
            if self._closed:
                break
            try:
                event = next(self._events)
            except StopIteration:
                event = None
            except Exception as exc:
                self._log("ERROR", f"the event stream failed: {_message(exc)}")
                event = None
            if event is None:
                self._closed = True
            else:
                self._intake(event)
        self._send_status("stop", state="stopped")
        self._log("INFO", f"node stopped: {self._stats_text()}")

    def _start(self) -> None:
        for problem in self.problems:
            self._log("ERROR", f"configuration: {problem}")
        for note in self.config.notes():
            self._log("INFO", note)
        if self.engine is None:
            self._log("ERROR", f"the TTS engine failed to start: {self.startup_error}; every text will be "
                               "answered with this error until the node is restarted")
            self._send_status("start", state="error")
            return
        try:
            self.voice = self.engine.registry.get(self.config.voice_name)
            self._configured_voice = self.voice.name
        except Exception as exc:  # unknown voice: the original fell back to Doubao
            self._log("ERROR", f"VOICE_NAME: {_message(exc)}; using {DEFAULT_VOICE}")
            try:
                self.voice = self.engine.registry.get(DEFAULT_VOICE)
            except Exception as exc2:
                self.voice_error = _message(exc2)
                self._log("ERROR", f"no usable default voice: {self.voice_error}")
        if self.voice is not None:
            self._warm_up(self.voice)
        self._send_status("start")

    def _warm_up(self, voice: Any) -> bool:
        started = self.clock()
        try:
            with self._busy(f"loading voice {voice.name!r}"):
                self.engine.warmup(voice)
        except Exception as exc:
            self.voice_error = _message(exc)
            self._log("ERROR", f"voice {voice.name!r} could not be loaded: {self.voice_error}")
            self._log("DEBUG", traceback.format_exc())
            return False
        self.voice_error = None
        self._log("INFO", f"voice {voice.name!r} ready in {self.clock() - started:.2f}s "
                          f"(device {self.engine.device}, encoders {self.engine.encoder_backend})")
        return True

    # ------------------------------------------------------------------------------ event intake
    def _poll(self) -> None:
        """Take in every event available now without blocking."""
        if self._try_recv is None or self._closed:
            return
        while True:
            try:
                with self._node_lock:
                    event = self._try_recv()
            except Exception as exc:
                self._log("WARNING", f"reading events failed: {_message(exc)}")
                return
            if event is None:
                return
            self._intake(event)

    def _key(self, metadata: dict[str, Any]) -> tuple[float, int]:
        stamp = metadata.get("timestamp")  # dora's sender-side clock; events without one keep arrival order
        if hasattr(stamp, "timestamp"):
            self._last_time = stamp.timestamp()
        self._seq += 1
        return (self._last_time, self._seq)

    def _intake(self, event: Any) -> None:
        if not isinstance(event, dict):
            self._log("WARNING", f"ignoring a malformed event: {event!r:.200}")
            return
        kind = event.get("type")
        if kind == "INPUT":
            metadata = event.get("metadata")
            metadata = dict(metadata) if isinstance(metadata, dict) else {}
            item = _Pending(self._key(metadata), event, metadata)
            if event.get("id") == "control" and self._is_cancel(event):
                self._cancel(item)
            elif event.get("id") == "text" and (self._stopping or self._sent_before_cancel(item)):
                self._answer_cancelled(item)
            else:
                bisect.insort(self._pending, item)
        elif kind == "STOP":
            if event.get("id") == "ALL_INPUTS_CLOSED":
                self._log("DEBUG", "all inputs closed; finishing the queued texts")
            else:
                self._log("INFO", "stop requested: cancelling the current and queued texts")
                self._stopping = True
                self._cancel_current = self._current is not None
                self._drop_pending(lambda _: True)
        elif kind == "INPUT_CLOSED":
            self._log("DEBUG", f"input {event.get('id')!r} closed")
        elif kind == "ERROR":
            self._log("ERROR", f"dora reported an error: {event.get('error')}")
        else:
            self._log("DEBUG", f"ignoring event {kind!r}")

    def _sent_before_cancel(self, item: _Pending) -> bool:
        return self._cancel_before is not None and item.key < self._cancel_before

    @staticmethod
    def _is_cancel(event: dict[str, Any]) -> bool:
        try:
            return string_value(event.get("value"), "control").strip().lower() in CANCEL_COMMANDS
        except BadInput:
            return False

    def _cancel(self, control: _Pending) -> None:
        self._cancel_before = max(self._cancel_before or control.key, control.key)
        if self._current is not None and self._current.key < control.key:
            self._cancel_current = True
        dropped = self._drop_pending(lambda item: item.key < control.key)
        self._log("INFO", f"cancel: {'current text abandoned, ' if self._cancel_current else ''}"
                          f"{dropped} queued text(s) dropped")

    def _drop_pending(self, condition: Callable[[_Pending], bool]) -> int:
        dropped = 0
        keep = []
        for item in self._pending:
            if item.event.get("id") == "text" and condition(item):
                self._answer_cancelled(item)
                dropped += 1
            else:
                keep.append(item)
        self._pending = keep
        return dropped

    def should_cancel(self) -> bool:
        """Polled by the engine at segment boundaries: takes in new events, True to abandon the request."""
        self._poll()
        return self._cancel_current or self._stopping

    # ---------------------------------------------------------------------------------- dispatch
    def _handle(self, item: _Pending) -> None:
        input_id = item.event.get("id")
        if input_id == "text":
            self._handle_text(item)
        elif input_id == "control":
            self._handle_control(item)
        else:
            self._log("WARNING", f"ignoring input {input_id!r}: this node reads 'text' and 'control'")

    def _handle_control(self, item: _Pending) -> None:
        try:
            command = string_value(item.event.get("value"), "control").strip()
        except BadInput as exc:
            self._log("ERROR", f"control: {exc}")
            return
        lowered = command.lower()
        if lowered == "reset":
            self._log("INFO", "reset received; nothing is buffered between texts, so nothing to reset")
        elif lowered == "stats":
            self._log("INFO", self._stats_text())
        elif lowered.startswith("voice:"):
            self._switch_voice(command[len("voice:"):].strip())
        elif lowered in CANCEL_COMMANDS:
            self._log("DEBUG", f"{lowered}: nothing to cancel")
        else:
            self._log("WARNING", f"unknown control {command!r:.100}: use reset, stats, stop, cancel or "
                                 "voice:<name>")

    def _switch_voice(self, name: str) -> None:
        if self.engine is None:
            self._log("ERROR", f"voice:{name}: the TTS engine failed to start: {self.startup_error}")
            return
        try:
            voice = self.engine.registry.get(name)
        except Exception as exc:
            self._log("ERROR", f"voice:{name}: {_message(exc)}")
            return
        if not self._warm_up(voice):
            self._log("ERROR", f"keeping voice {getattr(self.voice, 'name', None)!r}")
            self._send_status("voice_change", state="error")
            return
        self.voice = voice
        self._log("INFO", f"default voice is now {voice.name!r}")
        self._send_status("voice_change")

    # ------------------------------------------------------------------------------------ texts
    def _handle_text(self, item: _Pending) -> None:
        self.stats.requests += 1
        meta = item.metadata
        self._current = item
        self._cancel_current = False
        try:
            request = self._parse(item.event.get("value"))
            if request is None:
                self._answer_empty(meta)
            else:
                self._log("DEBUG", f"text {meta.get('segment_index', '-')}: {len(request.text)} chars, "
                                   f"voice {request.voice.name!r}")
                with self._busy("synthesising"):
                    self._synthesize(request, meta)
        except self._empty as exc:
            self._log("DEBUG", f"no speakable content: {_message(exc)}")
            self._answer_empty(meta)
        except self._cancelled:
            self._answer_cancelled(item, counted=True)
        except Exception as exc:
            self._answer_error(meta, exc)
        finally:
            self._current = None
            self._cancel_current = False
        self._send_status("request")

    def _parse(self, value: Any) -> _Request | None:
        """The request a text message asks for, None when it has nothing to say; BadInput when malformed."""
        raw = string_value(value, "text")
        text = raw
        if raw.lstrip().startswith("{"):
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = None  # plain text that happens to start with "{"
            if isinstance(payload, dict):
                prompt = payload.get("prompt")
                if not isinstance(prompt, str):
                    raise BadInput('a JSON text input needs a string "prompt" field')
                text = prompt
        spec, text = split_voice_prefix(text)
        if len(text) > self.config.max_text_chars:
            raise BadInput(f"text too long: {len(text)} characters (limit {self.config.max_text_chars}, "
                           "PRIMESPEECH_MAX_TEXT_CHARS); split it into sentences upstream")
        if not is_speakable(text):
            return None
        voice = self._resolve_voice(spec)
        applies = self._configured_voice is not None and voice.name == self._configured_voice and \
            spec[0] in ("default", "named")
        return _Request(text=text, voice=voice, options=self._options(applies))

    def _resolve_voice(self, spec: tuple[str, tuple[str, ...]]) -> Any:
        if self.engine is None:
            raise PrimeSpeechError(f"the TTS engine failed to start: {self.startup_error}")
        kind, args = spec
        registry = self.engine.registry
        if kind == "default":
            if self.voice is None:
                raise PrimeSpeechError(f"no usable voice: {self.voice_error}")
            return self.voice
        if kind == "named":
            return registry.get(args[0])
        if kind == "custom":
            ref, prompt_text, lang = args
            return registry.custom(self._ref_path(ref), prompt_text, self._custom_lang(lang))
        gpt, sovits, ref, prompt_text, lang = args
        paths = []
        for path, what in ((gpt, "GPT checkpoint"), (sovits, "SoVITS weights")):
            resolved = Path(path.strip()).expanduser()
            if not resolved.exists():
                raise BadInput(f"VOICE:TRAINED: {what} not found: {path.strip()}")
            paths.append(resolved)
        return registry.custom(self._ref_path(ref), prompt_text, self._custom_lang(lang),
                               gpt_path=paths[0], sovits_path=paths[1])

    @staticmethod
    def _ref_path(ref: str) -> Path:
        path = Path(ref.strip()).expanduser()
        if not path.is_absolute():
            raise BadInput(f"the reference audio must be an absolute path, got {ref.strip()!r}")
        if not path.is_file():
            raise BadInput(f"reference audio not found: {path}")
        return path

    def _custom_lang(self, lang: str) -> str:
        lang = lang.strip().lower()
        if lang in CUSTOM_LANGS:
            return lang
        self._log("WARNING", f"reference language {lang!r:.20} is not zh, en, ja or auto; using auto")
        return "auto"

    def _options(self, use_config_prompt: bool) -> Any:
        c = self.config
        return self._options_type(
            text_lang=c.text_lang,
            prompt_lang=c.prompt_lang if use_config_prompt else None,
            prompt_text=c.prompt_text if use_config_prompt else None,
            speed=c.speed_factor, top_k=c.top_k, top_p=c.top_p, temperature=c.temperature, seed=c.seed,
            text_split_method=c.text_split_method, batch_size=c.batch_size, split_bucket=c.split_bucket,
            fragment_interval=c.fragment_interval, stream_chunk=c.stream_chunk,
        )

    def _synthesize(self, request: _Request, meta: dict[str, Any]) -> None:
        started = self.clock()
        if not self.config.return_fragment:
            result = self.engine.synthesize(request.text, request.voice, request.options,
                                            should_cancel=self.should_cancel)
            samples = _checked_audio(result.audio)
            if self.should_cancel():
                raise self._cancelled("cancelled")
            duration = len(samples) / result.sample_rate
            if not self._send("audio", audio_array(samples), self._audio_meta(meta, result.sample_rate, duration)):
                raise PrimeSpeechError("sending the audio failed")
            self._finish(meta, duration, self.clock() - started, result.real_time_factor)
            return
        pieces = 0
        duration = 0.0
        stream = self.engine.stream(request.text, request.voice, request.options,
                                    should_cancel=self.should_cancel)
        try:
            for result in stream:
                samples = _checked_audio(result.audio, allow_empty=True)
                if len(samples) == 0:
                    continue
                piece = len(samples) / result.sample_rate
                metadata = self._audio_meta(meta, result.sample_rate, piece)
                metadata.update(fragment_index=pieces, is_last_fragment=bool(result.is_last))
                if not self._send("audio", audio_array(samples), metadata):
                    raise PrimeSpeechError("sending the audio failed")
                pieces += 1
                duration += piece
                if self.should_cancel():
                    raise self._cancelled("cancelled")
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        if pieces == 0:
            raise PrimeSpeechError("the engine produced no audio")
        elapsed = self.clock() - started
        self._finish(meta, duration, elapsed, elapsed / duration if duration else None)

    def _finish(self, meta: dict[str, Any], duration: float, elapsed: float, rtf: float | None) -> None:
        self.stats.completed += 1
        self.stats.audio_seconds += duration
        self.stats.compute_seconds += elapsed
        self.last_rtf = rtf
        self._send("segment_complete", pa.array(["completed"]), self._base_meta(meta))
        self._log("INFO", f"spoke {duration:.2f}s of audio in {elapsed:.2f}s"
                          + (f" (RTF {rtf:.2f})" if rtf is not None else ""))

    # --------------------------------------------------------------------------------- answers
    @staticmethod
    def _base_meta(meta: dict[str, Any]) -> dict[str, Any]:
        return {"question_id": meta.get("question_id", "default"),
                "session_status": meta.get("session_status", "unknown")}

    def _audio_meta(self, meta: dict[str, Any], sample_rate: int, duration: float) -> dict[str, Any]:
        out = self._base_meta(meta)
        out.update(sample_rate=int(sample_rate), duration=float(duration))
        for key in ("session_id", "segment_index"):
            if key in meta:
                out[key] = meta[key]
        return out

    def _answer_empty(self, meta: dict[str, Any]) -> None:
        self.stats.skipped += 1
        self._log("DEBUG", "skipped a text with nothing to say")
        self._send("segment_complete", pa.array(["skipped"]), self._base_meta(meta))
        # the input's metadata as sent: without the `timestamp` dora adds on receipt
        self._send("segment_complete", pa.array(["empty"]), {k: v for k, v in meta.items() if k != "timestamp"})

    def _answer_error(self, meta: dict[str, Any], exc: BaseException) -> None:
        self.stats.errors += 1
        message = _message(exc)
        self._log("ERROR", f"text of question {meta.get('question_id', 'default')!r} failed: {message}")
        if not isinstance(exc, PrimeSpeechError):
            self._log("DEBUG", "".join(traceback.format_exception(exc)))
        self._send("segment_complete", pa.array(["error"]), {
            "question_id": meta.get("question_id", "default"), "session_status": "error",
            "error": message, "error_stage": "synthesis"})

    def _answer_cancelled(self, item: _Pending, counted: bool = False) -> None:
        if not counted:
            self.stats.requests += 1
        self.stats.cancelled += 1
        self._send("segment_complete", pa.array(["cancelled"]), self._base_meta(item.metadata))

    # ------------------------------------------------------------------------------------ outputs
    @contextmanager
    def _busy(self, activity: str) -> Iterator[None]:
        """Send a `busy` status every heartbeat_seconds while the body runs."""
        done = threading.Event()
        started = self.clock()

        def beat() -> None:
            while not done.wait(self.heartbeat_seconds):
                self._send_status("heartbeat", state="busy",
                                  extra={"activity": activity, "elapsed": round(self.clock() - started, 1)})

        thread = threading.Thread(target=beat, name="primespeech-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _send(self, output: str, array: pa.Array, metadata: dict[str, Any]) -> bool:
        try:
            with self._node_lock:
                self.node.send_output(output, array, metadata)
        except Exception as exc:  # a closed or undeclared output must not stop the node
            logger.warning("sending %r failed: %s", output, exc)
            return False
        return True

    def _log(self, level: str, message: str) -> None:
        """A `log` output line (JSON, the same dict as metadata) if LOG_LEVEL lets it through."""
        if LOG_LEVELS[level] < LOG_LEVELS[self.config.log_level]:
            return
        logger.log(LOG_LEVELS[level], "%s", message)
        record = {"node": NODE_NAME, "level": level, "message": message}
        self._send("log", pa.array([json.dumps(record, ensure_ascii=False)]), record)

    def _send_status(self, event: str, state: str | None = None, extra: dict[str, Any] | None = None) -> None:
        if state is None:
            state = "ready" if self.engine is not None and self.voice is not None and not self.voice_error \
                else "error"
        status: dict[str, Any] = {
            "node": NODE_NAME,
            "event": event,
            "state": state,
            "voice": getattr(self.voice, "name", None),
            "device": getattr(self.engine, "device", None) or self.config.device,
            "encoder_backend": getattr(self.engine, "encoder_backend", None) or self.config.encoder_backend,
            "streaming": self.config.return_fragment,
            "queue_depth": sum(1 for item in self._pending if item.event.get("id") == "text"),
            "last_rtf": None if self.last_rtf is None else round(float(self.last_rtf), 4),
            "requests": self.stats.requests,
            "error": self.startup_error or self.voice_error,
            **(extra or {}),
        }
        metadata = {k: v for k, v in status.items() if v is not None}
        self._send("status", pa.array([json.dumps(status, ensure_ascii=False)]), metadata)

    def _stats_text(self) -> str:
        s = self.stats
        return (f"{s.requests} texts: {s.completed} spoken, {s.skipped} skipped, {s.errors} failed, "
                f"{s.cancelled} cancelled; {s.audio_seconds:.1f}s of audio in {s.compute_seconds:.1f}s")


def _checked_audio(audio: Any, allow_empty: bool = False) -> np.ndarray:
    samples = np.asarray(audio, dtype=np.float32).reshape(-1)
    if samples.size == 0 and not allow_empty:
        raise PrimeSpeechError("the engine returned empty audio")
    if not np.all(np.isfinite(samples)):
        raise PrimeSpeechError("the engine returned audio with NaN or infinite samples")
    return samples


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, PrimeSpeechError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
