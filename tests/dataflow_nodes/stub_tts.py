"""Test-only Dora node: the real TTSNode loop and config under a real `dora run`, with the stub engine.

Used by tests/test_dataflow.py in place of `dora-primespeech` to exercise the dataflows' plumbing
(sender, recorder, env expansion, dora's event order, try_recv, arrow types) without model weights.
STUB_SEGMENT_SECONDS makes each sentence take that long, so that control messages arrive mid-text.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dora import Node  # noqa: E402
from node_stub import StubSynthesizer  # noqa: E402

from dora_primespeech_mlx.config import NodeConfig  # noqa: E402
from dora_primespeech_mlx.node import TTSNode  # noqa: E402


def main() -> None:
    delay = float(os.environ.get("STUB_SEGMENT_SECONDS", "0"))
    config, problems = NodeConfig.from_env(os.environ)
    engine = StubSynthesizer(on_segment=lambda index: time.sleep(delay))
    TTSNode(Node(), config, engine, problems=problems).run()


if __name__ == "__main__":
    main()
