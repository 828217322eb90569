"""The message protocol alone: the VOICE: grammar, JSON payloads, punctuation-only text, control commands
and every output format, without a node, an engine or dora."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dora_primespeech_mlx import protocol
from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.protocol import (
    BadInput,
    Control,
    CustomVoice,
    DefaultVoice,
    NamedVoice,
    TextRequest,
    TrainedVoice,
)


def arrow(value: str) -> pa.Array:
    return pa.array([value])


def test_the_module_is_pure():
    tree = ast.parse(Path(protocol.__file__).read_text("utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    assert imported <= {"__future__", "json", "math", "re", "collections.abc", "dataclasses", "pathlib", "typing",
                        "xml.parsers", "numpy", "pyarrow", ".errors", ".voices"}


# ------------------------------------------------------------------------------------- VOICE: grammar
@pytest.mark.parametrize("message, spec, text", [
    ("hello.", DefaultVoice(), "hello."),
    ("", DefaultVoice(), ""),
    ("voice:Maple|lower-case prefix is text", DefaultVoice(), "voice:Maple|lower-case prefix is text"),
    (" VOICE:Maple|a leading space is text", DefaultVoice(), " VOICE:Maple|a leading space is text"),
    ("VOICE:Maple|hi.", NamedVoice("Maple"), "hi."),
    ("VOICE: Luo Xiang |你好。", NamedVoice("Luo Xiang"), "你好。"),
    ("VOICE:Maple|a|b", NamedVoice("Maple"), "a|b"),
    ("VOICE:Maple|", NamedVoice("Maple"), ""),
    ("VOICE:custom|lower-case CUSTOM is a voice name", NamedVoice("custom"),
     "lower-case CUSTOM is a voice name"),
    ("VOICE:CUSTOM|/r.wav|参考|zh|你好|世界", CustomVoice("/r.wav", "参考", "zh"), "你好|世界"),
    ("VOICE:CUSTOM| /r.wav |p| EN |", CustomVoice(" /r.wav ", "p", " EN "), ""),
    ("VOICE:TRAINED|g.ckpt|s.pth|/r.wav|p|en|Speech|more", TrainedVoice("g.ckpt", "s.pth", "/r.wav", "p", "en"),
     "Speech|more"),
])
def test_voice_prefix_forms(message, spec, text):
    assert protocol.split_voice_prefix(message) == (spec, text)


@pytest.mark.parametrize("message, expected", [
    ("VOICE:hello", "expected VOICE:<voice name>|<text>"),
    ("VOICE:|text", "expected VOICE:<voice name>|<text>"),
    ("VOICE:   |text", "expected VOICE:<voice name>|<text>"),
    ("VOICE:", "expected VOICE:<voice name>|<text>"),
    ("VOICE:CUSTOM", "expected VOICE:<voice name>|<text>"),
    ("VOICE:CUSTOM|a|b|zh", "bad VOICE:CUSTOM message: expected " + protocol.CUSTOM_SYNTAX),
    ("VOICE:CUSTOM|", "bad VOICE:CUSTOM message"),
    ("VOICE:TRAINED|a|b|c|d|zh", "bad VOICE:TRAINED message: expected " + protocol.TRAINED_SYNTAX),
    ("VOICE:TRAINED|a", "bad VOICE:TRAINED message"),
])
def test_malformed_voice_prefixes(message, expected):
    with pytest.raises(BadInput) as info:
        protocol.split_voice_prefix(message)
    assert expected in str(info.value)
    assert isinstance(info.value, PrimeSpeechError)


@pytest.mark.parametrize("lang, known", [("zh", "zh"), (" EN ", "en"), ("ja", "ja"), ("Auto", "auto"),
                                         ("fr", None), ("klingon", None), ("", None)])
def test_custom_lang(lang, known):
    assert protocol.custom_lang(lang) == known


def test_reference_and_weights_paths(tmp_path, monkeypatch):
    clip = tmp_path / "ref.wav"
    clip.write_bytes(b"RIFF")
    assert protocol.reference_path(f"  {clip} ") == clip
    monkeypatch.setenv("HOME", str(tmp_path))
    assert protocol.reference_path("~/ref.wav") == clip
    with pytest.raises(BadInput, match="must be an absolute path, got 'ref.wav'"):
        protocol.reference_path("ref.wav")
    with pytest.raises(BadInput, match="reference audio not found"):
        protocol.reference_path(str(tmp_path / "missing.wav"))
    assert protocol.weights_path(f" {clip} ", "GPT checkpoint") == clip
    with pytest.raises(BadInput, match="VOICE:TRAINED: SoVITS weights not found: nope.pth"):
        protocol.weights_path(" nope.pth ", "SoVITS weights")


# ---------------------------------------------------------------------------------------- text input
@pytest.mark.parametrize("raw, prompt", [
    (json.dumps({"prompt": "from the bridge."}), "from the bridge."),
    ('  {"prompt": "spaces before"}', "spaces before"),
    (json.dumps({"prompt": "VOICE:Maple|hi.", "other": 1}), "VOICE:Maple|hi."),
    (json.dumps({"prompt": ""}), ""),
    ("{not json", "{not json"),
    ("{", "{"),
    ('["prompt"]', '["prompt"]'),
    ("42", "42"),
    ("plain { braces }", "plain { braces }"),
])
def test_json_prompt_payloads(raw, prompt):
    assert protocol.unwrap_json_prompt(raw) == prompt


@pytest.mark.parametrize("raw", ['{"prompt": 3}', '{"prompt": null}', '{"prompt": ["a"]}', '{"text": "no prompt"}',
                                 "{}"])
def test_json_payload_without_a_string_prompt_is_bad_input(raw):
    with pytest.raises(BadInput, match='needs a string "prompt" field'):
        protocol.unwrap_json_prompt(raw)


@pytest.mark.parametrize("value, why", [
    (pa.array([1, 2]), "text must be a pyarrow StringArray, got an array of int64"),
    (pa.array([], pa.string()), "text is an empty array"),
    (pa.array([b"bytes"]), "got an array of binary"),
    (pa.array([None], pa.string()), "text element 0 is null"),
    ("not arrow", "text must be a pyarrow StringArray, got str"),
    (None, "got NoneType"),
])
def test_string_value_rejects_everything_but_a_string_array(value, why):
    with pytest.raises(BadInput, match=why):
        protocol.string_value(value, "text")


def test_string_value_takes_element_zero_of_string_arrays():
    assert protocol.string_value(pa.array(["a", "b"]), "text") == "a"
    assert protocol.string_value(pa.array(["large"], pa.large_string()), "text") == "large"


def test_parse_text_combines_payload_prefix_and_limit():
    request = protocol.parse_text(arrow(json.dumps({"prompt": "VOICE:Maple|hello."})), max_chars=10)
    assert request == TextRequest(text="hello.", voice=NamedVoice("Maple")) and request.speakable
    assert protocol.parse_text(arrow("VOICE:Maple|" + "x" * 10), max_chars=10).text == "x" * 10
    with pytest.raises(BadInput, match=r"text too long: 11 characters \(limit 10, PRIMESPEECH_MAX_TEXT_CHARS\)"):
        protocol.parse_text(arrow("x" * 11), max_chars=10)
    assert not protocol.parse_text(arrow("VOICE:Maple|。"), max_chars=10).speakable
    with pytest.raises(BadInput, match="expected VOICE:"):
        protocol.parse_text(arrow("VOICE:hello"), max_chars=10)


@pytest.mark.parametrize("text", ["", " ", "\n\t", "。！？", "...", ",，、；：", "\"'“”‘’", "（）【】《》",
                                  " 。.,!?\"' "])
def test_punctuation_only_text_is_not_speakable(text):
    assert not protocol.is_speakable(text)


@pytest.mark.parametrize("text", ["a", "。a", "…", "1", "你", "-", "~"])
def test_anything_else_is_speakable(text):
    assert protocol.is_speakable(text)


# ------------------------------------------------------------------------------------- control input
@pytest.mark.parametrize("command, control", [
    ("reset", Control("reset")), (" RESET ", Control("reset")), ("Stats", Control("stats")),
    ("stop", Control("cancel", "stop")), (" Cancel ", Control("cancel", "cancel")),
    ("voice:Maple", Control("voice", "Maple")), ("VOICE: Luo Xiang ", Control("voice", "Luo Xiang")),
    ("voice:", Control("voice", "")),
    ("dance", Control("unknown", "dance")), ("  Dance  ", Control("unknown", "Dance")),
    ("stop now", Control("unknown", "stop now")),
])
def test_control_commands(command, control):
    assert protocol.parse_control(arrow(command)) == control


def test_malformed_controls():
    with pytest.raises(BadInput, match="control must be a pyarrow StringArray"):
        protocol.parse_control(pa.array([3]))
    assert protocol.is_cancel(arrow(" STOP ")) and protocol.is_cancel(arrow("cancel"))
    assert not protocol.is_cancel(arrow("reset")) and not protocol.is_cancel(pa.array([3]))
    assert not protocol.is_cancel(None)


# ------------------------------------------------------------------------------------------- outputs
def test_audio_message():
    samples = np.linspace(-0.5, 0.5, 320, dtype=np.float32)
    meta = {"question_id": "q", "session_status": "started", "segment_index": 2, "session_id": "s",
            "extra": "not passed on", "timestamp": 1}
    output, value, metadata = protocol.audio_message(samples, meta, 32000)
    assert output == "audio"
    assert type(value) is pa.ListArray and value.type == pa.list_(pa.float32()) and len(value) == 1
    np.testing.assert_array_equal(value.values.to_numpy(), samples)
    assert metadata == {"question_id": "q", "session_status": "started", "sample_rate": 32000, "duration": 0.01,
                        "session_id": "s", "segment_index": 2}
    assert type(metadata["sample_rate"]) is int and type(metadata["duration"]) is float
    _, _, streamed = protocol.audio_message(samples, {}, np.int64(16000), fragment_index=3, is_last_fragment=1)
    assert streamed == {"question_id": "default", "session_status": "unknown", "sample_rate": 16000,
                        "duration": 0.02, "fragment_index": 3, "is_last_fragment": True}
    assert type(streamed["sample_rate"]) is int


def test_audio_samples_and_the_closing_fragment():
    np.testing.assert_array_equal(protocol.audio_samples([[0.5, -0.5]]), np.array([0.5, -0.5], np.float32))
    assert protocol.audio_samples(np.zeros(0), allow_empty=True).dtype == np.float32
    with pytest.raises(PrimeSpeechError, match="empty audio"):
        protocol.audio_samples(np.zeros(0))
    with pytest.raises(PrimeSpeechError, match="NaN or infinite"):
        protocol.audio_samples(np.array([0.0, np.inf]))
    closing = protocol.closing_fragment(32000)
    assert closing.dtype == np.float32 and closing.shape == (320,) and not closing.any()
    assert protocol.closing_fragment(10).shape == (1,)


META = {"question_id": 5, "session_status": "ended", "segment_index": 2, "custom": "kept", "timestamp": "t"}


@pytest.mark.parametrize("state, metadata", [
    ("completed", {"question_id": 5, "session_status": "ended"}),
    ("skipped", {"question_id": 5, "session_status": "ended"}),
    ("cancelled", {"question_id": 5, "session_status": "ended"}),
    ("empty", {"question_id": 5, "session_status": "ended", "segment_index": 2, "custom": "kept"}),
])
def test_segment_complete(state, metadata):
    output, value, meta = protocol.segment_complete(state, META)
    assert output == "segment_complete" and meta == metadata
    assert isinstance(value, pa.StringArray) and value.to_pylist() == [state]


def test_segment_complete_defaults_and_errors():
    assert protocol.segment_complete("completed", {}).metadata == {"question_id": "default",
                                                                   "session_status": "unknown"}
    assert protocol.segment_complete("empty", {}).metadata == {}
    error = protocol.segment_complete("error", META, error="it broke")
    assert error.value.to_pylist() == ["error"]
    assert error.metadata == {"question_id": 5, "session_status": "error", "error": "it broke",
                              "error_stage": "synthesis"}
    assert protocol.segment_complete("error", {}, error="x").metadata["question_id"] == "default"
    with pytest.raises(ValueError, match="needs its error message"):
        protocol.segment_complete("error", META)
    with pytest.raises(ValueError, match="unknown segment_complete state 'done'"):
        protocol.segment_complete("done", META)


def test_log_message():
    output, value, metadata = protocol.log_message("WARNING", "dropped 'Привет'")
    assert output == "log" and isinstance(value, pa.StringArray) and len(value) == 1
    assert metadata == {"node": "primespeech-tts", "level": "WARNING", "message": "dropped 'Привет'"}
    assert json.loads(value[0].as_py()) == metadata and "Привет" in value[0].as_py()


def test_status_message():
    fields = dict(voice="Doubao", device="cpu", encoder_backend="mlx", streaming=False, queue_depth=2,
                  last_rtf=0.123456, requests=7, error=None)
    output, value, metadata = protocol.status_message("request", "ready", **fields)
    status = json.loads(value[0].as_py())
    assert output == "status" and isinstance(value, pa.StringArray) and len(value) == 1
    assert status == {"node": "primespeech-tts", "event": "request", "state": "ready", "voice": "Doubao",
                      "device": "cpu", "encoder_backend": "mlx", "streaming": False, "queue_depth": 2,
                      "last_rtf": 0.1235, "requests": 7, "error": None}
    assert list(status)[:3] == ["node", "event", "state"]
    assert metadata == {k: v for k, v in status.items() if v is not None} and "error" not in metadata
    beat = protocol.status_message("heartbeat", "busy", **dict(fields, last_rtf=None, voice=None),
                                   extra={"activity": "synthesising", "elapsed": 30.1})
    status = json.loads(beat.value[0].as_py())
    assert (status["last_rtf"], status["voice"], status["activity"], status["elapsed"]) == (
        None, None, "synthesising", 30.1)
    assert "last_rtf" not in beat.metadata and beat.metadata["activity"] == "synthesising"


@pytest.mark.parametrize("exc, text", [
    (PrimeSpeechError("voice 'X' is not installed"), "voice 'X' is not installed"),
    (PrimeSpeechError(""), "PrimeSpeechError"),
    (BadInput(" bad "), "bad"),
    (RuntimeError("boom"), "RuntimeError: boom"),
    (KeyError("missing"), "KeyError: 'missing'"),
    (ValueError(), "ValueError"),
])
def test_error_text(exc, text):
    assert protocol.error_text(exc) == text


# ------------------------------------------------------------------- payload speed / pitch / volume
Adjustments = protocol.Adjustments


@pytest.mark.parametrize("payload, adjustments", [
    ({"prompt": "a"}, Adjustments()),
    ({"prompt": "a", "speed": 1.5}, Adjustments(speed=1.5)),
    ({"prompt": "a", "speed": 1}, Adjustments(speed=1.0)),
    ({"prompt": "a", "speed": 0.5}, Adjustments(speed=0.5)),
    ({"prompt": "a", "speed": 2.0}, Adjustments(speed=2.0)),
    ({"prompt": "a", "speed": 0.1}, Adjustments(speed=0.5)),  # clamped
    ({"prompt": "a", "speed": 9}, Adjustments(speed=2.0)),
    ({"prompt": "a", "speed": -1}, Adjustments(speed=0.5)),
    ({"prompt": "a", "pitch": 3}, Adjustments(pitch=3.0)),
    ({"prompt": "a", "pitch": -4.5}, Adjustments(pitch=-4.5)),
    ({"prompt": "a", "pitch": 12}, Adjustments(pitch=12.0)),
    ({"prompt": "a", "pitch": -12}, Adjustments(pitch=-12.0)),
    ({"prompt": "a", "pitch": 13}, Adjustments(pitch=12.0)),
    ({"prompt": "a", "pitch": -40}, Adjustments(pitch=-12.0)),
    ({"prompt": "a", "volume": 50}, Adjustments(volume=50.0)),
    ({"prompt": "a", "volume": 0}, Adjustments(volume=0.0)),
    ({"prompt": "a", "volume": 200}, Adjustments(volume=200.0)),
    ({"prompt": "a", "volume": 250}, Adjustments(volume=200.0)),
    ({"prompt": "a", "volume": -5}, Adjustments(volume=0.0)),
    ({"prompt": "a", "speed": 1.2, "pitch": 2, "volume": 80}, Adjustments(1.2, 2.0, 80.0)),
    ({"prompt": "a", "speed": None, "pitch": None, "volume": None}, Adjustments()),  # null: absent
    ({"prompt": "a", "emotion": "happy", "speed_factor": "x", "voice": 3}, Adjustments()),  # unknown: ignored
])
def test_payload_fields_and_ranges(payload, adjustments):
    assert protocol.parse_payload(json.dumps(payload)) == ("a", adjustments)


@pytest.mark.parametrize("field, value, why", [
    ("speed", "1.5", 'the "speed" field must be a number, got "1.5"'),
    ("speed", True, 'the "speed" field must be a number, got true'),
    ("speed", [1], 'the "speed" field must be a number, got [1]'),
    ("pitch", {"st": 2}, 'the "pitch" field must be a number, got {"st": 2}'),
    ("pitch", "high", 'the "pitch" field must be a number, got "high"'),
    ("volume", "loud", 'the "volume" field must be a number, got "loud"'),
    ("volume", False, 'the "volume" field must be a number, got false'),
])
def test_payload_fields_of_the_wrong_type_are_bad_input(field, value, why):
    with pytest.raises(BadInput) as info:
        protocol.parse_payload(json.dumps({"prompt": "a", field: value}))
    assert str(info.value) == why
    with pytest.raises(BadInput, match=f'the "{field}" field must be a number'):  # nested too
        protocol.parse_payload(json.dumps({"prompt": {"prompt": "a", field: value}}))


@pytest.mark.parametrize("raw", ['{"prompt": "a", "speed": NaN}', '{"prompt": "a", "pitch": Infinity}',
                                 '{"prompt": "a", "volume": -Infinity}'])
def test_non_finite_payload_numbers_are_bad_input(raw):
    with pytest.raises(BadInput, match="must be a finite number"):
        protocol.parse_payload(raw)


@pytest.mark.parametrize("payload, prompt, adjustments", [
    # one level: the prompt is an object, or a string holding one (the bridge wrapping a payload again)
    ({"prompt": {"prompt": "a", "speed": 1.5}}, "a", Adjustments(speed=1.5)),
    ({"prompt": json.dumps({"prompt": "a", "pitch": 2})}, "a", Adjustments(pitch=2.0)),
    # two levels
    ({"prompt": {"prompt": {"prompt": "a", "volume": 20}}}, "a", Adjustments(volume=20.0)),
    ({"prompt": json.dumps({"prompt": json.dumps({"prompt": "a", "speed": 0.7})})}, "a", Adjustments(speed=0.7)),
    ({"prompt": {"prompt": json.dumps({"prompt": "a"}), "pitch": -3}}, "a", Adjustments(pitch=-3.0)),
    # fields from every level; an outer one wins, an outer null does not hide an inner one
    ({"prompt": {"prompt": "a", "speed": 0.6, "pitch": 1}, "speed": 1.4}, "a", Adjustments(speed=1.4, pitch=1.0)),
    ({"prompt": {"prompt": {"prompt": "a", "volume": 30}, "volume": 40}, "volume": None}, "a",
     Adjustments(volume=40.0)),
    # a string prompt that is JSON but no wrapped payload is the text itself
    ({"prompt": '{"text": "x"}'}, '{"text": "x"}', Adjustments()),
    ({"prompt": "{not json"}, "{not json", Adjustments()),
    ({"prompt": "[1, 2]"}, "[1, 2]", Adjustments()),
    ({"prompt": json.dumps({"prompt": "VOICE:Maple|hi."}), "speed": 1.1}, "VOICE:Maple|hi.", Adjustments(1.1)),
])
def test_nested_payloads(payload, prompt, adjustments):
    assert protocol.parse_payload(json.dumps(payload)) == (prompt, adjustments)
    assert protocol.unwrap_json_prompt(json.dumps(payload)) == prompt


@pytest.mark.parametrize("payload, why", [
    ({"prompt": {"prompt": {"prompt": {"prompt": "a"}}}}, 'nests "prompt" objects at most 2 levels deep'),
    ({"prompt": json.dumps({"prompt": json.dumps({"prompt": json.dumps({"prompt": "a"})})})},
     "at most 2 levels deep"),
    ({"prompt": {"text": "no prompt"}}, 'needs a string "prompt" field'),
    ({"prompt": {"prompt": 3}}, 'needs a string "prompt" field'),
    ({"prompt": {"prompt": {"prompt": None}}}, 'needs a string "prompt" field'),
    ({"prompt": {}}, 'needs a string "prompt" field'),
])
def test_malformed_nesting_is_bad_input(payload, why):
    with pytest.raises(BadInput, match=why):
        protocol.parse_payload(json.dumps(payload))


def test_plain_text_has_no_adjustments():
    for raw in ("plain", "{not json", "42", '["a"]'):
        assert protocol.parse_payload(raw) == (raw, Adjustments())


def test_parse_text_carries_the_adjustments():
    raw = json.dumps({"prompt": {"prompt": "VOICE:Maple|hello.", "speed": 3, "pitch": -2, "volume": 150}})
    request = protocol.parse_text(arrow(raw), max_chars=100)
    assert request == TextRequest(text="hello.", voice=NamedVoice("Maple"),
                                  adjustments=Adjustments(speed=2.0, pitch=-2.0, volume=150.0))
    assert request.parts == (protocol.Speech("hello."),)
    with pytest.raises(BadInput, match='"speed" field must be a number'):
        protocol.parse_text(arrow('{"prompt": "x", "speed": "fast"}'), max_chars=100)


@pytest.mark.parametrize("base, adjustments, rate, speed", [
    (1.1, Adjustments(), 1.0, 1.1),  # nothing asked: the configured speed, as it is
    (3.0, Adjustments(), 1.0, 3.0),  # even outside SPEED_RANGE (SPEED_FACTOR allows 0.1-5)
    (1.1, Adjustments(speed=1.0), 1.0, 1.0),  # the payload's speed replaces the voice's
    (1.1, Adjustments(speed=1.5), 1.0, 1.5),
    (1.1, Adjustments(), 1.5, 1.65),  # an SSML rate multiplies the configured speed ...
    (1.0, Adjustments(speed=0.8), 1.25, 1.0),  # ... or the payload's
    (1.1, Adjustments(speed=2.0), 1.5, 2.0),  # and the result is clamped
    (1.1, Adjustments(), 0.25, 0.5),
    (3.0, Adjustments(), 1.2, 2.0),
])
def test_effective_speed(base, adjustments, rate, speed):
    assert protocol.effective_speed(base, adjustments, rate) == pytest.approx(speed)


# ------------------------------------------------------------------------------ audio metadata, memory
def test_audio_message_with_the_added_fields():
    samples = np.zeros(320, np.float32)
    applied = protocol.applied_metadata(1.0999999, Adjustments(speed=None, pitch=-2, volume=50))
    assert applied == {"speed": 1.1, "pitch": -2.0, "volume": 50.0}
    batch = protocol.audio_message(samples, {"question_id": "q"}, 32000, is_final=True, fragment_total=1,
                                   is_silence=False, applied=applied).metadata
    assert batch == {"question_id": "q", "session_status": "unknown", "sample_rate": 32000, "duration": 0.01,
                     "is_final": True, "fragment_total": 1, "is_silence": False, "speed": 1.1, "pitch": -2.0,
                     "volume": 50.0}
    fragment = protocol.audio_message(samples, {}, 32000, fragment_index=2, is_last_fragment=False,
                                      is_final=False, is_silence=1, applied=applied).metadata
    assert fragment["is_silence"] is True and fragment["is_final"] is False and "fragment_total" not in fragment
    assert (fragment["fragment_index"], fragment["is_last_fragment"]) == (2, False)
    last = protocol.audio_message(samples, {}, 32000, fragment_index=3, is_last_fragment=True, is_final=True,
                                  fragment_total=np.int64(4)).metadata
    assert type(last["fragment_total"]) is int and last["fragment_total"] == 4 and "speed" not in last


def test_silence():
    assert protocol.silence(0.5, 32000).shape == (16000,) and protocol.silence(0.5, 32000).dtype == np.float32
    assert not protocol.silence(0.25, 32000).any() and protocol.silence(0.0, 32000).shape == (0,)


def test_memory_report_and_text():
    memory = protocol.memory_report(300 * 2 ** 20 + 2 ** 19, None)
    assert memory == {"rss_mb": 300.5, "mlx_peak_mb": None}
    assert protocol.memory_text(memory) == "resident memory 300.5 MB, MLX peak memory unknown"
    assert protocol.memory_text(protocol.memory_report(0, 2 ** 30)) == ("resident memory 0.0 MB, "
                                                                         "MLX peak memory 1024.0 MB")
    status = protocol.status_message("start", "ready", voice="Doubao", device="cpu", encoder_backend="mlx",
                                     streaming=False, queue_depth=0, last_rtf=None, requests=0, error=None,
                                     memory=memory, extra={"activity": "x"})
    record = json.loads(status.value[0].as_py())
    assert list(record)[-3:] == ["rss_mb", "mlx_peak_mb", "activity"]
    assert record["rss_mb"] == 300.5 and record["mlx_peak_mb"] is None and "mlx_peak_mb" not in status.metadata


@pytest.mark.parametrize("samples", [np.linspace(-1, 1, 7, dtype=np.float32), np.zeros(0, np.float32),
                                     np.arange(6, dtype=np.float64).reshape(2, 3)[:, ::2]])
def test_arrays_built_from_buffers_equal_pa_array(samples):
    flat = np.asarray(samples, np.float32).reshape(-1)
    built = protocol.audio_array(samples)
    built.validate(full=True)
    assert built.equals(pa.array([flat], type=pa.list_(pa.float32())))
    for text in ("", "completed", "说 «Привет» 🎵"):
        built = protocol.string_array(text)
        built.validate(full=True)
        assert built.equals(pa.array([text])) and built.to_pylist() == [text]


def test_messages_never_call_pa_array(monkeypatch):
    """pa.array() of Python objects imports pandas wherever it is installed (0.3-0.7 s at the first
    status): every output is built without it."""
    def refuse(*args, **kwargs):
        raise AssertionError("pa.array called")

    monkeypatch.setattr(protocol.pa, "array", refuse)
    fields = dict(voice="v", device="cpu", encoder_backend="mlx", streaming=False, queue_depth=0,
                  last_rtf=None, requests=0, error=None)
    messages = [protocol.audio_message(np.ones(4, np.float32), {}, 32000), protocol.segment_complete("completed", {}),
                protocol.log_message("INFO", "x"), protocol.status_message("start", "ready", **fields)]
    assert [m.output for m in messages] == ["audio", "segment_complete", "log", "status"]
