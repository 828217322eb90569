"""dataflows/two-machines.yml as the README starts it, on one host: a `dora coordinator`, two daemons
(`--machine-id A` and `--machine-id B`, loopback only) and `dora start --attach`.

The TTS nodes run the real node loop and config with the stub engine (tests/dataflow_nodes/stub_tts.py,
as in tests/test_dataflow.py), so what is tested is the placement and the wiring across daemons: the TTS
nodes run on B, sender and recorder on A, every text is answered and every audio message reaches A's WAV.
Every process started here is stopped at the end, also when the test fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from test_dataflow import check_wire_types, summary, terminal_answers, wav_seconds, with_stub_tts

ROOT = Path(__file__).resolve().parents[1]
FLOW = ROOT / "dataflows" / "two-machines.yml"
BIN = Path(sys.executable).parent
DORA = BIN / "dora"

pytestmark = [
    pytest.mark.slow,  # three dora processes and four nodes: ~10-30 s on 2 cores
    pytest.mark.skipif(not DORA.exists(), reason="the dora command (pip install dora-rs-cli) is not installed"),
]


def free_ports(count: int) -> list[int]:
    """Ports free on the loopback interface now (all bound at once, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for(condition, timeout: float, what: str, logs) -> None:
    """Poll `condition()` every 0.2 s until true; fail with `what` and the logs after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{logs()}")
        time.sleep(0.2)


def jsonl_line(line: str) -> str:
    """'<time> <message>' of a line of a node's log (dora writes one JSON object per line)."""
    try:
        entry = json.loads(line)
        return f"{entry['ts'][11:]} {entry['msg']}"
    except (ValueError, KeyError, TypeError):
        return line


class Cluster:
    """A coordinator and one daemon per machine id, on loopback ports of their own; `close()` stops them
    (and the nodes in their process groups)."""

    def __init__(self, workdir: Path, env: dict[str, str]):
        self.workdir = workdir
        self.env = env
        self.port, *self.other_ports = free_ports(5)
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self._logs: list = []

    def _spawn(self, name: str, args: list[str], cwd: Path) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 (closed in close())
        self._logs.append(log)
        process = subprocess.Popen([str(DORA), *args], cwd=cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes.append((name, process))

    def logs(self) -> str:
        """The last lines of each dora process's log and of each node's (dora keeps a node's log in its
        daemon's folder: out/<dataflow>/log_<node>.jsonl)."""
        files = [(name, self.workdir / f"{name}.log") for name, _ in self.processes]
        files += [(path.stem, path) for path in sorted(self.workdir.glob("*/**/out/*/log_*.jsonl"))]
        parts = []
        for name, path in files:
            lines = path.read_text("utf-8", errors="replace").splitlines()
            if path.suffix == ".jsonl":  # keep the time and the message of each line
                lines = [jsonl_line(line) for line in lines]
            parts.append(f"--- {name} (last lines)\n" + "\n".join(line[:400] for line in lines[-30:]))
        return "\n".join(parts)

    def _dora(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([str(DORA), *args, "--coordinator-port", str(self.port)], cwd=self.workdir,
                              env=self.env, capture_output=True, text=True, timeout=timeout)

    def start(self, daemons: dict[str, Path]) -> None:
        """The coordinator, then a daemon per machine id (started in its folder); returns once every
        daemon is connected."""
        self._spawn("coordinator", ["coordinator", "--interface", "127.0.0.1", "--port", str(self.port),
                                    "--store", "memory"], self.workdir)

        def answers() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(answers, 30, "the coordinator", self.logs)
        # zenoh between the daemons over loopback, each dialing the others: no multicast needed
        zenoh = {machine: port for machine, port in zip(daemons, self.other_ports[len(daemons):], strict=False)}
        for (machine, cwd), listen in zip(daemons.items(), self.other_ports, strict=False):
            cwd.mkdir(parents=True, exist_ok=True)
            connect = [f"--zenoh-connect=tcp/127.0.0.1:{p}" for m, p in zenoh.items() if m != machine]
            self._spawn(f"daemon-{machine}", [
                "daemon", "--machine-id", machine, "--coordinator-addr", "127.0.0.1",
                "--coordinator-port", str(self.port), "--local-listen-port", str(listen),
                "--zenoh-listen", f"127.0.0.1:{zenoh[machine]}", *connect, "--zenoh-no-multicast"], cwd)

        def connected() -> bool:
            status = self._dora("cluster", "status")
            return status.returncode == 0 and all(re.search(rf"^{m}-", status.stdout, re.M) for m in daemons)

        wait_for(connected, 60, f"daemons {', '.join(daemons)} to connect", self.logs)

    def run(self, dataflow: Path, timeout: float) -> str:
        """`dora start --attach` of `dataflow` (its `${...}` filled in from this cluster's environment):
        its output; fails the test unless the dataflow finished successfully, raises DataflowHang
        (with every log's last lines) when it did not finish within `timeout` seconds."""
        try:
            proc = self._dora("start", str(dataflow), "--attach", timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            attached = exc.output.decode("utf-8", "replace") if isinstance(exc.output, bytes) else exc.output or ""
            raise DataflowHang(f"the dataflow did not finish within {timeout:.0f} s\n{self.logs()}\n"
                               f"--- dora start --attach (last lines)\n{attached[-4000:]}") from None
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"dora start failed ({proc.returncode}):\n{output[-6000:]}\n{self.logs()}"
        return output

    def close(self) -> None:
        if self.processes:
            try:  # a dataflow left running (the test failed or timed out): stop its nodes first
                self._dora("stop", "--all", "--force", timeout=20)
            except subprocess.TimeoutExpired:
                pass
        for _, process in reversed(self.processes):  # daemons before the coordinator
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for _, process in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
        for log in self._logs:
            log.close()


class DataflowHang(Exception):
    """A dataflow that did not finish in time; the message holds the logs."""


def run_on_two_machines(workdir: Path, env: dict[str, str], machine_a_folder, timeout: float
                        ) -> tuple[str, Path, Cluster]:
    """Start a cluster (machines A and B) under `workdir` and run the dataflow that
    `machine_a_folder(folder)` writes into A's folder: (`dora start --attach`'s output, the folder
    given as OUTPUT_DIR, the closed cluster).

    A dataflow that does not finish is run once more on a fresh cluster, the first run's logs given
    as a warning: dora 1.1 loses a message between daemons now and then (dora-rs/dora#2144 reports one
    such race), and a lost text or answer leaves the segmenter waiting for good. CI saw one such hang in
    about 40 runs (the cause not shown then: only dora's own logs were printed). A second hang fails."""
    for attempt in (1, 2):
        root = workdir / f"run{attempt}"
        machine_a = root / "a"  # machine A's daemon runs in the dataflow's folder, which holds nodes/
        machine_a.mkdir(parents=True)
        flow = machine_a_folder(machine_a)
        out = root / "out"
        cluster = Cluster(root, dict(env, OUTPUT_DIR=str(out)))
        try:
            cluster.start({"A": machine_a, "B": root / "b"})
            output = cluster.run(flow, timeout=timeout)
        except DataflowHang as hang:
            if attempt == 2:
                pytest.fail(f"twice: {hang}")
            warnings.warn(f"two-machine dataflow, first run: {hang}", stacklevel=2)
            continue
        finally:
            cluster.close()
        return output, out, cluster
    raise AssertionError("unreachable")


@pytest.fixture
def cluster_env() -> dict[str, str]:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("DORA_LOG_LEVEL", None)
    for name in ("DORA_COORDINATOR_ADDR", "DORA_COORDINATOR_PORT", "DORA_COORDINATOR_INTERFACE"):
        env.pop(name, None)
    return env


def test_two_machines_flow_places_the_tts_nodes_on_b(tmp_path, cluster_env):
    env = dict(cluster_env, SCRIPT="tutor: 第一句。\\nstudent: 第二句！\\ntutor: Third text.",
               NAME="classroom", STUDENT_VOICE="Luo Xiang", TUTOR_VOICE="Doubao")
    output, out, cluster = run_on_two_machines(tmp_path, env, lambda a: with_stub_tts(FLOW, a), timeout=120)

    for node, machine in (("multi-text-segmenter", "A"), ("mofa-audio-player", "A"),
                          ("primespeech-student", "B"), ("primespeech-tutor", "B")):
        assert re.search(rf"{node} on daemon `{machine}`", output), f"{node} not on {machine}:\n{output[-4000:]}"
    data = summary(out / "classroom.json")
    check_wire_types(data)
    # the segmenter released each line after the previous one was answered and played, across machines
    assert [a["input"] for a in data["audio"]] == ["audio_tutor", "audio_student", "audio_tutor"]
    assert [a["metadata"]["segment_index"] for a in data["audio"]] == [0, 1, 2]
    assert terminal_answers(data) == [("1", "completed")] * 3
    voices = {e["input"]: json.loads(e["value"])["voice"] for e in data["status"]}
    assert voices == {"status_student": "Luo Xiang", "status_tutor": "Doubao"}
    events = {name: [json.loads(e["value"])["event"] for e in data["status"] if e["input"] == name]
              for name in voices}
    # A node's first status ("start") can leave B before the daemons' link is up, and dora 1.1 drops
    # what crosses before it (about one run in three here); everything sent once a text arrived crosses.
    for name in events:
        if events[name][:1] == ["start"]:
            events[name] = events[name][1:]
    assert events == {"status_student": ["request", "stop"], "status_tutor": ["request", "request", "stop"]}
    assert not [e for e in data["log"] if json.loads(e["value"])["level"] == "ERROR"]
    assert wav_seconds(out / "classroom.wav") == pytest.approx(sum(a["samples"] for a in data["audio"]) / 32000)
    assert all(process.poll() is not None for _, process in cluster.processes)


def test_two_machines_flow_on_the_real_engine(tmp_path, cluster_env):
    """The same placement with `dora-primespeech` itself on B, on a small random-weight voice (it speaks
    noise): one audio message per text reaches A, every text is answered "completed"."""
    pytest.importorskip("dora_primespeech_mlx.engine")
    from test_dataflow_engine import write_small_voice

    voices = tmp_path / "voices"
    write_small_voice(voices, "testa", seed=0, encoders=True)

    def machine_a_folder(machine_a: Path) -> Path:
        flow = machine_a / FLOW.name
        flow.write_text(FLOW.read_text("utf-8"), "utf-8")
        (machine_a / "nodes").symlink_to(FLOW.parent / "nodes")
        return flow

    env = dict(cluster_env, SCRIPT="tutor: 你好。\\nstudent: 再见。", NAME="engine", STUDENT_VOICE="testa",
               TUTOR_VOICE="testa", PRIMESPEECH_MODEL_DIR=str(voices), TEXT_LANG="zh")
    output, out, _ = run_on_two_machines(tmp_path, env, machine_a_folder, timeout=150)

    assert re.search(r"primespeech-tutor on daemon `B`", output)
    data = summary(out / "engine.json")
    check_wire_types(data)
    assert [a["input"] for a in data["audio"]] == ["audio_tutor", "audio_student"]
    assert all(a["samples"] > 3200 for a in data["audio"])  # noise, but real audio
    assert [(e["input"], e["value"]) for e in data["segment_complete"]] == [
        ("segment_complete_tutor", "completed"), ("segment_complete_student", "completed")]
    assert not [e for e in data["log"] if json.loads(e["value"])["level"] == "ERROR"]
    # statuses are not counted here: in one run of two, a `request` status sent by B just before the
    # flow closed never reached A (audio and segment_complete always did)
    assert wav_seconds(out / "engine.wav") == pytest.approx(sum(a["samples"] for a in data["audio"]) / 32000)
