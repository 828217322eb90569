"""Shared pieces of the example dataflows' helper nodes: reading texts, waiting for answers, JSON-safe metadata.

The nodes are scripts beside the dataflows that run them (`path: python`, `args: nodes/<name>.py`: dora
starts each node in its dataflow's folder), not part of the installed package:
- `text_sender.py`: sends text lines to a TTS node, one at a time, waiting for each `segment_complete`.
- `segmenter.py`: a stand-in for mofa-studio's multi-text-segmenter: a script of "speaker: text" lines
  sent to several TTS nodes, each released by the previous line's `segment_complete` and `audio_complete`.
- `recorder.py`: a stand-in for the audio player: writes the received audio to a WAV file, answers each
  audio message with `audio_complete`, and writes a JSON summary of everything it received.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# segment_complete values that end a text ("skipped" is always followed by "empty")
TERMINAL = ("completed", "empty", "error", "cancelled")


def read_lines(text_var: str, file_var: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """Non-empty lines of $text_var, else of the file named by $file_var."""
    env = os.environ if environ is None else environ
    raw = env.get(text_var)
    if raw is None and env.get(file_var):
        raw = Path(os.path.expanduser(env[file_var])).read_text("utf-8")
    if raw is None:
        raise SystemExit(f"set {text_var} (text, one message per line) or {file_var} (a file of such lines)")
    # a literal "\n" in a one-line YAML value separates messages too
    lines = [line.strip() for line in raw.replace("\\n", "\n").splitlines()]
    return [line for line in lines if line]


def plain(value: Any) -> Any:
    """Metadata value in a JSON-friendly form (dora adds a datetime `timestamp`)."""
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def wait_for_answer(node: Any, want_audio_ack: bool = False) -> str:
    """Block until the text in flight is answered: its terminal segment_complete value, and for a
    "completed" one also an `audio_complete` when `want_audio_ack`. Returns "closed" when no answer can
    come any more (no inputs connected, or the TTS side went away) and "stopped" on a manual stop."""
    answer = None
    acks = 0
    while True:
        event = node.next()
        if event is None:
            return answer or "closed"
        kind = event.get("type")
        if kind == "STOP" and event.get("id") != "ALL_INPUTS_CLOSED":
            return "stopped"
        if kind != "INPUT":
            continue
        input_id = event.get("id", "")
        if input_id.startswith("segment_complete"):
            value = event["value"][0].as_py() if len(event["value"]) else None
            if value in TERMINAL:
                answer = value
        elif input_id.startswith("audio_complete"):
            acks += 1
        if answer is not None and (answer != "completed" or not want_audio_ack or acks > 0):
            return answer


def send_paced(node: Any, messages: list[tuple[str, str, dict[str, Any], str]], want_audio_ack: bool = False) -> None:
    """Send (output, text, metadata, label) messages in order, each after the previous one is answered
    (see `wait_for_answer`); once no answer can come any more, the rest go out at once. A manual stop
    ends it."""
    import pyarrow as pa

    paced = True
    for index, (output, text, metadata, label) in enumerate(messages):
        node.send_output(output, pa.array([text]), metadata)
        if paced:
            answer = wait_for_answer(node, want_audio_ack=want_audio_ack)
            logger.info("%s %d/%d: %s", label, index + 1, len(messages), answer)
            if answer == "stopped":
                return
            paced = answer != "closed"
