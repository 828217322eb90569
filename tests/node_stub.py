"""A stub Synthesizer with the engine's interface, and a recording MockNode, for the node's unit tests.

The stub speaks deterministic sine tones (one piece per sentence) and misbehaves on request, driven by
markers in the text: RAISE_PS (PrimeSpeechError), RAISE_RT (RuntimeError), RAISE_KEY (KeyError),
EMPTY_ENGINE (EmptyTextError), NAN_AUDIO, NO_AUDIO (in a sentence: that piece), FAIL_HERE (a sentence
that raises PrimeSpeechError after the sentences before it were yielded), NO_LAST (no piece is marked
last). Like the engine's frontend it drops Cyrillic and Arabic runs as unspeakable, reporting them in
`dropped` on the first Result (EmptyTextError when nothing else is left). It uses the engine module's
own types (Result, EmptyTextError, Cancelled) and the real voices.Voice.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from dora.testing import MockNode

from dora_primespeech_mlx.engine import Cancelled, EmptyTextError, Result
from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.voices import Voice

SAMPLE_RATE = 32000
SAMPLES_PER_CHAR = 160
UNSPEAKABLE = re.compile(r"[\u0400-\u04ff\u0600-\u06ff]+")  # Cyrillic, Arabic
VOICES = {"Doubao": ("zh", 1.1), "Luo Xiang": ("zh", 1.1), "Maple": ("en", 1.0), "Broken": ("zh", 1.1)}


def _voice(name: str, root: Path, lang: str, speed: float) -> Voice:
    stem = name.lower().replace(" ", "")
    return Voice(name=name, gpt_path=root / f"{stem}.ckpt", sovits_path=root / f"{stem}.pth",
                 ref_audio=root / f"{stem}.wav", prompt_text=f"prompt of {name}", prompt_lang=lang,
                 text_lang=lang, speed=speed)


class StubRegistry:
    """The registry interface over a fixed set of names; "Broken" fails to load."""

    def __init__(self, root: Path = Path("/stub")):
        self.root = root
        self.custom_calls: list[tuple] = []

    def names(self) -> list[str]:
        return list(VOICES)

    def get(self, name: str) -> Voice:
        for known, (lang, speed) in VOICES.items():
            if known.lower().replace(" ", "") == name.lower().replace(" ", ""):
                return _voice(known, self.root, lang, speed)
        raise PrimeSpeechError(f"unknown voice {name!r}; known: {', '.join(VOICES)}")

    def installed(self, name: str) -> bool:
        return self.get(name).name != "Broken"

    def custom(self, ref_audio, prompt_text, prompt_lang, gpt_path=None, sovits_path=None) -> Voice:
        self.custom_calls.append((ref_audio, prompt_text, prompt_lang, gpt_path, sovits_path))
        base = self.get("Doubao")
        return Voice(name="TRAINED" if gpt_path else "CUSTOM", gpt_path=Path(gpt_path or base.gpt_path),
                     sovits_path=Path(sovits_path or base.sovits_path), ref_audio=Path(ref_audio),
                     prompt_text=prompt_text, prompt_lang=prompt_lang, text_lang=prompt_lang, speed=1.1)


def tone(text: str, voice: Voice) -> np.ndarray:
    """The stub's deterministic audio for one sentence: a sine whose pitch depends on the voice."""
    n = max(1, len(text)) * SAMPLES_PER_CHAR
    freq = 200.0 + 50.0 * (sum(map(ord, voice.name)) % 7)
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / SAMPLE_RATE)).astype(np.float32)


