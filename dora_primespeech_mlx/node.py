"""The dora-primespeech event loop, kept free of `dora` imports so that tests can drive it.

`TTSNode(node, config, engine).run()` takes any node-like object (iterable of event dicts, with
`send_output(id, array, metadata)` and ideally `try_recv()`), the `NodeConfig` and a `Synthesizer`.
What the messages say and what is answered is the `protocol` module's; this module decides when.

Ordering and cancellation. Dora delivers non-input events (INPUT_CLOSED, STOP) ahead of queued inputs,
does not keep the order between different inputs, and drops the oldest messages of an input whose queue
(default 10) is full. So the loop never acts on the order of arrival: every event is first taken in
(`_intake`) into a pending list sorted by the sender's timestamp, and requests are taken from that list.
While a request is synthesised, the engine calls `should_cancel` at each segment boundary (and the loop
calls it between streamed pieces); it drains the node with the non-blocking `try_recv()`, so `control`
messages are seen during synthesis and queued texts leave dora's bounded queue. A `stop`/`cancel`
control abandons the current request if that request was sent before it, and answers every text sent
before it that is still queued (or arrives late) with segment_complete "cancelled". A cancel that
arrives after a streamed text's last fragment was sent leaves the text `completed`. A STOP caused by
all inputs closing only ends the loop once the remaining events have been handled; a manual STOP
(ctrl-c, `dora stop`) cancels everything and ends it at once.

Status events are sent at start, after each `voice:` control and each text, every HEARTBEAT_SECONDS
while a voice loads or a text is synthesised, and at the stop (see `protocol`). Text the engine drops
as unspeakable (`Result.dropped`) is logged as a WARNING; the rest is spoken.

A text is rendered piece by piece by the `render` module (speech spans through the engine, SSML breaks as
silence). In batch mode the pieces are joined into the one audio message; when streaming, each engine
piece and each break is a fragment of its own (a break's with `is_silence: true`).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from . import audio, protocol, render, runtime
from .config import DEFAULT_VOICE, LOG_LEVELS, NodeConfig
from .errors import PrimeSpeechError
from .protocol import (
    Adjustments,
    BadInput,
    CustomVoice,
    DefaultVoice,
    Message,
    NamedVoice,
    TextRequest,
    TrainedVoice,
    error_text,
)

logger = logging.getLogger(__name__)

# dora >= 1.1 stops a dataflow whose nodes have all been silent (no output sent) for 120 s, which a long
# first-use conversion or synthesis can look like; a `status` heartbeat is sent while busy.
HEARTBEAT_SECONDS = 30.0


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
class _Stats:
    requests: int = 0
    completed: int = 0
    skipped: int = 0
    errors: int = 0
    cancelled: int = 0
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0

    def __str__(self) -> str:
        return (f"{self.requests} texts: {self.completed} spoken, {self.skipped} skipped, {self.errors} failed, "
                f"{self.cancelled} cancelled; {self.audio_seconds:.1f}s of audio in {self.compute_seconds:.1f}s")


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
        self._renderer: render.Renderer | None = None
        if engine is not None:
            from .engine import Cancelled, EmptyTextError, SynthesisOptions

            self._cancelled, self._empty, self._options_type = Cancelled, EmptyTextError, SynthesisOptions
            self._renderer = render.Renderer(engine, should_cancel=self.should_cancel,
                                             warn=lambda message: self._log("WARNING", message))
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
        try:
            self._start()
            self._serve()
        finally:
            self._send_status("stop", state="stopped")
            self._log("INFO", f"node stopped: {self.stats}")

    def _serve(self) -> None:
        while True:
            self._poll()
            if self._stopping:
                return
            if self._pending:
                self._handle(self._pending.pop(0))
                continue
            if self._closed:
                return
            try:
                event = next(self._events)
            except StopIteration:
                event = None
            except Exception as exc:
                self._log("ERROR", f"the event stream failed: {error_text(exc)}")
                event = None
            if event is None:
                self._closed = True
            else:
                self._intake(event)

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
            self._log("ERROR", f"VOICE_NAME: {error_text(exc)}; using {DEFAULT_VOICE}")
            try:
                self.voice = self.engine.registry.get(DEFAULT_VOICE)
            except Exception as exc2:
                self.voice_error = error_text(exc2)
                self._log("ERROR", f"no usable default voice: {self.voice_error}")
        if self.voice is not None:
            self.voice_error = self._warm_up(self.voice)
            if self.voice_error:
                self._log("ERROR", self.voice_error)
        self._send_status("start")

    def _warm_up(self, voice: Any) -> str | None:
        """Load and warm the voice up (heartbeats meanwhile): None when ready, else why not."""
        started = self.clock()
        try:
            with self._busy(f"loading voice {voice.name!r}"):
                self.engine.warmup(voice)
        except Exception as exc:
            self._log("DEBUG", traceback.format_exc())
            return f"voice {voice.name!r} could not be loaded: {error_text(exc)}"
        self._log("INFO", f"voice {voice.name!r} ready in {self.clock() - started:.2f}s "
                          f"(device {self.engine.device}, encoders {self.engine.encoder_backend})")
        return None

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
                self._log("WARNING", f"reading events failed: {error_text(exc)}")
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
            if event.get("id") == "control" and protocol.is_cancel(event.get("value")):
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

    def _cancel(self, control: _Pending) -> None:
        self._cancel_before = max(self._cancel_before or control.key, control.key)
        if self._current is not None and self._current.key < control.key:
            self._cancel_current = True
        dropped = self._drop_pending(lambda item: item.key < control.key)
        self._log("INFO", f"cancel: {'current text abandoned, ' if self._cancel_current else ''}"
                          f"{dropped} queued text(s) dropped")

    def _drop_pending(self, condition: Callable[[_Pending], bool]) -> int:
        keep: list[_Pending] = []
        dropped: list[_Pending] = []
        for item in self._pending:
            (dropped if item.event.get("id") == "text" and condition(item) else keep).append(item)
        self._pending = keep  # before answering: the request statuses count what is still queued
        for item in dropped:
            self._answer_cancelled(item)
        return len(dropped)

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
            control = protocol.parse_control(item.event.get("value"))
        except BadInput as exc:
            self._log("ERROR", f"control: {exc}")
            return
        if control.kind == "reset":
            self._log("INFO", "reset received; nothing is buffered between texts, so nothing to reset")
        elif control.kind == "stats":
            self._log("INFO", f"{self.stats}; {protocol.memory_text(self._memory())}")
        elif control.kind == "voice":
            self._switch_voice(control.argument)
        elif control.kind == "cancel":
            self._log("DEBUG", f"{control.argument}: nothing to cancel")
        else:
            self._log("WARNING", f"unknown control {control.argument!r:.100}: use reset, stats, stop, cancel or "
                                 "voice:<name>")

    def _switch_voice(self, name: str) -> None:
        """A `voice:<name>` control: always answered with a `voice_change` status."""
        voice = None
        if self.engine is None:
            error = f"the TTS engine failed to start: {self.startup_error}"
        else:
            try:
                voice = self.engine.registry.get(name)
            except Exception as exc:
                error = error_text(exc)
            else:
                error = self._warm_up(voice)
        if error is not None:
            kept = f"keeping voice {self.voice.name!r}" if self.voice is not None else "no voice is usable"
            self._log("ERROR", f"voice:{name}: {error}; {kept}")
            self._send_status("voice_change", state="error", extra={"error": error})
            return
        self.voice, self.voice_error = voice, None
        self._log("INFO", f"default voice is now {voice.name!r}")
        self._send_status("voice_change")

    # ------------------------------------------------------------------------------------ texts
    def _handle_text(self, item: _Pending) -> None:
        self.stats.requests += 1
        meta = item.metadata
        self._current = item
        self._cancel_current = False
        try:
            request = protocol.parse_text(item.event.get("value"), self.config.max_text_chars)
            if not request.speakable:
                self._answer_empty(meta)
            else:
                voice = self._resolve_voice(request)
                self._log("DEBUG", f"text {meta.get('segment_index', '-')}: {len(request.text)} chars, "
                                   f"voice {voice.name!r}")
                if request.adjustments.pitch:
                    audio.require_pitch_shift()  # before any audio goes out
                steps, applied = render.plan(request, self._options(request, voice), voice)
                with self._busy("synthesising"):
                    self._synthesize(steps, voice, request.adjustments, applied, meta)
        except self._empty as exc:
            if not self._warn_dropped(exc, meta, "nothing else to speak: answered skipped + empty"):
                self._log("INFO", f"nothing speakable in the text of question "
                                  f"{meta.get('question_id', 'default')!r} ({error_text(exc)}): "
                                  "answered skipped + empty")
            self._answer_empty(meta)
        except self._cancelled:
            self._answer_cancelled(item, counted=True)
        except Exception as exc:
            self._answer_error(meta, exc)
        finally:
            self._current = None
            self._cancel_current = False
        self._send_status("request")

    def _resolve_voice(self, request: TextRequest) -> Any:
        """The engine's voice for the request's voice spec."""
        if self.engine is None:
            raise PrimeSpeechError(f"the TTS engine failed to start: {self.startup_error}")
        spec = request.voice
        registry = self.engine.registry
        if isinstance(spec, DefaultVoice):
            if self.voice is None:
                raise PrimeSpeechError(f"no usable voice: {self.voice_error}")
            return self.voice
        if isinstance(spec, NamedVoice):
            return registry.get(spec.name)
        if isinstance(spec, CustomVoice):
            ref = protocol.reference_path(spec.ref_audio)
            return registry.custom(ref, spec.prompt_text, self._custom_lang(spec.lang))
        assert isinstance(spec, TrainedVoice)
        gpt = protocol.weights_path(spec.gpt_weights, "GPT checkpoint")
        sovits = protocol.weights_path(spec.sovits_weights, "SoVITS weights")
        ref = protocol.reference_path(spec.ref_audio)
        return registry.custom(ref, spec.prompt_text, self._custom_lang(spec.lang), gpt_path=gpt, sovits_path=sovits)

    def _custom_lang(self, lang: str) -> str:
        known = protocol.custom_lang(lang)
        if known is None:
            self._log("WARNING", f"reference language {lang.strip().lower()!r:.20} is not zh, en, ja or auto; "
                                 "using auto")
            return "auto"
        return known

    def _options(self, request: TextRequest, voice: Any) -> Any:
        """The engine's options from the config; PROMPT_TEXT/PROMPT_LANG describe VOICE_NAME's own clip."""
        c = self.config
        own_clip = isinstance(request.voice, DefaultVoice | NamedVoice) and self._configured_voice is not None \
            and voice.name == self._configured_voice
        return self._options_type(
            text_lang=c.text_lang,
            prompt_lang=c.prompt_lang if own_clip else None,
            prompt_text=c.prompt_text if own_clip else None,
            speed=c.speed_factor, top_k=c.top_k, top_p=c.top_p, temperature=c.temperature, seed=c.seed,
            text_split_method=c.text_split_method, batch_size=c.batch_size, split_bucket=c.split_bucket,
            fragment_interval=c.fragment_interval, stream_chunk=c.stream_chunk,
        )

    def _synthesize(self, steps: list[render.Step], voice: Any, adjustments: Adjustments,
                    applied: dict[str, float], meta: dict[str, Any]) -> None:
        started = self.clock()
        question = meta.get("question_id", "default")
        if not self.config.return_fragment:
            samples, rate, rtf = self._renderer.batch(steps, voice, adjustments, question)
            if self.should_cancel():
                raise self._cancelled("cancelled")
            message = protocol.audio_message(samples, meta, rate, is_final=True, fragment_total=1,
                                             is_silence=False, applied=applied)
            if not self._send(message):
                raise PrimeSpeechError("sending the audio failed")
            duration = message.metadata["duration"]
            elapsed = self.clock() - started
            if len(steps) > 1:
                rtf = elapsed / duration
            self._finish(meta, duration, elapsed, rtf)
            return
        pieces = 0
        duration = 0.0
        finished = False
        fragments = self._renderer.fragments(steps, voice, adjustments, question)
        try:
            for samples, rate, last, is_silence, step_applied in fragments:
                if len(samples) == 0:
                    if not (last and pieces):
                        continue
                    samples, is_silence = protocol.closing_fragment(rate), True
                message = protocol.audio_message(samples, meta, rate, fragment_index=pieces, is_last_fragment=last,
                                                 is_final=last, fragment_total=pieces + 1 if last else None,
                                                 is_silence=is_silence, applied=step_applied)
                if not self._send(message):
                    raise PrimeSpeechError("sending the audio failed")
                pieces += 1
                duration += message.metadata["duration"]
                if last:  # everything is sent: a cancel from now on comes too late to abandon anything
                    finished = True
                    break
                if self.should_cancel():
                    raise self._cancelled("cancelled")
        finally:
            fragments.close()
        if pieces == 0:
            raise PrimeSpeechError("the engine produced no audio")
        if not finished:
            raise PrimeSpeechError("the engine's stream ended before its last piece")
        elapsed = self.clock() - started
        self._finish(meta, duration, elapsed, elapsed / duration if duration else None)

    def _warn_dropped(self, source: Any, meta: dict[str, Any], outcome: str) -> bool:
        """Log text the engine dropped as unspeakable (see `render.dropped_warning`); True if there was any."""
        warning = render.dropped_warning(source, meta.get("question_id", "default"), outcome)
        if warning is not None:
            self._log("WARNING", warning)
        return warning is not None

    def _finish(self, meta: dict[str, Any], duration: float, elapsed: float, rtf: float | None) -> None:
        self.stats.completed += 1
        self.stats.audio_seconds += duration
        self.stats.compute_seconds += elapsed
        self.last_rtf = rtf
        self._send(protocol.segment_complete("completed", meta))
        self._log("INFO", f"spoke {duration:.2f}s of audio in {elapsed:.2f}s"
                          + (f" (RTF {rtf:.2f})" if rtf is not None else ""))

    # --------------------------------------------------------------------------------- answers
    def _answer_empty(self, meta: dict[str, Any]) -> None:
        self.stats.skipped += 1
        self._log("DEBUG", "skipped a text with nothing to say")
        self._send(protocol.segment_complete("skipped", meta))
        self._send(protocol.segment_complete("empty", meta))

    def _answer_error(self, meta: dict[str, Any], exc: BaseException) -> None:
        self.stats.errors += 1
        message = error_text(exc)
        self._log("ERROR", f"text of question {meta.get('question_id', 'default')!r} failed: {message}")
        if not isinstance(exc, PrimeSpeechError):
            self._log("DEBUG", "".join(traceback.format_exception(exc)))
        self._send(protocol.segment_complete("error", meta, error=message))

    def _answer_cancelled(self, item: _Pending, counted: bool = False) -> None:
        """Answer a text "cancelled"; one never taken up (not `counted` yet) also gets its request status."""
        if not counted:
            self.stats.requests += 1
        self.stats.cancelled += 1
        self._send(protocol.segment_complete("cancelled", item.metadata))
        if not counted:
            self._send_status("request")

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

    def _send(self, message: Message) -> bool:
        try:
            with self._node_lock:
                self.node.send_output(*message)
        except Exception as exc:  # a closed or undeclared output must not stop the node
            logger.warning("sending %r failed: %s", message.output, exc)
            return False
        return True

    def _log(self, level: str, message: str) -> None:
        """A `log` output line if LOG_LEVEL lets it through."""
        if LOG_LEVELS[level] < LOG_LEVELS[self.config.log_level]:
            return
        logger.log(LOG_LEVELS[level], "%s", message)
        self._send(protocol.log_message(level, message))

    def _send_status(self, event: str, state: str | None = None, extra: dict[str, Any] | None = None) -> None:
        if state is None:
            ready = self.engine is not None and self.voice is not None and not self.voice_error
            state = "ready" if ready else "error"
        self._send(protocol.status_message(
            event, state,
            voice=getattr(self.voice, "name", None),
            device=getattr(self.engine, "device", None) or self.config.device,
            encoder_backend=getattr(self.engine, "encoder_backend", None) or self.config.encoder_backend,
            streaming=self.config.return_fragment,
            queue_depth=sum(1 for item in self._pending if item.event.get("id") == "text"),
            last_rtf=self.last_rtf,
            requests=self.stats.requests,
            error=self.startup_error or self.voice_error,
            extra=extra,
            memory=self._memory(),
        ))

    def _memory(self) -> dict[str, float | None]:
        """The process's resident memory and MLX's peak memory (None where unknown), in MB."""
        # MLX is loaded with an engine only
        return protocol.memory_report(runtime.resident_bytes(),
                                      runtime.mlx_peak_bytes() if self.engine is not None else None)
