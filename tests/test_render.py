"""The rendering of one text without the node: plan, effects, the Renderer over the stub engine."""

from __future__ import annotations

import numpy as np
import pytest
from node_stub import SAMPLE_RATE, StubSynthesizer

from dora_primespeech_mlx import render
from dora_primespeech_mlx.engine import SynthesisOptions
from dora_primespeech_mlx.protocol import Adjustments, DefaultVoice, Pause, Speech, TextRequest


def _request(*pieces, **adjustments) -> TextRequest:
    return TextRequest(text="", voice=DefaultVoice(), adjustments=Adjustments(**adjustments), pieces=pieces)


def test_plan_gives_spans_their_speed_keeps_breaks_and_drops_punctuation_only_spans():
    voice = StubSynthesizer().registry.get("Doubao")  # speed 1.1
    steps, applied = render.plan(_request(Speech("One."), Pause(0.5), Speech(" ... "), Speech("Two.", rate=1.5)),
                                 SynthesisOptions(), voice)
    assert [type(step.piece) for step in steps] == [Speech, Pause, Speech]
    assert [step.options and step.options.speed for step in steps] == [1.1, None, pytest.approx(1.65)]
    assert applied == {"speed": 1.1, "pitch": 0.0, "volume": 100.0}
    assert steps[1].applied == applied and steps[2].applied["speed"] == 1.65


def test_effects_leave_the_samples_alone_unless_asked():
    samples = np.ones(8, np.float32)
    assert render.effects(samples, SAMPLE_RATE, Adjustments()) is samples
    assert np.allclose(render.effects(samples, SAMPLE_RATE, Adjustments(volume=50)), 0.5)


def test_the_renderer_skips_an_empty_span_with_a_warning_and_renders_breaks_as_silence():
    engine = StubSynthesizer()
    voice = engine.registry.get("Doubao")
    warnings: list[str] = []
    renderer = render.Renderer(engine, should_cancel=lambda: False, warn=warnings.append)
    steps, _ = render.plan(_request(Speech("One."), Pause(0.5), Speech("EMPTY_ENGINE")), SynthesisOptions(), voice)
    samples, rate, _ = renderer.batch(steps, voice, Adjustments(), "q")
    assert rate == SAMPLE_RATE and len(samples) == 4 * 160 + SAMPLE_RATE // 2
    assert len(warnings) == 1 and "'EMPTY_ENGINE' of question 'q'" in warnings[0]
    fragments = list(renderer.fragments(steps, voice, Adjustments(), "q"))
    assert [(len(s), last, silence) for s, _, last, silence, _ in fragments] == \
        [(640, False, False), (SAMPLE_RATE // 2, False, True), (0, True, False)]
    assert len(warnings) == 2


def test_dropped_warning():
    assert render.dropped_warning(object(), "q") is None
    source = type("Result", (), {"dropped": ("Привет", "x" * 50)})()
    assert render.dropped_warning(source, "q", "done") == \
        f"dropped unspeakable text: 'Привет', '{'x' * 40}…' (question 'q'); done"
