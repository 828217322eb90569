"""The rendering of one text: its pieces through the engine, the payload's effects, its breaks as silence.

A text is rendered piece by piece (`protocol.TextRequest.parts`): each speech span through the engine at
its own speed (`protocol.effective_speed`), then pitch-shifted and scaled by the payload's pitch and volume;
each SSML break as silence. `plan` turns a request into `Step`s; a `Renderer` renders them, either joined
into one buffer (`Renderer.batch`) or piece by piece as they come (`Renderer.fragments`, streaming).

This module knows the engine's API, `protocol` and `audio`, not dora: what is sent, when, and what is
logged is the node's. Warnings (text the engine dropped as unspeakable, a span with nothing speakable) go
to the `warn(message)` callback; cancellation is the node's `should_cancel`, handed to the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import audio, protocol
from .errors import PrimeSpeechError
from .protocol import Adjustments, Pause, Speech, TextRequest, error_text

# (samples, sample rate, is the text's last, is silence, the applied speed/pitch/volume)
Fragment = tuple[np.ndarray, int, bool, bool, dict[str, float]]


@dataclass
class Step:
    """One piece of a text to render: a Speech span with the engine options for it, or a Pause; and the
    speed/pitch/volume echoed in its audio metadata."""

    piece: Speech | Pause
    options: Any
    applied: dict[str, float]


def plan(request: TextRequest, options: Any, voice: Any) -> tuple[list[Step], dict[str, float]]:
    """The pieces to render (speakable spans with their speed, and breaks), and the speed/pitch/volume of
    the text as a whole (the batch message's)."""
    # The speed the engine used so far (SPEED_FACTOR, else the voice's default) stays the base; a payload
    # `speed` replaces it, as the Moxin fork does, and an SSML rate multiplies it.
    configured = options.speed if options.speed is not None else voice.speed
    applied = protocol.applied_metadata(protocol.effective_speed(configured, request.adjustments),
                                        request.adjustments)
    steps = []
    for piece in request.parts:
        if isinstance(piece, Pause):
            steps.append(Step(piece, None, applied))
        elif protocol.is_speakable(piece.text):
            speed = protocol.effective_speed(configured, request.adjustments, piece.rate)
            steps.append(Step(piece, replace(options, speed=speed),
                              protocol.applied_metadata(speed, request.adjustments)))
    return steps, applied


def effects(samples: Any, sample_rate: int, adjustments: Adjustments) -> Any:
    """The payload's pitch shift and volume; the samples untouched when neither is asked for."""
    if adjustments.pitch:
        samples = audio.pitch_shift(samples, sample_rate, adjustments.pitch)
    if adjustments.pitch or adjustments.volume != 100:
        samples = audio.apply_gain(samples, adjustments.volume)
    return samples


def dropped_warning(source: Any, question: Any, outcome: str = "the rest is spoken") -> str | None:
    """The warning for text the engine dropped as unspeakable (`dropped` of a Result or an EmptyTextError,
    e.g. Cyrillic or Arabic script); None if there was none."""
    dropped = getattr(source, "dropped", ()) or ()
    if not dropped:
        return None
    pieces = ", ".join(repr(piece if len(piece) <= 40 else piece[:40] + "…") for piece in dropped)
    return f"dropped unspeakable text: {pieces} (question {question!r}); {outcome}"


def empty_span_warning(step: Step, exc: Exception, question: Any) -> str:
    """The warning for a span skipped because the engine found nothing speakable in it."""
    return (f"nothing speakable in the span {step.piece.text!r:.60} of question "
            f"{question!r} ({error_text(exc)}): skipped")


class Renderer:
    """Renders `Step`s with an engine (`synthesize`/`stream`), polling `should_cancel` through it."""

    def __init__(self, engine: Any, *, should_cancel: Callable[[], bool], warn: Callable[[str], None]):
        from .engine import SAMPLE_RATE as ENGINE_RATE
        from .engine import EmptyTextError  # imported with an engine only (see node)

        self.engine = engine
        self.should_cancel = should_cancel
        self.warn = warn
        self._empty = EmptyTextError
        self.sample_rate = ENGINE_RATE

    def _warn_dropped(self, source: Any, question: Any) -> None:
        warning = dropped_warning(source, question)
        if warning is not None:
            self.warn(warning)

    def batch(self, steps: list[Step], voice: Any, adjustments: Adjustments,
              question: Any) -> tuple[np.ndarray, int, float | None]:
        """The whole text: (samples, sample rate, the engine's real-time factor of its last span). Spans with
        nothing speakable are skipped (warned about) unless all are; the engine's EmptyTextError then."""
        chunks, rate, spoken, empty, rtf = [], self.sample_rate, 0, [], None
        for step in steps:
            if isinstance(step.piece, Pause):
                chunks.append(protocol.silence(step.piece.seconds, rate))
                continue
            try:
                result = self.engine.synthesize(step.piece.text, voice, step.options,
                                                should_cancel=self.should_cancel)
            except self._empty as exc:
                empty.append((step, exc))
                continue
            self._warn_dropped(result, question)
            rate, spoken, rtf = result.sample_rate, spoken + 1, result.real_time_factor
            chunks.append(effects(protocol.audio_samples(result.audio), rate, adjustments))
        if not spoken:
            raise empty[0][1] if empty else PrimeSpeechError("the text has nothing to speak")
        for step, exc in empty:
            self.warn(empty_span_warning(step, exc, question))
        return protocol.audio_samples(np.concatenate(chunks)), rate, rtf

    def fragments(self, steps: list[Step], voice: Any, adjustments: Adjustments,
                  question: Any) -> Iterator[Fragment]:
        """Streaming: (samples, sample rate, is the text's last, is silence, applied) for each engine piece
        and each break, in order. A span with nothing speakable is skipped, unless it is the last piece and
        nothing came before it (EmptyTextError then answers the text empty); when it is the last piece
        after others, an empty last piece stands for it."""
        rate = self.sample_rate
        yielded = False
        for index, step in enumerate(steps):
            final = index == len(steps) - 1
            if isinstance(step.piece, Pause):
                yielded = True
                yield protocol.silence(step.piece.seconds, rate), rate, final, True, step.applied
                continue
            stream = self.engine.stream(step.piece.text, voice, step.options, should_cancel=self.should_cancel)
            ended = False
            try:
                for result in stream:
                    self._warn_dropped(result, question)
                    samples = protocol.audio_samples(result.audio, allow_empty=True)
                    rate, ended = result.sample_rate, bool(result.is_last)
                    if len(samples):
                        samples = effects(samples, rate, adjustments)
                    yielded = True
                    yield samples, rate, final and ended, False, step.applied
                    if ended:
                        break
            except self._empty as exc:
                if final and not yielded:
                    raise
                self.warn(empty_span_warning(step, exc, question))
                if final:
                    yield protocol.audio_samples([], allow_empty=True), rate, True, False, step.applied
                continue
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
            if not ended:
                raise PrimeSpeechError("the engine's stream ended before its last piece")
