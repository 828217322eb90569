"""The node loop against the dora-primespeech contract, driven by dora.testing.MockNode and a stub engine.

Each test checks output ids, their order, payload types (ListArray<float32> for audio, StringArray for
the rest) and metadata exactly.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time

import numpy as np
import pyarrow as pa
import pytest
from node_stub import PAUSE, SAMPLE_RATE, RecordingNode, StagedNode, StubSynthesizer, tone

from dora_primespeech_mlx import main as main_module
from dora_primespeech_mlx.config import NodeConfig
from dora_primespeech_mlx.node import TTSNode
from dora_primespeech_mlx.protocol import NODE_NAME, is_speakable

AUDIO_TYPE = pa.list_(pa.float32())


def text(value, **meta):
    array = pa.array([value]) if isinstance(value, str) else value
    return {"type": "INPUT", "id": "text", "value": array, "metadata": meta}


def control(command, **meta):
    array = pa.array([command]) if isinstance(command, str) else command
    return {"type": "INPUT", "id": "control", "value": array, "metadata": meta}


def run(events, env=None, engine="stub", **kwargs):
    config, problems = NodeConfig.from_env(env or {})
    node = RecordingNode(events, fail_outputs=kwargs.pop("fail_outputs", ()))
    engine = StubSynthesizer() if engine == "stub" else engine
    TTSNode(node, config, engine, problems=problems, **kwargs).run()
    return node, engine


def answers(node):
    """The sequence of (output id, value) of audio and segment_complete, audio shown as 'audio'."""
    out = []
    for oid, data, _meta in node.sent:
        if oid == "audio":
            out.append(("audio", None))
        elif oid == "segment_complete":
            out.append((oid, data.to_pylist()[0]))
    return out


def logs(node, level=None):
    lines = []
    for data, meta in node.of("log"):
        assert isinstance(data, pa.StringArray) and len(data) == 1
        record = json.loads(data[0].as_py())
        assert record == meta
        assert set(record) == {"node", "level", "message"} and record["node"] == NODE_NAME
        if level is None or record["level"] == level:
            lines.append(record["message"])
    return lines


def statuses(node):
    out = []
    for data, meta in node.of("status"):
        assert isinstance(data, pa.StringArray) and len(data) == 1
        status = json.loads(data[0].as_py())
        assert meta == {k: v for k, v in status.items() if v is not None}
        out.append(status)
    return out


ADDED = ("is_final", "fragment_total", "is_silence", "speed", "pitch", "volume")  # issue 14's audio fields


def check_audio(data, meta, expected_meta, samples=None):
    """The audio payload and its metadata exactly, less the ADDED fields, whose types are checked here (and
    values by the tests of them)."""
    assert type(data) is pa.ListArray and data.type == AUDIO_TYPE and len(data) == 1
    values = data.values.to_numpy()
    assert values.dtype == np.float32
    if samples is not None:
        np.testing.assert_array_equal(values, samples)
    expected = dict(expected_meta, sample_rate=SAMPLE_RATE, duration=len(values) / SAMPLE_RATE)
    assert {k: v for k, v in meta.items() if k not in ADDED} == expected
    assert type(meta["sample_rate"]) is int and type(meta["duration"]) is float
    assert type(meta["is_final"]) is bool and type(meta["is_silence"]) is bool
    assert all(type(meta[k]) is float for k in ("speed", "pitch", "volume"))
    assert type(meta.get("fragment_total", 0)) is int


def check_string(data, value):
    assert isinstance(data, pa.StringArray) and data.to_pylist() == [value]


# ------------------------------------------------------------------------------------------ basics
def test_plain_text_one_audio_then_completed_with_exact_metadata():
    meta = {"question_id": "q7", "session_status": "started", "segment_index": 3, "session_id": "s1",
            "extra": "not passed on"}
    node, engine = run([text("你好。世界！", **meta)])
    assert answers(node) == [("audio", None), ("segment_complete", "completed")]
    (audio, audio_meta), = node.of("audio")
    doubao = engine.registry.get("Doubao")
    check_audio(audio, audio_meta, {"question_id": "q7", "session_status": "started", "segment_index": 3,
                                    "session_id": "s1"},
                samples=np.concatenate([tone("你好。", doubao), tone("世界！", doubao)]))
    (done, done_meta), = node.of("segment_complete")
    check_string(done, "completed")
    assert done_meta == {"question_id": "q7", "session_status": "started"}
    assert engine.calls[0][:3] == ("synthesize", "你好。世界！", doubao)


def test_defaults_for_missing_metadata():
    node, _ = run([text("hello")])
    (audio, meta), = node.of("audio")
    check_audio(audio, meta, {"question_id": "default", "session_status": "unknown"})
    assert node.of("segment_complete")[0][1] == {"question_id": "default", "session_status": "unknown"}


def test_status_on_start_and_after_each_request_and_stop():
    node, _ = run([text("one."), text("two.")])
    states = statuses(node)
    assert [s["event"] for s in states] == ["start", "request", "request", "stop"]
    start = states[0]
    memory = {k: start.pop(k) for k in ("rss_mb", "mlx_peak_mb")}  # values: test_status_reports_memory
    assert start == {"node": NODE_NAME, "event": "start", "state": "ready", "voice": "Doubao", "device": "cpu",
                     "encoder_backend": "mlx", "streaming": False, "queue_depth": 0, "last_rtf": None,
                     "requests": 0, "error": None}
    assert all(value is None or type(value) is float for value in memory.values())
    assert states[1]["last_rtf"] == 0.25 and states[2]["requests"] == 2
    assert states[-1]["state"] == "stopped"


def test_options_come_from_the_config():
    env = {"TOP_K": "15", "TOP_P": "0.8", "TEMPERATURE": "0.6", "SEED": "7", "TEXT_LANG": "en",
           "TEXT_SPLIT_METHOD": "cut2", "BATCH_SIZE": "4", "SPLIT_BUCKET": "false", "SPEED_FACTOR": "1.3",
           "FRAGMENT_INTERVAL": "0.2", "PROMPT_TEXT": "override", "PROMPT_LANG": "zh"}
    node, engine = run([text("hello."), text("VOICE:Maple|hi.")], env=env)
    opts = engine.calls[0][3]
    assert (opts.top_k, opts.top_p, opts.temperature, opts.seed) == (15, 0.8, 0.6, 7)
    assert (opts.text_lang, opts.text_split_method, opts.batch_size, opts.split_bucket) == ("en", "cut2", 4, False)
    assert (opts.speed, opts.fragment_interval, opts.prompt_text, opts.prompt_lang) == (1.3, 0.2, "override", "zh")
    # PROMPT_TEXT/PROMPT_LANG describe VOICE_NAME's reference clip, not another voice's
    maple = engine.calls[1][3]
    assert (maple.prompt_text, maple.prompt_lang, maple.speed) == (None, None, 1.3)


def test_json_prompt_and_other_json():
    node, engine = run([text(json.dumps({"prompt": "VOICE:Maple|from the bridge."})),
                        text("42"), text("{not json"), text('{"text": "no prompt"}')])
    assert [(c[1], c[2].name) for c in engine.calls] == [("from the bridge.", "Maple"), ("42", "Doubao"),
                                                         ("{not json", "Doubao")]
    assert answers(node)[-1] == ("segment_complete", "error")
    assert "prompt" in node.of("segment_complete")[-1][1]["error"]


# ----------------------------------------------------------------------------------------- voices
def test_voice_prefix_is_for_that_text_only():
    node, engine = run([text("VOICE:Luo Xiang|first."), text("second."), text("VOICE:maple|third.")])
    assert [c[2].name for c in engine.calls] == ["Luo Xiang", "Doubao", "Maple"]
    assert [a for a in answers(node) if a[0] == "segment_complete"] == [("segment_complete", "completed")] * 3


def test_unknown_voice_prefix_is_an_error_and_the_node_goes_on():
    node, engine = run([text("VOICE:Nobody|hello", question_id="q1"), text("fine.")])
    assert answers(node) == [("segment_complete", "error"), ("audio", None), ("segment_complete", "completed")]
    data, meta = node.of("segment_complete")[0]
    check_string(data, "error")
    assert meta == {"question_id": "q1", "session_status": "error", "error": meta["error"],
                    "error_stage": "synthesis"}
    assert "unknown voice 'Nobody'" in meta["error"]
    assert any("unknown voice" in line for line in logs(node, "ERROR"))


@pytest.mark.parametrize("message", ["VOICE:hello", "VOICE:|text", "VOICE:CUSTOM|a|b|zh",
                                     "VOICE:TRAINED|a|b|c|d|zh"])
def test_bad_voice_syntax(message):
    node, engine = run([text(message)])
    assert answers(node) == [("segment_complete", "error")]
    assert "expected VOICE:" in node.of("segment_complete")[0][1]["error"]
    assert engine.calls == []


def test_custom_voice(tmp_path):
    ref = tmp_path / "ref.wav"
    ref.write_bytes(b"RIFF")
    node, engine = run([text(f"VOICE:CUSTOM|{ref}|参考文本|ja|こんにちは。"),
                        text(f"VOICE:CUSTOM|{ref}|ref text|klingon|hello."),
                        text("VOICE:CUSTOM|relative.wav|p|zh|x"),
                        text(f"VOICE:CUSTOM|{tmp_path / 'missing.wav'}|p|zh|x")])
    assert engine.registry.custom_calls == [(ref, "参考文本", "ja", None, None),
                                            (ref, "ref text", "auto", None, None)]
    assert [(c[1], c[2].name) for c in engine.calls] == [("こんにちは。", "CUSTOM"), ("hello.", "CUSTOM")]
    assert engine.calls[0][3].prompt_text is None  # the message's transcript, carried by the voice
    errors = [m["error"] for _, m in node.of("segment_complete") if m.get("session_status") == "error"]
    assert len(errors) == 2 and "absolute path" in errors[0] and "not found" in errors[1]
    assert any("klingon" in line for line in logs(node, "WARNING"))


def test_trained_voice(tmp_path):
    files = {}
    for name in ("g.ckpt", "s.pth", "r.wav"):
        files[name] = tmp_path / name
        files[name].write_bytes(b"x")
    g, s, r = files["g.ckpt"], files["s.pth"], files["r.wav"]
    node, engine = run([text(f"VOICE:TRAINED|{g}|{s}|{r}|prompt|en|Trained speech."),
                        text(f"VOICE:TRAINED|{tmp_path / 'nope.ckpt'}|{s}|{r}|prompt|en|x")])
    assert engine.registry.custom_calls == [(r, "prompt", "en", g, s)]
    assert engine.calls[0][2].name == "TRAINED"
    assert answers(node) == [("audio", None), ("segment_complete", "completed"), ("segment_complete", "error")]
    assert "GPT checkpoint not found" in node.of("segment_complete")[-1][1]["error"]


def test_unknown_voice_name_falls_back_to_doubao():
    node, engine = run([text("hi.")], env={"VOICE_NAME": "Nobody"})
    assert any("VOICE_NAME" in line and "Doubao" in line for line in logs(node, "ERROR"))
    assert engine.calls[0][2].name == "Doubao" and statuses(node)[0]["voice"] == "Doubao"


def test_voice_name_env_selects_the_voice():
    _, engine = run([text("hi.")], env={"VOICE_NAME": "Luo Xiang"})
    assert engine.loaded[0] == "Luo Xiang" and engine.calls[0][2].name == "Luo Xiang"


# ------------------------------------------------------------------------------------ empty texts
@pytest.mark.parametrize("value", ["", "   \n\t", "。！？", "...", "“”（）【】《》, ，、；：", "VOICE:Maple|。",
                                   json.dumps({"prompt": " ! "})])
def test_empty_and_punctuation_only_text_is_skipped(value):
    meta = {"question_id": 5, "session_status": "ended", "segment_index": 2, "custom": "kept"}
    node, engine = run([text(value, **meta)])
    assert answers(node) == [("segment_complete", "skipped"), ("segment_complete", "empty")]
    (skipped, skipped_meta), (empty, empty_meta) = node.of("segment_complete")
    check_string(skipped, "skipped")
    check_string(empty, "empty")
    assert skipped_meta == {"question_id": 5, "session_status": "ended"}
    assert empty_meta == meta
    assert engine.calls == []


def test_engine_empty_text_error_is_skipped_too():
    node, _ = run([text("EMPTY_ENGINE", question_id="q")])
    assert answers(node) == [("segment_complete", "skipped"), ("segment_complete", "empty")]
    assert node.of("segment_complete")[1][1] == {"question_id": "q"}


def test_is_speakable():
    assert is_speakable("a") and is_speakable("。a") and is_speakable("…")
    assert not is_speakable("") and not is_speakable(" 。.,!?\"' ")


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("value, why", [
    (pa.array([1, 2]), "got an array of int64"),
    (pa.array([], pa.string()), "empty array"),
    (pa.array([b"bytes"]), "got an array of binary"),
    (pa.array([None], pa.string()), "null"),
    ("not arrow", "got str"),
    (None, "got NoneType"),
])
def test_bad_payloads_are_answered_with_errors(value, why):
    event = {"type": "INPUT", "id": "text", "value": value, "metadata": {"question_id": "bad"}}
    node, engine = run([event, text("after.")])
    assert answers(node) == [("segment_complete", "error"), ("audio", None), ("segment_complete", "completed")]
    meta = node.of("segment_complete")[0][1]
    assert meta["question_id"] == "bad" and why in meta["error"] and meta["error_stage"] == "synthesis"


def test_large_string_array_is_accepted():
    node, _ = run([text(pa.array(["large."], pa.large_string()))])
    assert answers(node) == [("audio", None), ("segment_complete", "completed")]


def test_huge_text_is_rejected():
    node, engine = run([text("字" * 5001)])
    assert answers(node) == [("segment_complete", "error")]
    assert "too long: 5001 characters (limit 5000" in node.of("segment_complete")[0][1]["error"]
    assert engine.calls == []
    node, engine = run([text("x" * 101), text("x" * 100)], env={"PRIMESPEECH_MAX_TEXT_CHARS": "100"})
    assert [v for _, v in answers(node)] == ["error", None, "completed"]


@pytest.mark.parametrize("marker, message", [("RAISE_PS", "stub engine failure"),
                                             ("RAISE_RT", "RuntimeError: stub runtime failure"),
                                             ("RAISE_KEY", "KeyError: 'missing'"),
                                             ("NAN_AUDIO", "NaN"),
                                             ("NO_AUDIO", "empty audio")])
def test_engine_failures_are_answered_and_the_node_goes_on(marker, message):
    node, _ = run([text(f"{marker}.", question_id="q", session_status="started"), text("next.")])
    assert answers(node) == [("segment_complete", "error"), ("audio", None), ("segment_complete", "completed")]
    meta = node.of("segment_complete")[0][1]
    assert meta == {"question_id": "q", "session_status": "error", "error": meta["error"],
                    "error_stage": "synthesis"}
    assert message in meta["error"]
    assert any(message in line for line in logs(node, "ERROR"))


def test_other_events_and_inputs_do_not_break_the_loop():
    events = [{"type": "INPUT_CLOSED", "id": "control"}, {"type": "ERROR", "error": "boom"},
              {"type": "PARAM_UPDATE", "id": "k", "value": 1},
              {"type": "INPUT", "id": "other", "value": pa.array(["x"]), "metadata": {}}, text("still here.")]
    node, _ = run(events, env={"LOG_LEVEL": "DEBUG"})
    assert answers(node) == [("audio", None), ("segment_complete", "completed")]
    assert any("boom" in line for line in logs(node, "ERROR"))
    assert any("'other'" in line for line in logs(node, "WARNING"))


def test_failing_outputs_do_not_stop_the_node():
    node, _ = run([text("one."), text("two.")], fail_outputs=("status", "log"))
    assert answers(node) == [("audio", None), ("segment_complete", "completed")] * 2


def test_log_level_filters_and_log_format():
    node, _ = run([text("RAISE_PS"), control("stats")], env={"LOG_LEVEL": "ERROR", "TOP_K": "x"})
    levels = {json.loads(d[0].as_py())["level"] for d, _ in node.of("log")}
    assert levels == {"ERROR"}
    assert any("invalid TOP_K='x'" in line for line in logs(node))
    node, _ = run([text("fine.")], env={"LOG_LEVEL": "DEBUG"})
    assert {"DEBUG", "INFO"} <= {json.loads(d[0].as_py())["level"] for d, _ in node.of("log")}


# --------------------------------------------------------------------------------------- controls
def test_reset_and_stats_controls_log():
    node, _ = run([text("one."), text("RAISE_PS"), text("。"), control("reset"), control("stats")])
    info = logs(node, "INFO")
    assert any("reset" in line for line in info)
    assert any("3 texts: 1 spoken, 1 skipped, 1 failed, 0 cancelled" in line for line in info)


def test_voice_control_switches_the_default_voice():
    node, engine = run([text("before."), control("voice:Maple"), text("after."), control("voice:Nobody"),
                        control("voice:Broken"), text("still maple.")])
    assert [c[2].name for c in engine.calls] == ["Doubao", "Maple", "Maple"]
    changes = [s for s in statuses(node) if s["event"] == "voice_change"]
    assert [(s["voice"], s["state"]) for s in changes] == [("Maple", "ready"), ("Maple", "error"),
                                                           ("Maple", "error")]
    assert "unknown voice 'Nobody'" in changes[1]["error"] and "'Broken'" in changes[2]["error"]
    errors = logs(node, "ERROR")
    assert any("unknown voice 'Nobody'" in line for line in errors)
    assert any("'Broken' could not be loaded" in line for line in errors)


def test_unknown_and_malformed_controls_are_logged():
    node, _ = run([control("dance"), control(pa.array([3])), text("ok.")])
    assert any("unknown control 'dance'" in line for line in logs(node, "WARNING"))
    assert any("control must be a pyarrow StringArray" in line for line in logs(node, "ERROR"))
    assert answers(node) == [("audio", None), ("segment_complete", "completed")]


def run_staged(events, env=None):
    """Run with events after each PAUSE delivered once the stub starts speaking its first sentence."""
    config, problems = NodeConfig.from_env(env or {})
    holder = {}
    spoken = []

    def on_segment(index):
        spoken.append(index)
        if index == 0:
            holder["node"].release()

    engine = StubSynthesizer(on_segment=on_segment)
    node = holder["node"] = StagedNode(events)
    TTSNode(node, config, engine, problems=problems).run()
    return node, engine, spoken


@pytest.mark.parametrize("command", ["cancel", "stop", " STOP "])
def test_cancel_abandons_the_current_text_and_drops_queued_ones(command):
    events = [text("One. Two. Three.", question_id="a"), PAUSE,
              text("queued.", question_id="b", session_status="x"), control(command),
              text("after the cancel.", question_id="c")]
    node, engine, spoken = run_staged(events)
    done = [(d.to_pylist()[0], m) for d, m in node.of("segment_complete")]
    assert sorted((v, m["question_id"]) for v, m in done) == [("cancelled", "a"), ("cancelled", "b"),
                                                              ("completed", "c")]
    assert {"question_id": "b", "session_status": "x"} in [m for v, m in done if v == "cancelled"]
    assert [m["question_id"] for _, m in node.of("audio")] == ["c"]
    assert [c[1] for c in engine.calls] == ["One. Two. Three.", "after the cancel."]
    assert spoken == [0, 0]  # "a" stopped at its first segment boundary
    assert any("current text abandoned, 1 queued text(s) dropped" in line for line in logs(node, "INFO"))


def test_cancel_in_streaming_mode_stops_between_pieces():
    node, _, spoken = run_staged([text("One. Two. Three.", question_id="a"), PAUSE, control("cancel")],
                                 env={"RETURN_FRAGMENT": "true"})
    assert answers(node) == [("audio", None), ("segment_complete", "cancelled")]
    assert spoken == [0]


def test_cancel_with_nothing_running_affects_nothing_later():
    node, _ = run([control("cancel"), text("later.")])
    assert answers(node) == [("audio", None), ("segment_complete", "completed")]


def test_texts_queued_before_a_cancel_are_dropped():
    node, engine = run([text("a.", question_id="a"), text("b.", question_id="b"), control("cancel"),
                        text("c.", question_id="c")])
    done = {m["question_id"]: d.to_pylist()[0] for d, m in node.of("segment_complete")}
    assert done == {"a": "cancelled", "b": "cancelled", "c": "completed"}


T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def at(event, seconds):
    event["metadata"]["timestamp"] = T0 + dt.timedelta(seconds=seconds)
    return event


def test_events_are_ordered_by_the_senders_timestamps():
    # dora keeps no order between inputs: here the control arrives first although one text was sent
    # before it and the other texts arrive in a shuffled order
    events = [at(control("voice:Maple"), 3), at(text("first.", question_id="1"), 1),
              at(text("last.", question_id="3"), 5), at(text("second.", question_id="2"), 2)]
    _, engine = run(events)
    assert [(c[1], c[2].name) for c in engine.calls] == [("first.", "Doubao"), ("second.", "Doubao"),
                                                         ("last.", "Maple")]


def test_a_cancel_covers_texts_sent_before_it_that_arrive_after_it():
    events = [at(text("speaking. still.", question_id="0"), 0), PAUSE, at(control("cancel"), 4),
              at(text("after.", question_id="3"), 5), at(text("late but sent before.", question_id="2"), 2)]
    node, engine, _ = run_staged(events)
    done = {m["question_id"]: d.to_pylist()[0] for d, m in node.of("segment_complete")}
    assert done == {"0": "cancelled", "2": "cancelled", "3": "completed"}
    assert [c[1] for c in engine.calls] == ["speaking. still.", "after."]


def test_a_cancel_sent_before_the_current_text_leaves_it_alone():
    events = [at(text("current. text.", question_id="1"), 5), PAUSE, at(control("cancel"), 4)]
    node, _, _ = run_staged(events)
    assert answers(node) == [("audio", None), ("segment_complete", "completed")]


def test_all_inputs_closed_stop_first_still_speaks_the_queued_texts():
    # dora delivers INPUT_CLOSED and STOP ahead of inputs still queued
    events = [{"type": "INPUT_CLOSED", "id": "text"}, {"type": "STOP", "id": "ALL_INPUTS_CLOSED"},
              text("one."), text("two.")]
    node, _ = run(events)
    assert answers(node) == [("audio", None), ("segment_complete", "completed")] * 2


def test_manual_stop_cancels_everything_and_ends():
    events = [text("One. Two.", question_id="a"), text("b.", question_id="b"), {"type": "STOP", "id": "MANUAL"},
              text("c.", question_id="c")]
    node, engine = run(events)
    done = sorted((m["question_id"], d.to_pylist()[0]) for d, m in node.of("segment_complete"))
    assert done == [("a", "cancelled"), ("b", "cancelled"), ("c", "cancelled")]
    assert node.of("audio") == [] and statuses(node)[-1]["state"] == "stopped"


# ---------------------------------------------------------------------------------------- streaming
def test_streaming_sends_one_audio_per_piece():
    node, engine = run([text("One. Two. Three.", question_id="q", segment_index=1)],
                       env={"RETURN_FRAGMENT": "true"})
    assert answers(node) == [("audio", None)] * 3 + [("segment_complete", "completed")]
    doubao = engine.registry.get("Doubao")
    for i, ((data, meta), sentence) in enumerate(zip(node.of("audio"), ["One.", "Two.", "Three."], strict=True)):
        check_audio(data, {k: v for k, v in meta.items() if k not in ("fragment_index", "is_last_fragment")},
                    {"question_id": "q", "session_status": "unknown", "segment_index": 1},
                    samples=tone(sentence, doubao))
        assert (meta["fragment_index"], meta["is_last_fragment"]) == (i, i == 2)
    assert engine.calls[0][0] == "stream" and engine.calls[0][3].fragment_interval == 0.3
    assert statuses(node)[0]["streaming"] is True


def test_streaming_errors_and_empty_text():
    node, _ = run([text("RAISE_RT"), text("EMPTY_ENGINE"), text("NO_AUDIO.")], env={"RETURN_FRAGMENT": "1"})
    assert [v for _, v in answers(node)] == ["error", "skipped", "empty", "error"]
    assert "no audio" in node.of("segment_complete")[-1][1]["error"]


# ---------------------------------------------------------------------------------- start-up failures
def test_engine_that_failed_to_start_answers_every_text_with_the_reason():
    node, _ = run([text("hello", question_id="q"), text("VOICE:Maple|hi"), text("。")], engine=None,
                  startup_error="PrimeSpeechError: model folder missing")
    assert [v for _, v in answers(node)] == ["error", "error", "skipped", "empty"]
    for _, meta in node.of("segment_complete")[:2]:
        assert "model folder missing" in meta["error"]
    assert any("failed to start" in line for line in logs(node, "ERROR"))
    status = statuses(node)[0]
    assert status["state"] == "error" and "model folder missing" in status["error"]


def test_voice_that_fails_to_load_is_reported_and_each_text_errors():
    node, engine = run([text("hello.")], env={"VOICE_NAME": "Broken"})
    assert any("could not be loaded" in line for line in logs(node, "ERROR"))
    assert statuses(node)[0]["state"] == "error"
    assert answers(node) == [("segment_complete", "error")]
    assert "not installed" in node.of("segment_complete")[0][1]["error"]


def run_main(monkeypatch, events, env):
    import dora

    node = RecordingNode(events)
    monkeypatch.setattr(dora, "Node", lambda *a, **k: node)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main_module.main() == 0
    return node


def test_main_with_missing_voice_files_logs_and_answers_errors(monkeypatch, tmp_path):
    node = run_main(monkeypatch, [text("hello", question_id="q"), text("。")], {
        "PRIMESPEECH_MODEL_DIR": str(tmp_path), "PRIMESPEECH_VOICES_FILE": str(tmp_path / "missing.json"),
        "PRIMESPEECH_ENCODER_BACKEND": "coreml", "TOP_K": "zero"})
    assert [v for _, v in answers(node)] == ["error", "skipped", "empty"]
    assert node.of("segment_complete")[0][1]["question_id"] == "q"
    assert str(tmp_path) in node.of("segment_complete")[0][1]["error"]
    errors = logs(node, "ERROR")
    assert any("invalid TOP_K" in line for line in errors)
    assert any("PRIMESPEECH_VOICES_FILE ignored" in line for line in errors)
    assert any("PRIMESPEECH_ENCODER_BACKEND=coreml cannot be used here" in line for line in errors)
    assert any("'Doubao' could not be loaded" in line for line in errors)
    assert statuses(node)[0]["state"] == "error"


def test_main_survives_an_engine_that_cannot_be_built(monkeypatch, tmp_path):
    from dora_primespeech_mlx import engine

    def broken(*args, **kwargs):
        raise OSError("libmlx.so: cannot open shared object file")

    monkeypatch.setattr(engine, "Synthesizer", broken)
    node = run_main(monkeypatch, [text("hello", question_id="q")], {"PRIMESPEECH_MODEL_DIR": str(tmp_path)})
    assert answers(node) == [("segment_complete", "error")]
    assert "OSError: libmlx.so" in node.of("segment_complete")[0][1]["error"]
    assert any("failed to start" in line for line in logs(node, "ERROR"))


def test_main_outside_a_dataflow_says_what_to_do(monkeypatch, capsys):
    import dora

    def no_daemon(*args, **kwargs):
        raise RuntimeError("could not connect")

    monkeypatch.setattr(dora, "Node", no_daemon)
    assert main_module.main() == 1
    assert "dora run" in capsys.readouterr().err


def test_a_heartbeat_status_is_sent_while_busy():
    engine = StubSynthesizer(on_segment=lambda index: time.sleep(0.12))
    config, _ = NodeConfig.from_env({})
    node = RecordingNode([text("One. Two. Three.")])
    TTSNode(node, config, engine, heartbeat_seconds=0.05).run()
    beats = [s for s in statuses(node) if s["event"] == "heartbeat"]
    assert len(beats) >= 3
    assert {(b["state"], b["activity"]) for b in beats} == {("busy", "synthesising")}
    assert answers(node) == [("audio", None), ("segment_complete", "completed")]
    # heartbeats stop with the work: nothing after the request's status
    assert [s["event"] for s in statuses(node)][-2:] == ["request", "stop"]


# ------------------------------------------------------------------- status events (README's contract)
def test_unknown_voice_control_sends_an_error_status_and_keeps_the_voice():
    node, engine = run([control("voice:NoSuchVoice"), text("after.")])
    change, = [s for s in statuses(node) if s["event"] == "voice_change"]
    assert (change["state"], change["voice"]) == ("error", "Doubao")
    assert "unknown voice 'NoSuchVoice'" in change["error"]
    assert any(line.startswith("voice:NoSuchVoice: unknown voice") for line in logs(node, "ERROR"))
    assert engine.calls[0][2].name == "Doubao"
    assert answers(node) == [("audio", None), ("segment_complete", "completed")]
    request, = [s for s in statuses(node) if s["event"] == "request"]
    assert (request["state"], request["error"]) == ("ready", None)


def test_a_voice_control_that_fails_to_load_leaves_the_node_ready():
    node, engine = run([control("voice:Broken"), text("after.")])
    assert [(s["event"], s["state"], s["voice"]) for s in statuses(node)] == [
        ("start", "ready", "Doubao"), ("voice_change", "error", "Doubao"), ("request", "ready", "Doubao"),
        ("stop", "stopped", "Doubao")]
    assert "'Broken' could not be loaded" in statuses(node)[1]["error"]
    assert [s["error"] for s in statuses(node)[2:]] == [None, None]
    assert engine.calls[0][2].name == "Doubao"


def test_a_voice_control_without_an_engine_sends_an_error_status():
    node, _ = run([control("voice:Maple")], engine=None, startup_error="model folder missing")
    change, = [s for s in statuses(node) if s["event"] == "voice_change"]
    assert change["state"] == "error" and "model folder missing" in change["error"]
    assert any(line.startswith("voice:Maple:") for line in logs(node, "ERROR"))


def test_a_voice_control_repairs_a_voice_that_failed_at_start():
    node, engine = run([control("voice:Maple"), text("hello.")], env={"VOICE_NAME": "Broken"})
    assert [(s["event"], s["state"], s["voice"]) for s in statuses(node)] == [
        ("start", "error", "Broken"), ("voice_change", "ready", "Maple"), ("request", "ready", "Maple"),
        ("stop", "stopped", "Maple")]
    assert statuses(node)[1]["error"] is None
    assert engine.calls[0][2].name == "Maple" and answers(node)[-1] == ("segment_complete", "completed")


def test_a_request_status_follows_every_text_whatever_its_answer():
    events = [text("a.", question_id="a"), text("b.", question_id="b"), control("cancel"), text("。"),
              text("RAISE_PS"), text("c.")]
    node, _ = run(events)
    finals = [d.to_pylist()[0] for d, _ in node.of("segment_complete") if d.to_pylist()[0] != "skipped"]
    assert finals == ["cancelled", "cancelled", "empty", "error", "completed"]
    requests = [s for s in statuses(node) if s["event"] == "request"]
    assert [s["requests"] for s in requests] == [1, 2, 3, 4, 5]
    # each text's request status comes after its answer
    order = [oid if oid != "status" else json.loads(d[0].as_py())["event"] for oid, d, _ in node.sent
             if oid in ("segment_complete", "status")]
    assert order[-2:] == ["request", "stop"]
    assert order.count("request") == 5 and order.index("request") > order.index("segment_complete")


def test_the_stop_status_is_sent_even_when_the_loop_is_interrupted():
    def interrupt(index):
        raise KeyboardInterrupt

    config, _ = NodeConfig.from_env({})
    node = RecordingNode([text("one.")])
    with pytest.raises(KeyboardInterrupt):
        TTSNode(node, config, StubSynthesizer(on_segment=interrupt)).run()
    assert [s["event"] for s in statuses(node)] == ["start", "stop"]


class SlowLoading(StubSynthesizer):
    def warmup(self, voice):
        time.sleep(0.15)
        super().warmup(voice)


def test_heartbeats_while_a_voice_loads_at_start_and_on_a_switch():
    config, _ = NodeConfig.from_env({})
    node = RecordingNode([control("voice:Maple")])
    TTSNode(node, config, SlowLoading(), heartbeat_seconds=0.04).run()
    events = [(s["event"], s.get("activity")) for s in statuses(node)]
    start, change = events.index(("start", None)), events.index(("voice_change", None))
    assert ("heartbeat", "loading voice 'Doubao'") in events[:start]
    assert ("heartbeat", "loading voice 'Maple'") in events[start:change]
    assert {e for e, _ in events[change:]} == {"voice_change", "stop"}


# -------------------------------------------------------------------------- unspeakable text dropped
@pytest.mark.parametrize("streaming", [False, True])
def test_dropped_unspeakable_text_is_a_warning_and_the_rest_is_spoken(streaming):
    env = {"RETURN_FRAGMENT": "true"} if streaming else {}
    node, engine = run([text("Привет, world. Two and مرحبا.", question_id="q"), text("plain.")], env=env)
    warnings = logs(node, "WARNING")
    assert len(warnings) == 1
    assert "dropped unspeakable text: 'Привет', 'مرحبا'" in warnings[0] and "'q'" in warnings[0]
    assert [v for oid, v in answers(node) if oid == "segment_complete"] == ["completed", "completed"]
    assert len(node.of("audio")) == (3 if streaming else 2)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_text_with_nothing_speakable_is_skipped_then_empty(streaming):
    env = {"RETURN_FRAGMENT": "true"} if streaming else {}
    node, _ = run([text("Привет!", question_id="q", session_status="s")], env=env)
    assert answers(node) == [("segment_complete", "skipped"), ("segment_complete", "empty")]
    assert [m for _, m in node.of("segment_complete")] == [{"question_id": "q", "session_status": "s"}] * 2
    assert logs(node, "WARNING") == ["dropped unspeakable text: 'Привет' (question 'q'); nothing else to speak: "
                                     "answered skipped + empty"]


# --------------------------------------------------------------- one terminal answer per text
TERMINAL = ("completed", "error", "cancelled", "empty")


def per_text(node):
    """question_id -> (audio metadata list, segment_complete values), in the order sent."""
    out: dict = {}
    for oid, data, meta in node.sent:
        if oid in ("audio", "segment_complete"):
            audio, done = out.setdefault(meta["question_id"], ([], []))
            if oid == "audio":
                audio.append((data.values.to_numpy(), meta))
            else:
                done.append(data.to_pylist()[0])
    return out


@pytest.mark.parametrize("value, answer, pieces", [
    ("One. Two. Three.", "completed", 3),
    ("One. Two FAIL_HERE. Three.", "error", 1),
    ("FAIL_HERE.", "error", 0),
    ("One. NAN_AUDIO.", "error", 1),
    ("One. NO_AUDIO.", "completed", 2),  # an empty last piece: a short silent fragment carries the flag
    ("One. Two. NO_LAST", "error", 3),  # the engine never said which piece was the last
    ("RAISE_RT", "error", 0),
    ("EMPTY_ENGINE", "empty", 0),
])
@pytest.mark.parametrize("streaming", [False, True])
def test_each_text_gets_exactly_one_terminal_answer(value, answer, pieces, streaming):
    env = {"RETURN_FRAGMENT": "true"} if streaming else {}
    if not streaming and "NO_LAST" in value:
        answer = "completed"  # `synthesize` returns one whole Result: there is no last piece to miss
    node, _ = run([text(value, question_id="q"), text("after.", question_id="next")], env=env)
    texts = per_text(node)
    assert set(texts) == {"q", "next"}
    for qid, expected in (("q", answer), ("next", "completed")):
        audio, done = texts[qid]
        assert [v for v in done if v in TERMINAL] == [expected] and done[-1] == expected
        if not streaming:
            assert len(audio) == (expected == "completed")
            assert all("is_last_fragment" not in meta for _, meta in audio)
            continue
        if qid == "q":
            assert len(audio) == pieces
        assert [meta["fragment_index"] for _, meta in audio] == list(range(len(audio)))
        # is_last_fragment: true only on the final fragment of a completed text
        flags = [meta["is_last_fragment"] for _, meta in audio]
        assert flags == [False] * (len(audio) - 1) + [True] if expected == "completed" else not any(flags)
    if streaming and value == "One. NO_AUDIO.":
        samples, meta = texts["q"][0][-1]
        assert not samples.any() and 0 < meta["duration"] <= 0.05


def test_a_cancel_after_the_last_fragment_leaves_the_text_completed():
    node, _, _ = run_staged([text("Only one.", question_id="a"), PAUSE, control("cancel")],
                            env={"RETURN_FRAGMENT": "true"})
    assert answers(node) == [("audio", None), ("segment_complete", "completed")]
    assert node.of("audio")[0][1]["is_last_fragment"] is True


# ------------------------------------------- issue 14: audio metadata, payload adjustments, SSML, memory
STREAM = {"RETURN_FRAGMENT": "true"}
APPLIED_DEFAULT = {"speed": 1.1, "pitch": 0.0, "volume": 100.0}  # Doubao's own speed, no effects


def added(meta):
    return {k: meta[k] for k in ADDED if k in meta}


def dominant_hz(samples):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum)) * SAMPLE_RATE / len(samples)


def test_batch_audio_metadata_is_final_with_one_fragment():
    node, _ = run([text("One. Two.", question_id="q")])
    (data, meta), = node.of("audio")
    check_audio(data, meta, {"question_id": "q", "session_status": "unknown"})
    assert added(meta) == {"is_final": True, "fragment_total": 1, "is_silence": False, **APPLIED_DEFAULT}
    assert "fragment_index" not in meta and "is_last_fragment" not in meta


def test_streaming_audio_metadata_marks_the_final_fragment():
    node, _ = run([text("One. Two. Three.")], env=STREAM)
    metas = [meta for _, meta in node.of("audio")]
    assert [m["is_final"] for m in metas] == [m["is_last_fragment"] for m in metas] == [False, False, True]
    assert [m.get("fragment_total") for m in metas] == [None, None, 3]  # known only once the last is sent
    assert all(m["is_silence"] is False and {k: m[k] for k in APPLIED_DEFAULT} == APPLIED_DEFAULT for m in metas)


def test_streaming_failure_leaves_no_fragment_final():
    node, _ = run([text("One. Two FAIL_HERE.")], env=STREAM)
    assert answers(node) == [("audio", None), ("segment_complete", "error")]
    assert node.of("audio")[0][1]["is_final"] is False and "fragment_total" not in node.of("audio")[0][1]


@pytest.mark.parametrize("payload, speed", [
    ({"prompt": "One.", "speed": 1.5}, 1.5),
    ({"prompt": "One.", "speed": 7}, 2.0),
    ({"prompt": {"prompt": "One.", "speed": 0.2}}, 0.5),
    ({"prompt": json.dumps({"prompt": {"prompt": "One.", "speed": 1.25}})}, 1.25),
    ({"prompt": "One."}, 1.1),
])
@pytest.mark.parametrize("streaming", [False, True])
def test_payload_speed_goes_to_the_engine_and_is_echoed(payload, speed, streaming):
    node, engine = run([text(json.dumps(payload))], env=STREAM if streaming else {})
    assert engine.calls[0][1] == "One." and engine.calls[0][3].speed == pytest.approx(speed)
    (_, meta), = node.of("audio")
    assert (meta["speed"], meta["pitch"], meta["volume"]) == (pytest.approx(speed), 0.0, 100.0)


def test_payload_speed_replaces_speed_factor():
    node, engine = run([text('{"prompt": "One.", "speed": 0.9}'), text("Two.")], env={"SPEED_FACTOR": "1.3"})
    assert [c[3].speed for c in engine.calls] == [0.9, 1.3]
    assert [m["speed"] for _, m in node.of("audio")] == [0.9, 1.3]


@pytest.mark.parametrize("raw, error", [
    ('{"prompt": "One.", "speed": "fast"}', 'the "speed" field must be a number, got "fast"'),
    ('{"prompt": {"prompt": "One.", "pitch": [1]}}', 'the "pitch" field must be a number, got [1]'),
    ('{"prompt": "One.", "volume": true}', 'the "volume" field must be a number, got true'),
    ('{"prompt": {"prompt": {"prompt": {"prompt": "One."}}}}', "at most 2 levels deep"),
])
def test_bad_payload_fields_are_answered_with_an_error(raw, error):
    node, engine = run([text(raw, question_id="bad"), text("after.", question_id="ok")])
    assert answers(node) == [("segment_complete", "error"), ("audio", None), ("segment_complete", "completed")]
    assert error in node.of("segment_complete")[0][1]["error"]
    assert [c[1] for c in engine.calls] == ["after."]


@pytest.mark.parametrize("volume, gain", [(50, 0.5), (0, 0.0), (100, 1.0), (150, 1.5), (300, 2.0)])
def test_volume_is_a_clipped_gain(volume, gain):
    node, engine = run([text(json.dumps({"prompt": "One.", "volume": volume}))])
    (data, meta), = node.of("audio")
    expected = np.clip(tone("One.", engine.registry.get("Doubao")) * np.float32(gain), -1.0, 32767 / 32768)
    np.testing.assert_allclose(data.values.to_numpy(), expected, atol=1e-7)
    assert data.values.to_numpy().max() < 1.0 and meta["volume"] == min(volume, 200)


@pytest.mark.parametrize("streaming", [False, True])
def test_pitch_shift_moves_the_pitch_and_keeps_the_length(streaming):
    sentence = "a" * 200 + "."  # long enough for the phase vocoder
    node, engine = run([text(json.dumps({"prompt": sentence, "pitch": 12, "volume": 200}))],
                       env=STREAM if streaming else {})
    (data, meta), = node.of("audio")
    shifted = data.values.to_numpy()
    original = tone(sentence, engine.registry.get("Doubao"))
    assert shifted.shape == original.shape and shifted.dtype == np.float32
    assert dominant_hz(shifted) == pytest.approx(2 * dominant_hz(original), rel=0.03)  # an octave up
    assert shifted.max() < 1.0 and shifted.min() >= -1.0
    assert (meta["pitch"], meta["volume"]) == (12.0, 200.0)


def test_pitch_without_librosa_is_answered_with_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "librosa", None)  # import librosa -> ImportError
    node, engine = run([text('{"prompt": "One.", "pitch": 2}'), text('{"prompt": "Two.", "volume": 50}')])
    assert answers(node) == [("segment_complete", "error"), ("audio", None), ("segment_complete", "completed")]
    error = node.of("segment_complete")[0][1]["error"]
    assert "needs librosa" in error and "pip install 'dora-primespeech-mlx[pitch]'" in error
    assert [c[1] for c in engine.calls] == ["Two."]  # failed before synthesis


SSML = '<speak>One.<break time="500ms"/><prosody rate="150%">Two.</prosody></speak>'


def test_ssml_in_batch_mode_is_one_audio_with_the_break_as_silence():
    node, engine = run([text(SSML, question_id="q")])
    assert answers(node) == [("audio", None), ("segment_complete", "completed")]
    doubao = engine.registry.get("Doubao")
    (data, meta), = node.of("audio")
    check_audio(data, meta, {"question_id": "q", "session_status": "unknown"},
                samples=np.concatenate([tone("One.", doubao), np.zeros(16000, np.float32), tone("Two.", doubao)]))
    assert added(meta) == {"is_final": True, "fragment_total": 1, "is_silence": False, **APPLIED_DEFAULT}
    assert [(c[1], c[3].speed) for c in engine.calls] == [("One.", 1.1), ("Two.", pytest.approx(1.65))]


def test_ssml_streaming_sends_each_break_as_a_silence_fragment():
    node, engine = run([text(SSML)], env=STREAM)
    assert answers(node) == [("audio", None)] * 3 + [("segment_complete", "completed")]
    fragments = node.of("audio")
    silence = fragments[1][0].values.to_numpy()
    assert silence.shape == (16000,) and not silence.any()
    metas = [m for _, m in fragments]
    assert [m["fragment_index"] for m in metas] == [0, 1, 2]
    assert [m["is_silence"] for m in metas] == [False, True, False]
    assert [m["is_final"] for m in metas] == [m["is_last_fragment"] for m in metas] == [False, False, True]
    assert [m.get("fragment_total") for m in metas] == [None, None, 3]
    assert [m["speed"] for m in metas] == [1.1, 1.1, 1.65]  # each fragment echoes its span's speed
    assert metas[1]["duration"] == 0.5


def test_ssml_ending_with_a_break_ends_with_the_silence_fragment():
    node, _ = run([text('<speak>One. Two.<break time="1s"/></speak>')], env=STREAM)
    metas = [m for _, m in node.of("audio")]
    assert [(m["is_silence"], m["is_final"]) for m in metas] == [(False, False), (False, False), (True, True)]
    assert metas[-1]["duration"] == 1.0 and metas[-1]["fragment_total"] == 3
    node, _ = run([text('<speak>One.<break time="1s"/></speak>')])
    assert node.of("audio")[0][1]["duration"] == pytest.approx(640 / SAMPLE_RATE + 1.0)


@pytest.mark.parametrize("streaming", [False, True])
def test_ssml_sentences_and_paragraphs_are_separate_engine_calls(streaming):
    node, engine = run([text("<speak><p><s>Hello there</s><s>good bye</s></p></speak>")],
                       env=STREAM if streaming else {})
    assert [c[1] for c in engine.calls] == ["Hello there", "good bye"]
    assert answers(node)[-1] == ("segment_complete", "completed")


@pytest.mark.parametrize("streaming", [False, True])
def test_malformed_ssml_is_answered_with_where(streaming):
    node, engine = run([text("<speak>One.<break time='soon'/></speak>", question_id="bad"),
                        text("<speak>unclosed", question_id="bad2"), text("ok.", question_id="ok")],
                       env=STREAM if streaming else {})
    done = [(m["question_id"], d.to_pylist()[0], m.get("error")) for d, m in node.of("segment_complete")]
    assert done[0][:2] == ("bad", "error") and done[0][2].startswith("malformed SSML at line 1, column 12: <break>")
    assert done[1][:2] == ("bad2", "error") and done[1][2].startswith("malformed SSML at line 1, column 16")
    assert done[2][:2] == ("ok", "completed") and [c[1] for c in engine.calls] == ["ok."]


def test_ssml_with_only_breaks_is_empty():
    node, engine = run([text('<speak><break time="1s"/><s>。</s></speak>')])
    assert answers(node) == [("segment_complete", "skipped"), ("segment_complete", "empty")]
    assert engine.calls == []


@pytest.mark.parametrize("streaming", [False, True])
def test_an_ssml_span_with_nothing_speakable_is_skipped(streaming):
    node, engine = run([text('<speak><s>EMPTY_ENGINE</s><break time="100ms"/><s>Two.</s></speak>')],
                       env=STREAM if streaming else {})
    assert answers(node)[-1] == ("segment_complete", "completed")
    assert any("nothing speakable in the span 'EMPTY_ENGINE'" in line for line in logs(node, "WARNING"))
    samples = np.concatenate([d.values.to_numpy() for d, _ in node.of("audio")])
    np.testing.assert_array_equal(samples, np.concatenate([np.zeros(3200, np.float32),
                                                           tone("Two.", engine.registry.get("Doubao"))]))


def test_an_empty_last_ssml_span_after_audio_is_closed_by_a_short_silence():
    node, _ = run([text("<speak><s>One.</s><s>EMPTY_ENGINE</s></speak>")], env=STREAM)
    metas = [m for _, m in node.of("audio")]
    assert [(m["is_final"], m["is_silence"]) for m in metas] == [(False, False), (True, True)]
    assert metas[-1]["duration"] <= 0.05 and answers(node)[-1] == ("segment_complete", "completed")
    node, _ = run([text("<speak><s>EMPTY_ENGINE</s></speak>")], env=STREAM)  # nothing at all: empty
    assert answers(node) == [("segment_complete", "skipped"), ("segment_complete", "empty")]


def test_status_and_stats_report_memory():
    node, _ = run([text("One."), control("stats")])
    for status in statuses(node):
        assert type(status["rss_mb"]) is float and status["rss_mb"] > 10  # this test process
        assert type(status["mlx_peak_mb"]) is float and status["mlx_peak_mb"] >= 0
    assert any("resident memory" in line and "MB, MLX peak memory" in line for line in logs(node, "INFO"))
    node, _ = run([text("One.")], engine=None, startup_error="no models")
    assert statuses(node)[0]["mlx_peak_mb"] is None and statuses(node)[0]["rss_mb"] > 10


# -- Japanese, Korean and Cantonese through the real engine on the random-weight test voice (issue 16) -------
@pytest.fixture(scope="module")
def cjk_engine():
    from dora_primespeech_mlx.engine import Synthesizer
    from dora_primespeech_mlx.voices import VoiceRegistry
    from primespeech_devtools.oracle.voice import shared_test_voice

    files = shared_test_voice()
    engine = Synthesizer(files.model_root, registry=VoiceRegistry(files.model_root))
    engine.registry.default_voice = "test"  # VOICE:CUSTOM clones with the default voice's weights
    return engine, files


@pytest.fixture
def cleaned(monkeypatch):
    """The (language, text) of every clean_text call of the pipeline."""
    from dora_primespeech_mlx.text import preprocess

    calls, real = [], preprocess.clean_text
    monkeypatch.setattr(preprocess, "clean_text", lambda t, lang, *a, **k: calls.append((lang, t)) or real(t, lang, *a, **k))
    return calls


def _spoken(node) -> int:
    assert answers(node) == [("audio", None), ("segment_complete", "completed")]
    assert not logs(node, "ERROR")
    (data, meta), = node.of("audio")
    assert data.type == AUDIO_TYPE and meta["sample_rate"] == SAMPLE_RATE
    return len(data[0].values)


@pytest.mark.parametrize("lang, value", [("ja", "今日はいい天気ですね。"), ("ko", "오늘 날씨가 정말 좋네요."),
                                         ("yue", "今日天氣好好呀。")])
def test_text_lang_japanese_korean_cantonese(cjk_engine, cleaned, lang, value):
    engine, files = cjk_engine
    env = {"VOICE_NAME": "test", "TEXT_LANG": lang, "PRIMESPEECH_MODEL_DIR": str(files.model_root)}
    node, _ = run([text(value, question_id="q")], env=env, engine=engine)
    assert _spoken(node) > SAMPLE_RATE // 10
    assert (lang, value) in cleaned  # the text went through that language's frontend


def test_custom_voice_with_a_japanese_reference(cjk_engine, cleaned):
    engine, files = cjk_engine
    env = {"VOICE_NAME": "test", "PRIMESPEECH_MODEL_DIR": str(files.model_root)}
    node, _ = run([text(f"VOICE:CUSTOM|{files.ref_audio}|これはテストの声です。|ja|こんにちは、世界。")],
                  env=env, engine=engine)
    assert _spoken(node) > SAMPLE_RATE // 10
    assert ("ja", "これはテストの声です。") in cleaned  # the reference transcript, read as Japanese
    assert any(lang == "ja" and "こんにちは" in chunk for lang, chunk in cleaned)  # the text: TEXT_LANG=auto
