"""Sends text to a TTS node, one message per line, each after the previous one is answered.

Environment: TEXT (one message per line; a literal "\\n" also separates) or TEXT_FILE; QUESTION_ID
(default "1"). Output `text` (StringArray, metadata question_id, session_id, session_status,
segment_index). When an input `segment_complete` is connected, the next line waits for the answer to
the previous one, as mofa-studio's text segmenter does; otherwise all lines are sent at once.
"""

from __future__ import annotations

import logging
import os
import sys

from _common import read_lines, send_paced

logger = logging.getLogger(__name__)


def session_status(index: int, count: int) -> str:
    if index == count - 1:
        return "ended"
    return "started" if index == 0 else "streaming"


def main() -> int:
    from dora import Node

    lines = read_lines("TEXT", "TEXT_FILE")
    question_id = os.environ.get("QUESTION_ID", "1")
    send_paced(Node(), [("text", line, {
        "question_id": question_id, "session_id": f"say-{question_id}",
        "session_status": session_status(index, len(lines)), "segment_index": index}, "text")
        for index, line in enumerate(lines)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