class StubSynthesizer:
    """Engine interface; records every call; one segment per sentence; polls should_cancel between them."""

    device = "cpu"
    encoder_backend = "mlx"

    def __init__(self, on_segment=None):
        self.registry = StubRegistry()
        self.calls: list[tuple[str, str, Voice, Any]] = []
        self.loaded: list[str] = []
        self.on_segment = on_segment  # callback(index) run before each segment

    def load_voice(self, voice: Voice) -> None:
        if voice.name == "Broken":
            raise PrimeSpeechError(f"voice {voice.name!r} is not installed: missing {voice.gpt_path}")
        self.loaded.append(voice.name)

    def warmup(self, voice: Voice) -> None:
        self.load_voice(voice)

    def _pieces(self, text: str, voice: Voice, options: Any, should_cancel):
        self.load_voice(voice)
        if "RAISE_PS" in text:
            raise PrimeSpeechError("stub engine failure")
        if "RAISE_RT" in text:
            raise RuntimeError("stub runtime failure")
        if "RAISE_KEY" in text:
            raise KeyError("missing")
        if "EMPTY_ENGINE" in text:
            raise EmptyTextError("the text has no phonemes")
        dropped = tuple(UNSPEAKABLE.findall(text))
        text = UNSPEAKABLE.sub("", text)
        if not any(ch.isalnum() for ch in text):
            error = EmptyTextError(f"nothing speakable left after dropping {dropped}")
            error.dropped = dropped  # as engine.EmptyTextError carries them
            raise error
        sentences = [s for s in re.split(r"(?<=[.!?。！？])\s*", text) if s.strip()]
        for index, sentence in enumerate(sentences):
            if should_cancel is not None and should_cancel():
                raise Cancelled("cancelled at a segment boundary")
            if self.on_segment is not None:
                self.on_segment(index)
            if "FAIL_HERE" in sentence:
                raise PrimeSpeechError("stub failure in the middle of the text")
            audio = tone(sentence, voice)
            if "NAN_AUDIO" in sentence:
                audio[3] = np.nan
            if "NO_AUDIO" in sentence:
                audio = np.zeros(0, np.float32)
            result = Result(audio=audio, sample_rate=SAMPLE_RATE, segment_index=index,
                            is_last=index == len(sentences) - 1 and "NO_LAST" not in text, text=sentence,
                            timings={"total": 0.01}, real_time_factor=0.25)
            if index == 0 and dropped:
                result.dropped = dropped  # engine.Result's field (set like this while it may not exist yet)
            yield result

    def synthesize(self, text: str, voice: Voice, options: Any, should_cancel=None) -> Any:
        self.calls.append(("synthesize", text, voice, options))
        pieces = list(self._pieces(text, voice, options, should_cancel))
        audio = np.concatenate([p.audio for p in pieces]) if pieces else np.zeros(0, np.float32)
        result = Result(audio=audio, sample_rate=SAMPLE_RATE, segment_index=0, is_last=True, text=text,
                        timings={"total": 0.01}, real_time_factor=0.25)
        dropped = getattr(pieces[0], "dropped", ()) if pieces else ()
        if dropped:
            result.dropped = dropped
        return result

    def stream(self, text: str, voice: Voice, options: Any, should_cancel=None):
        self.calls.append(("stream", text, voice, options))
        yield from self._pieces(text, voice, options, should_cancel)


class RecordingNode(MockNode):
    """MockNode that also keeps every output in order with its metadata: `sent` = [(id, data, metadata)]."""

    def __init__(self, inputs, *args, fail_outputs: tuple[str, ...] = (), **kwargs):
        super().__init__(inputs, *args, **kwargs)
        self.sent: list[tuple[str, Any, dict]] = []
        self.fail_outputs = fail_outputs

    def send_output(self, output_id, data, metadata=None):
        if output_id in self.fail_outputs:
            raise RuntimeError(f"output {output_id} is closed")
        super().send_output(output_id, data, metadata)
        self.sent.append((output_id, data, dict(metadata or {})))

    def of(self, output_id: str) -> list[tuple[Any, dict]]:
        return [(data, meta) for oid, data, meta in self.sent if oid == output_id]


PAUSE = object()  # in StagedNode inputs: the events after it arrive only when release() is called


class StagedNode(RecordingNode):
    """A RecordingNode whose events arrive in stages, to deliver events while a text is being spoken.

    `try_recv()` returns nothing past a PAUSE until `release()`; a blocking read releases by itself.
    """

    def __init__(self, inputs, **kwargs):
        flat, gates = [], []
        for event in inputs:
            if event is PAUSE:
                gates.append(len(flat))
            else:
                flat.append(event)
        super().__init__(flat, **kwargs)
        self._gates = gates
        self._given = 0

    def _allowed(self) -> bool:
        return not self._gates or self._given < self._gates[0]

    def release(self) -> None:
        if self._gates:
            self._gates.pop(0)

    def try_recv(self):
        if not self._allowed():
            return None
        event = super().try_recv()
        if event is not None:
            self._given += 1
        return event

    def __next__(self):
        while not self._allowed():
            self.release()
        event = super().__next__()
        self._given += 1
        return event
