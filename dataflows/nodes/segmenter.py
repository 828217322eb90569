"""A stand-in for mofa-studio's multi-text-segmenter: a script of "speaker: text" lines.

Environment: SCRIPT (lines "speaker: text"; a literal "\\n" also separates) or SCRIPT_FILE;
QUESTION_ID (default "1"). Each line goes to the output `text_segment_<speaker>` (declare one per
speaker). The next line waits until the previous one is answered: a terminal value on any input named
`segment_complete*` (from the TTS nodes) and, for "completed", an `audio_complete` from the player
stand-in — the flow control mofa-studio's player applies to each audio message.
"""

from __future__ import annotations

import logging
import os
import sys

from _common import read_lines, send_paced

logger = logging.getLogger(__name__)


def parse_script(lines: list[str]) -> list[tuple[str, str]]:
    """[(speaker, text)] from "speaker: text" lines."""
    script = []
    for line in lines:
        speaker, sep, text = line.partition(":")
        if not sep or not speaker.strip() or " " in speaker.strip():
            raise SystemExit(f"script line {line!r}: expected 'speaker: text'")
        script.append((speaker.strip(), text.strip()))
    return script


def main() -> int:
    from dora import Node

    script = parse_script(read_lines("SCRIPT", "SCRIPT_FILE"))
    question_id = os.environ.get("QUESTION_ID", "1")
    last = len(script) - 1
    send_paced(Node(), [(f"text_segment_{speaker}", text, {
        "question_id": question_id, "session_id": f"{speaker}-{question_id}",
        "session_status": "ended" if index == last else "streaming", "segment_index": index},
        f"line ({speaker})") for index, (speaker, text) in enumerate(script)], want_audio_ack=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
