"""The SSML subset of the protocol module: what is SSML, each element, rates, breaks and malformed input
(answered with the line and column)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from dora_primespeech_mlx import protocol
from dora_primespeech_mlx.protocol import BadInput, Pause, Speech


def ssml(body: str) -> tuple:
    return protocol.parse_ssml(f"<speak>{body}</speak>")


@pytest.mark.parametrize("text, expected", [
    ("<speak>hi</speak>", True),
    ('  \n<speak version="1.0">hi</speak>', True),
    ("<speak/>", True),
    ("<speaker>hi</speaker>", False),
    ("hello <speak>hi</speak>", False),
    ("<s>no speak root</s>", False),
    ("<?xml version='1.0'?><speak>hi</speak>", False),
    ("plain text < 3", False),
    ("", False),
])
def test_only_text_starting_with_speak_is_ssml(text, expected):
    assert protocol.is_ssml(text) is expected


def test_plain_text_is_untouched():
    for raw in ("a <b>not ssml</b> & more", "<speaker> said: <break/>", "  spaces  kept  "):
        request = protocol.parse_text(pa.array([raw]), max_chars=100)
        assert request.text == raw and request.pieces is None and request.parts == (Speech(raw),)


# -------------------------------------------------------------------------------------- elements
def test_speak_alone_and_its_attributes_ignored():
    text = ('<speak version="1.0" xmlns="http://www.w3.org/2001/10/synthesis" xml:lang="zh-CN">'
            "你好，世界。</speak>")
    assert protocol.parse_ssml(text) == (Speech("你好，世界。"),)
    assert protocol.parse_ssml("<speak/>") == ()
    assert protocol.parse_ssml("<speak>  \n </speak>") == ()


def test_whitespace_runs_become_one_space_and_entities_are_text():
    assert ssml("\n  Hello,\n\tworld &amp; you &lt;3  ") == (Speech("Hello, world & you <3"),)


@pytest.mark.parametrize("attribute, seconds", [
    ('time="500ms"', 0.5),
    ('time="0ms"', 0.0),
    ('time="1.5s"', 1.5),
    ('time="2S"', 2.0),
    ('time=" 250 ms "', 0.25),
    ('time=".5s"', 0.5),
    ('time="10s"', 10.0),
    ('time="60s"', protocol.MAX_BREAK_SECONDS),  # clamped
    ('time="200000ms"', protocol.MAX_BREAK_SECONDS),
    ("", 0.75),  # SSML's default strength, medium
    ('strength="none"', 0.0),
    ('strength="x-weak"', 0.25),
    ('strength="weak"', 0.5),
    ('strength="strong"', 1.0),
    ('strength="X-STRONG"', 1.25),
    ('strength="weak" time="2s"', 2.0),  # time wins
])
def test_break_durations(attribute, seconds):
    assert ssml(f"a<break {attribute}/>b") == (Speech("a"), Pause(seconds), Speech("b"))


def test_breaks_at_the_ends_and_in_a_row():
    assert ssml('<break time="1s"/>a<break time="2s"></break><break time="3s"/>') == (
        Pause(1.0), Speech("a"), Pause(2.0), Pause(3.0))
    assert ssml('<break time="1s"/>') == (Pause(1.0),)


@pytest.mark.parametrize("rate, multiplier", [
    ("1.2", 1.2),
    ("0.8", 0.8),
    ("1", 1.0),
    ("2.", 2.0),
    ("120%", 1.2),
    ("50%", 0.5),
    ("100%", 1.0),
    ("+20%", 1.2),
    ("-20%", 0.8),
    ("+0%", 1.0),
    ("x-slow", 0.5),
    ("slow", 0.75),
    ("medium", 1.0),
    ("default", 1.0),
    ("Fast", 1.25),
    ("x-fast", 1.5),
    ("5", 2.0),  # clamped to SPEED_RANGE
    ("400%", 2.0),
    ("0.1", 0.5),
    ("10%", 0.5),
    ("-90%", 0.5),
])
def test_prosody_rates(rate, multiplier):
    assert protocol.parse_rate(rate) == pytest.approx(multiplier)
    assert ssml(f'a<prosody rate="{rate}">b</prosody>c') == (Speech("a"), Speech("b", pytest.approx(multiplier)),
                                                             Speech("c"))


@pytest.mark.parametrize("rate, why", [
    ("fastest", "is not a multiplier, a percentage or one of"),
    ("", "is not a multiplier"),
    ("1.2x", "is not a multiplier"),
    ("+0.2", "a signed rate must be a percentage"),
    ("0", "must be above zero"),
    ("0%", "must be above zero"),
    ("-100%", "must be above zero"),
    ("-150%", "must be above zero"),
])
def test_bad_prosody_rates(rate, why):
    with pytest.raises(ValueError, match=why):
        protocol.parse_rate(rate)
    with pytest.raises(BadInput, match=f"malformed SSML at line 1, column 8: <prosody>: .*{why}"):
        ssml(f'<prosody rate="{rate}">b</prosody>')


def test_nested_prosody_rates_multiply_and_other_attributes_are_ignored():
    pieces = ssml('<prosody rate="1.5">a<prosody rate="120%" pitch="+2st">b</prosody>c</prosody>'
                  '<prosody volume="loud">d</prosody>')
    assert pieces == (Speech("a", 1.5), Speech("b", pytest.approx(1.8)), Speech("c", 1.5), Speech("d", 1.0))
    assert ssml('<prosody rate="2">a<prosody rate="2">b</prosody></prosody>') == (Speech("a", 2.0),
                                                                                   Speech("b", 2.0))


def test_sentences_and_paragraphs_are_spans_of_their_own():
    assert ssml("<p><s>One</s><s>two</s></p><p>Three</p>") == (Speech("One"), Speech("two"), Speech("Three"))
    assert ssml("before<s>inside</s>after") == (Speech("before"), Speech("inside"), Speech("after"))
    assert ssml('<p>Rate <prosody rate="slow">inside <s>a sentence</s></prosody>.</p>') == (
        Speech("Rate"), Speech("inside", 0.75), Speech("a sentence", 0.75), Speech("."))


def test_a_full_document():
    text = ('<speak version="1.0" xml:lang="en-US">\n'
            '  <p>\n    <s>Welcome back.</s>\n    <break time="300ms"/>\n'
            '    <s><prosody rate="-25%">Take your time.</prosody></s>\n  </p>\n</speak>')
    assert protocol.parse_ssml(text) == (Speech("Welcome back."), Pause(0.3), Speech("Take your time.", 0.75))


def test_parse_text_with_ssml_after_a_voice_prefix_and_in_a_payload():
    request = protocol.parse_text(pa.array(['VOICE:Maple|<speak>Hi.<break time="1s"/>There.</speak>']),
                                  max_chars=100)
    assert request.voice == protocol.NamedVoice("Maple")
    assert request.parts == (Speech("Hi."), Pause(1.0), Speech("There."))
    assert request.speakable
    payload = '{"prompt": "<speak><prosody rate=\\"1.5\\">quick</prosody></speak>", "speed": 0.8}'
    request = protocol.parse_text(pa.array([payload]), max_chars=100)
    assert request.parts == (Speech("quick", 1.5),) and request.adjustments.speed == 0.8


@pytest.mark.parametrize("body", ["", '<break time="1s"/>', "<p>。</p>", "<s> ... </s><break/>"])
def test_ssml_with_nothing_to_say_is_not_speakable(body):
    request = protocol.parse_text(pa.array([f"<speak>{body}</speak>"]), max_chars=100)
    assert not request.speakable


# ----------------------------------------------------------------------------------- malformed
@pytest.mark.parametrize("text, where, why", [
    ("<speak>unclosed", "line 1, column 16", "no element found"),
    ("<speak><s>a</p></speak>", "line 1, column 14", "mismatched tag"),
    ("<speak>a</speak>trailing", "line 1, column 17", "junk after document element"),
    ("<speak>a & b</speak>", "line 1, column 11", "not well-formed"),
    ('<speak><break time="1s></speak>', "line 1, column 24", "not well-formed"),  # "<" in a value
    ("<speak>\nline two\n  <em>x</em></speak>", "line 3, column 3",
     "unsupported element <em> (supported: speak, break, prosody, s, p)"),
    ("<speak><audio src='x.wav'/></speak>", "line 1, column 8", "unsupported element <audio>"),
    ("<speak><speak>a</speak></speak>", "line 1, column 8", "<speak> inside <speak>"),
    ('<speak><break time="1s">text</break></speak>', "line 1, column 25", "<break> must be empty"),
    ('<speak><break><s>a</s></break></speak>', "line 1, column 15", "<break> must be empty"),
    ('<speak>a<break time="-1s"/></speak>', "line 1, column 9", '<break>: time="-1s" is not a duration'),
    ('<speak>a<break time="1 min"/></speak>', "line 1, column 9", "is not a duration"),
    ('<speak>a<break time="500"/></speak>', "line 1, column 9", "is not a duration"),
    ('<speak>a<break strength="huge"/></speak>', "line 1, column 9", 'strength="huge" is not one of'),
    ("<speak>\n\n    <prosody rate='warp'>a</prosody></speak>", "line 3, column 5", "<prosody>: rate="),
])
def test_malformed_ssml_says_where(text, where, why):
    with pytest.raises(BadInput) as info:
        protocol.parse_ssml(text)
    message = str(info.value)
    assert message.startswith(f"malformed SSML at {where}: ") and why in message


def test_malformed_ssml_is_bad_input_of_parse_text():
    with pytest.raises(BadInput, match="malformed SSML at line 1, column 16"):
        protocol.parse_text(pa.array(["<speak>unclosed"]), max_chars=100)
