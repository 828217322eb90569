"""The shipped dataflows under a real `dora run` with the real engine, on random-weight test voices.

The voices are written as official files in the `moyoyo/` layout with torch (upstream's own modules,
via primespeech_devtools.oracle), so the node converts them on first use like a downloaded voice. They
use small configurations (2-3 layers) so that this stays quick on 2 CPU cores; `make run VOICE=test`
uses full-size ones (oracle.voice.build_test_voice). Random weights speak noise: these tests check the
plumbing and the contract (one audio message per text, segment_complete for each, status and log
well-formed, no error), not the sound.
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

from dora_primespeech_mlx.voices import ModelRoot

ROOT = Path(__file__).resolve().parents[1]
DATAFLOWS = ROOT / "dataflows"
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dora", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}") is None,
                       reason="the dora command (pip install dora-rs-cli) is not installed"),
]


def write_small_voice(root: Path, name: str, seed: int, encoders: bool, version: str = "v2") -> None:
    """A random-weight voice with small models in the official layout, registered in root/voices.json
    (v2Pro/v2ProPlus: the SoVITS file with its version header, and the speaker model under moyoyo/sv/)."""
    pytest.importorskip("torch")
    from primespeech_devtools.oracle import encoders as enc
    from primespeech_devtools.oracle import sovits, speaker, t2s
    from primespeech_devtools.oracle.voice import _write_pcm16, synthetic_reference

    moyoyo = root / "moyoyo"
    config = t2s.make_config(n_layer=2)
    config["data"]["max_sec"] = 1  # random weights rarely stop by themselves: cap each segment at 50 codes
    t2s.write_random_checkpoint(moyoyo / "GPT_weights" / f"{name}_best_gpt.ckpt", config, seed=seed)
    (moyoyo / "SoVITS_weights").mkdir(parents=True, exist_ok=True)
    sovits.save_official(sovits.build_upstream(version, seed=seed + 1, hps=sovits.small_config(version)),
                         moyoyo / "SoVITS_weights" / f"{name}_best_sovits.pth",
                         header=version if version in sovits.SPEAKER_VERSIONS else None)
    if version in sovits.SPEAKER_VERSIONS:
        speaker.write_checkpoint(ModelRoot(root).speaker, speaker.build(seed=seed + 4))
    (moyoyo / "ref_audios").mkdir(parents=True, exist_ok=True)
    _write_pcm16(moyoyo / "ref_audios" / f"{name}_ref.wav", synthetic_reference(4.0, seed=seed), 32000)
    if encoders:
        enc.write_hubert_folder(moyoyo / enc.HUBERT_NAME, seed=seed + 2, overrides={"num_hidden_layers": 2})
        enc.write_roberta_folder(moyoyo / enc.ROBERTA_NAME, seed=seed + 3, overrides={"num_hidden_layers": 3})
    voices_file = root / "voices.json"
    data = json.loads(voices_file.read_text("utf-8")) if voices_file.exists() else {"voices": {}}
    data["voices"][name] = {
        "gpt_weights": f"GPT_weights/{name}_best_gpt.ckpt", "sovits_weights": f"SoVITS_weights/{name}_best_sovits.pth",
        "reference_audio": f"ref_audios/{name}_ref.wav", "prompt_text": "这是一个用来测试的声音。",
        "prompt_lang": "zh", "text_lang": "zh", "speed_factor": 1.0}
    voices_file.write_text(json.dumps(data, ensure_ascii=False), "utf-8")


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> Path:
    pytest.importorskip("dora_primespeech_mlx.engine")
    root = tmp_path_factory.mktemp("voices")
    write_small_voice(root, "testa", seed=0, encoders=True)
    write_small_voice(root, "testb", seed=10, encoders=False)
    write_small_voice(root, "testpro", seed=20, encoders=False, version="v2ProPlus")
    return root


def dora_run(dataflow: Path, workdir: Path, env: dict[str, str], timeout: float = 300) -> str:
    """`dora run` of a copy of a shipped dataflow in workdir (dora writes its logs beside the file), with
    the helper nodes it runs from nodes/."""
    copy = workdir / dataflow.name
    shutil.copy(dataflow, copy)
    shutil.copytree(dataflow.parent / "nodes", workdir / "nodes", dirs_exist_ok=True)
    full_env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env)
    proc = subprocess.run([shutil.which("dora", path=full_env["PATH"]), "run", str(copy)], cwd=workdir,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"dora run failed ({proc.returncode}):\n{output[-6000:]}"
    return output


def check_contract(data: dict, texts: int) -> None:
    """One ListArray<float32> audio message per text, one terminal segment_complete per text
    ("completed"), status and log outputs well-formed, no error anywhere."""
    assert len(data["audio"]) == texts
    for audio in data["audio"]:
        assert (audio["class"], audio["type"], audio["length"]) == ("ListArray", "list<item: float>", 1)
        meta = audio["metadata"]
        assert meta["sample_rate"] == 32000 and abs(meta["duration"] - audio["samples"] / 32000) < 1e-9
        assert audio["samples"] > 3200 and 0 < audio["peak"] < 1  # noise, but real audio
    assert [e["value"] for e in data["segment_complete"]] == ["completed"] * texts
    for entry in data["log"]:
        record = json.loads(entry["value"])
        assert set(record) == {"node", "level", "message"} and record["level"] != "ERROR", record
    statuses = [json.loads(e["value"]) for e in data["status"]]
    assert statuses and all(s["state"] in ("ready", "busy", "stopped") for s in statuses), statuses
    requests = [s for s in statuses if s["event"] == "request"]
    assert len(requests) == texts and all(s["last_rtf"] > 0 for s in requests)


def test_say_flow_on_the_test_voice(model_root, tmp_path):
    out = tmp_path / "out"
    output = dora_run(DATAFLOWS / "say.yml", tmp_path, {
        "PRIMESPEECH_MODEL_DIR": str(model_root), "VOICE_NAME": "testa", "TEXT": "你好。\\n再见。",
        "OUTPUT_DIR": str(out), "NAME": "engine"})
    data = json.loads((out / "engine.json").read_text("utf-8"))
    check_contract(data, texts=2)
    assert {json.loads(e["value"])["voice"] for e in data["status"]} == {"testa"}
    with wave.open(str(out / "engine.wav")) as wav:
        assert wav.getframerate() == 32000 and wav.getnframes() == sum(a["samples"] for a in data["audio"])
    # the official files went through our converter, whose cache now sits beside them
    assert "converting" in output
    assert any((model_root / "moyoyo" / "GPT_weights").glob("testa*mlx*"))
    assert any((model_root / "moyoyo" / "SoVITS_weights").glob("testa*mlx*"))


def test_two_voice_flow_on_the_test_voices(model_root, tmp_path):
    dora_run(DATAFLOWS / "voice-chat.yml", tmp_path, {
        "PRIMESPEECH_MODEL_DIR": str(model_root), "STUDENT1_VOICE": "testa", "STUDENT2_VOICE": "testb",
        "TUTOR_VOICE": "testb", "SCRIPT": "student1: 你好。\\nstudent2: 再见。", "OUTPUT_DIR": str(tmp_path)})
    data = json.loads((tmp_path / "voice-chat.json").read_text("utf-8"))
    check_contract(data, texts=2)
    assert [a["input"] for a in data["audio"]] == ["audio_student1", "audio_student2"]
    voices = {e["input"]: json.loads(e["value"])["voice"] for e in data["status"]}
    assert voices == {"status_student1": "testa", "status_student2": "testb", "status_tutor": "testb"}


def test_say_flow_on_a_v2proplus_voice(model_root, tmp_path):
    """A v2ProPlus voice (speaker embedding, 768-wide generator with kernel 20) through the node."""
    out = tmp_path / "out"
    dora_run(DATAFLOWS / "say.yml", tmp_path, {
        "PRIMESPEECH_MODEL_DIR": str(model_root), "VOICE_NAME": "testpro", "TEXT": "你好。\\n再见。",
        "OUTPUT_DIR": str(out), "NAME": "pro"})
    data = json.loads((out / "pro.json").read_text("utf-8"))
    check_contract(data, texts=2)
    assert {json.loads(e["value"])["voice"] for e in data["status"]} == {"testpro"}
    # the speaker model went through the one loader too: its conversion sits beside it
    assert ModelRoot(model_root).speaker.with_suffix(".mlx").is_dir()
