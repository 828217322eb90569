"""A stand-in for the audio player: records audio to a WAV file and summarises everything received.

Inputs: any id starting with `audio` is audio (ListArray<float32> or a flat float array, metadata
sample_rate); ids starting with `segment_complete`, `status` and `log` are recorded. Each audio message
is answered on the output named by ACK_OUTPUT (e.g. `audio_complete`, as mofa-studio's player does).
When the inputs close (the TTS nodes have finished), it writes OUTPUT (16-bit PCM WAV, default
out/say.wav) and SUMMARY (JSON, default OUTPUT with .json): every message's input, value and metadata.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from _common import plain

logger = logging.getLogger(__name__)


def audio_samples(value: pa.Array) -> np.ndarray:
    """The float samples of an audio message (one list, or a flat array)."""
    if pa.types.is_list(value.type) or pa.types.is_large_list(value.type):
        return np.asarray(value.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return np.asarray(value.to_numpy(zero_copy_only=False), dtype=np.float32)


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM mono WAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(samples, -1.0, 32767 / 32768) * 32768).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())


class Recorder:
    """Collects messages; `finish()` writes the WAV and the summary."""

    def __init__(self, output: Path, summary: Path):
        self.output = output
        self.summary_path = summary
        self.chunks: list[np.ndarray] = []
        self.sample_rate: int | None = None
        self.summary: dict[str, Any] = {"wav": str(output), "audio": [], "segment_complete": [], "status": [],
                                        "log": [], "other": [], "problems": []}

    def add(self, input_id: str, value: Any, metadata: dict[str, Any]) -> bool:
        """Record one message; True when it was audio."""
        meta = plain(metadata)
        if input_id.startswith("audio"):
            samples = audio_samples(value)
            rate = int(metadata.get("sample_rate", 32000))
            if self.sample_rate is None:
                self.sample_rate = rate
            elif rate != self.sample_rate:
                self.summary["problems"].append(f"{input_id}: sample rate {rate} != {self.sample_rate}")
            self.chunks.append(samples)
            self.summary["audio"].append({"input": input_id, "type": str(value.type), "class": type(value).__name__,
                                          "length": len(value), "samples": int(samples.size),
                                          "peak": float(np.abs(samples).max()) if samples.size else 0.0,
                                          "metadata": meta})
            return True
        text = value[0].as_py() if isinstance(value, pa.Array) and len(value) else None
        entry = {"input": input_id, "type": str(getattr(value, "type", type(value).__name__)),
                 "value": text, "metadata": meta}
        for kind in ("segment_complete", "status", "log"):
            if input_id.startswith(kind):
                self.summary[kind].append(entry)
                break
        else:
            self.summary["other"].append(entry)
        return False

    def finish(self) -> None:
        samples = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        rate = self.sample_rate or 32000
        write_wav(self.output, samples, rate)
        self.summary.update(sample_rate=rate, seconds=samples.size / rate)
        self.summary_path.parent.mkdir(parents=True, exist_ok=True)
        self.summary_path.write_text(json.dumps(self.summary, ensure_ascii=False, indent=1), "utf-8")
        logger.info("wrote %s (%.2f s) and %s", self.output, samples.size / rate, self.summary_path)


def main() -> int:
    from dora import Node

    output = Path(os.path.expanduser(os.environ.get("OUTPUT", "out/say.wav")))
    summary = Path(os.path.expanduser(os.environ.get("SUMMARY", str(output.with_suffix(".json")))))
    ack_output = os.environ.get("ACK_OUTPUT", "").strip()
    recorder = Recorder(output, summary)
    node = Node()
    for event in node:
        kind = event["type"]
        if kind == "INPUT":
            metadata = dict(event.get("metadata") or {})
            if recorder.add(event["id"], event["value"], metadata) and ack_output:
                node.send_output(ack_output, pa.array(["completed"]), {
                    k: metadata[k] for k in ("question_id", "session_id", "segment_index") if k in metadata}
                    | {"input": event["id"]})
        elif kind == "STOP" and event.get("id") != "ALL_INPUTS_CLOSED":
            break
    recorder.finish()
    print(f"recorder: wrote {recorder.output} ({recorder.summary['seconds']:.2f} s of audio, "
          f"{len(recorder.summary['audio'])} audio messages)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
