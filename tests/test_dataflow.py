"""The dataflows under a real `dora run` (no daemon to start by hand).

Plumbing tests run the shipped YAML files with the TTS node's `path: dora-primespeech` swapped for
tests/dataflow_nodes/stub_tts.py: the real TTSNode loop and config inside dora, with the stub engine,
so sender, recorder, segmenter, env expansion, dora's event order, try_recv cancellation and the arrow
types on the wire are all exercised without model weights. The flows on the real engine are in
tests/test_dataflow_engine.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATAFLOWS = ROOT / "dataflows"
STUB_TTS = ROOT / "tests" / "dataflow_nodes" / "stub_tts.py"
BIN = Path(sys.executable).parent
TERMINAL = ("completed", "empty", "error", "cancelled")

pytestmark = pytest.mark.skipif(shutil.which("dora", path=str(BIN)) is None and shutil.which("dora") is None,
                                reason="the dora command (pip install dora-rs-cli) is not installed")


def dora_run(dataflow: Path, env: dict[str, str], timeout: float = 90, cwd: Path | None = None
             ) -> subprocess.CompletedProcess:
    """`dora run` (in cwd, default the dataflow's folder) with the test interpreter's bin folder first on
    PATH; fails the test on a non-zero exit."""
    full_env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env)
    full_env.pop("DORA_LOG_LEVEL", None)
    proc = subprocess.run([str(BIN / "dora") if (BIN / "dora").exists() else "dora", "run", str(dataflow)],
                          cwd=cwd or dataflow.parent, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"dora run failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def with_stub_tts(src: Path, dest_dir: Path) -> Path:
    """A copy of a dataflow (with the helper nodes it runs from nodes/) whose TTS nodes run the stub-engine node."""
    shutil.copytree(src.parent / "nodes", dest_dir / "nodes", dirs_exist_ok=True)
    text = src.read_text("utf-8")
    assert "    path: dora-primespeech\n" in text
    text = text.replace("    path: dora-primespeech\n", f"    path: python\n    args: {STUB_TTS}\n")
    dest = dest_dir / src.name
    dest.write_text(text, "utf-8")
    return dest


def summary(path: Path) -> dict:
    return json.loads(path.read_text("utf-8"))


def terminal_answers(data: dict) -> list[tuple[str, str]]:
    return [(e["metadata"].get("question_id"), e["value"]) for e in data["segment_complete"]
            if e["value"] in TERMINAL]


def check_wire_types(data: dict) -> None:
    """Audio is ListArray<float32> with one list; every other output is a one-value StringArray of JSON
    (status, log) or a word (segment_complete)."""
    for audio in data["audio"]:
        assert (audio["class"], audio["type"], audio["length"]) == ("ListArray", "list<item: float>", 1)
        assert audio["metadata"]["sample_rate"] == 32000 and audio["samples"] > 0
        assert abs(audio["metadata"]["duration"] - audio["samples"] / 32000) < 1e-9
        assert 0 < audio["peak"] < 1
    for kind in ("segment_complete", "status", "log"):
        for entry in data[kind]:
            assert entry["type"] == "string", entry
    for entry in data["log"]:
        record = json.loads(entry["value"])
        assert set(record) == {"node", "level", "message"}
        assert {k: entry["metadata"][k] for k in record} == record
    for entry in data["status"]:
        status = json.loads(entry["value"])
        assert {"state", "voice", "device", "encoder_backend", "queue_depth", "last_rtf"} <= set(status)


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 32000)
        return wav.getnframes() / wav.getframerate()


def test_say_flow(tmp_path):
    flow = with_stub_tts(DATAFLOWS / "say.yml", tmp_path)
    dora_run(flow, {"TEXT": "第一句。第二句！\\nSecond text.\\n。。", "OUTPUT_DIR": str(tmp_path / "out"),
                    "NAME": "hello"})
    data = summary(tmp_path / "out" / "hello.json")
    check_wire_types(data)
    assert len(data["audio"]) == 2  # one audio message per spoken text
    assert terminal_answers(data) == [("1", "completed"), ("1", "completed"), ("1", "empty")]
    assert [e["value"] for e in data["segment_complete"]] == ["completed", "completed", "skipped", "empty"]
    assert [a["metadata"]["segment_index"] for a in data["audio"]] == [0, 1]
    assert [a["metadata"]["session_status"] for a in data["audio"]] == ["started", "streaming"]
    empty = data["segment_complete"][-1]["metadata"]
    assert (empty["segment_index"], empty["session_id"], empty["session_status"]) == (2, "say-1", "ended")
    statuses = [json.loads(e["value"]) for e in data["status"]]
    assert [s["event"] for s in statuses] == ["start", "request", "request", "request", "stop"]
    assert all(s["state"] in ("ready", "stopped") for s in statuses)
    assert not [e for e in data["log"] if json.loads(e["value"])["level"] == "ERROR"]
    assert wav_seconds(tmp_path / "out" / "hello.wav") == pytest.approx(sum(a["samples"] for a in data["audio"])
                                                                         / 32000)


def test_streaming_flow(tmp_path):
    flow = with_stub_tts(DATAFLOWS / "streaming.yml", tmp_path)
    dora_run(flow, {"TEXT": "One. Two. Three.\\nFour. Five.", "OUTPUT_DIR": str(tmp_path)})
    data = summary(tmp_path / "streaming.json")
    check_wire_types(data)
    assert len(data["audio"]) == 5
    assert [a["metadata"]["fragment_index"] for a in data["audio"]] == [0, 1, 2, 0, 1]
    assert [a["metadata"]["is_last_fragment"] for a in data["audio"]] == [False, False, True, False, True]
    assert terminal_answers(data) == [("1", "completed"), ("1", "completed")]
    assert json.loads(data["status"][0]["value"])["streaming"] is True


def test_voice_chat_flow(tmp_path):
    flow = with_stub_tts(DATAFLOWS / "voice-chat.yml", tmp_path)
    voices = {"STUDENT1_VOICE": "Maple", "STUDENT2_VOICE": "Luo Xiang", "TUTOR_VOICE": "Doubao"}
    dora_run(flow, dict(voices, OUTPUT_DIR=str(tmp_path)))  # the YAML's default script
    data = summary(tmp_path / "voice-chat.json")
    check_wire_types(data)
    # the segmenter released each line only after the previous one was played: arrival order = script
    assert [a["input"] for a in data["audio"]] == ["audio_tutor", "audio_student1", "audio_student2",
                                                   "audio_tutor"]
    assert [a["metadata"]["segment_index"] for a in data["audio"]] == [0, 1, 2, 3]
    voice_of = {e["input"].removeprefix("status_"): json.loads(e["value"])["voice"] for e in data["status"]}
    assert voice_of == {"student1": "Maple", "student2": "Luo Xiang", "tutor": "Doubao"}
    assert [v for _, v in terminal_answers(data)] == ["completed"] * 4
    assert not [e for e in data["log"] if json.loads(e["value"])["level"] == "ERROR"]


def test_a_flow_runs_its_helper_nodes_from_its_own_folder(tmp_path):
    """The helper nodes are found beside the dataflow (dora starts each node in the dataflow's folder),
    whatever folder `dora run` is typed in."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "flows").mkdir()
    flow = with_stub_tts(DATAFLOWS / "say.yml", tmp_path / "flows")
    dora_run(flow, {"TEXT": "你好。", "OUTPUT_DIR": str(tmp_path / "out"), "NAME": "away"}, cwd=elsewhere)
    data = summary(tmp_path / "out" / "away.json")
    assert terminal_answers(data) == [("1", "completed")]
    assert not list(elsewhere.iterdir())


def test_cancel_reaches_the_node_while_it_speaks(tmp_path):
    flow = tmp_path / "cancel.yml"
    flow.write_text(f"""
nodes:
  - id: sender
    path: python
    args: {ROOT / "tests" / "dataflow_nodes" / "burst_sender.py"}
    inputs:
      answer: tts/segment_complete
    outputs: [text, control]
    env:
      BURST_TEXTS: "A1. A2. A3. A4. A5. A6.|B.|C."
      CANCEL_AFTER: "0.5"
      AFTER_TEXT: "After the cancel."
  - id: tts
    path: python
    args: {STUB_TTS}
    inputs:
      text: sender/text
      control: sender/control
    outputs: [audio, status, segment_complete, log]
    env:
      STUB_SEGMENT_SECONDS: "0.25"
  - id: recorder
    path: python
    args: {DATAFLOWS / "nodes" / "recorder.py"}
    inputs:
      audio: tts/audio
      segment_complete: tts/segment_complete
      log: tts/log
    env:
      OUTPUT: {tmp_path / "cancel.wav"}
""", "utf-8")
    dora_run(flow, {})
    data = summary(tmp_path / "cancel.json")
    answers = dict(terminal_answers(data))
    assert answers == {"burst-0": "cancelled", "burst-1": "cancelled", "burst-2": "cancelled",
                       "after": "completed"}
    assert len(terminal_answers(data)) == 4
    assert [a["metadata"]["question_id"] for a in data["audio"]] == ["after"]
    assert any("current text abandoned, 2 queued text(s) dropped" in json.loads(e["value"])["message"]
               for e in data["log"])


def test_make_run_without_voices_offline_stops_with_one_clear_message(tmp_path):
    """A missing voice is downloaded first; with the hub unreachable (a closed port on this machine) the
    script stops at once with one message naming both ways on, and leaves nothing behind."""
    env = dict(os.environ, PRIMESPEECH_MODEL_DIR=str(tmp_path), VOICE="Luo Xiang", HF_ENDPOINT="http://127.0.0.1:9")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == f"The voice 'Luo Xiang' is not installed in {tmp_path}: downloading it (once).\n"
    assert proc.stderr.startswith("The voice 'Luo Xiang' could not be downloaded: cannot reach"), proc.stderr
    assert proc.stderr.count("\n") == 3, proc.stderr  # one message, three lines
    assert f'primespeech-mlx download --voice "Luo Xiang" --model-root {tmp_path}' in proc.stderr
    assert "make run VOICE=test" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "moyoyo").exists()


@pytest.mark.parametrize("flow", sorted(p.name for p in DATAFLOWS.glob("*.yml")))
def test_every_shipped_input_is_lossless(flow):
    """dora 1.1's direct node-to-node path drops messages under load (CongestionControl::Drop): a lost
    text is never answered and a lost segment_complete stalls the sender, so every input of the shipped
    flows asks for `queue_policy: backpressure`, which keeps it on the daemon's path."""
    yaml = pytest.importorskip("yaml")
    nodes = yaml.safe_load((DATAFLOWS / flow).read_text("utf-8"))["nodes"]
    inputs = {f"{node['id']}/{name}": spec for node in nodes for name, spec in (node.get("inputs") or {}).items()}
    assert inputs
    lossy = [name for name, spec in inputs.items()
             if not isinstance(spec, dict) or spec.get("queue_policy") != "backpressure"]
    assert not lossy, f"{flow}: inputs without queue_policy: backpressure: {lossy}"
