"""Test-only Dora node: sends BURST_TEXTS ("|"-separated) at once, then `cancel` on `control` after
CANCEL_AFTER seconds, then AFTER_TEXT; exits once every text has a terminal segment_complete."""

import os
import time

import pyarrow as pa
from dora import Node

TERMINAL = ("completed", "empty", "error", "cancelled")


def main() -> None:
    node = Node()
    texts = os.environ["BURST_TEXTS"].split("|")
    for i, text in enumerate(texts):
        node.send_output("text", pa.array([text]), {"question_id": f"burst-{i}"})
    time.sleep(float(os.environ.get("CANCEL_AFTER", "0.5")))
    node.send_output("control", pa.array(["cancel"]), {})
    node.send_output("text", pa.array([os.environ["AFTER_TEXT"]]), {"question_id": "after"})
    answered = 0
    while answered < len(texts) + 1:
        event = node.next(timeout=30)
        if event is None or event["type"] == "ERROR":
            break
        if event["type"] == "INPUT" and event["value"][0].as_py() in TERMINAL:
            answered += 1


if __name__ == "__main__":
    main()
