"""`make run`: speak TEXT with VOICE through dataflows/say.yml (`dora run`, no daemon) into out/NAME.wav.

    make run                                 # the Doubao voice, installed under PRIMESPEECH_MODEL_DIR
    make run VOICE="Luo Xiang" TEXT="..."    # any installed voice; NAME=x writes out/x.wav
    make run VOICE=test                      # a voice with random weights generated here: it speaks noise

A voice that is not installed is downloaded first (with progress) from REPOSITORY (default
MoYoYoTech/tone-models); offline, it stops at once with one message saying how to download it later or to
try the random-weight test voice. GPT_MODEL_PATH, SOVITS_MODEL_PATH and REFERENCE_AUDIO_PATH replace the
voice's files, as in the node; one that names no file stops it at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_VOICE_DIR = ROOT / "out" / "test-voice"


def voice_files(voice: str, env: dict[str, str]):
    """(registry, the voice's canonical name, its missing files) for the configuration in `env`."""
    from dora_primespeech_mlx.config import NodeConfig
    from dora_primespeech_mlx.voices import VoiceRegistry

    config, _ = NodeConfig.from_env(env)
    registry = VoiceRegistry.from_config(config)
    return registry, registry.get(voice).name, registry.missing_files(voice)


def fetch_voice(voice: str, env: dict[str, str]) -> str | None:
    """Download what the voice lacks (huggingface_hub shows progress); None when it is ready, else the
    one message to print."""
    from dora_primespeech_mlx.commands import download_plan, run_download
    from dora_primespeech_mlx.errors import PrimeSpeechError

    try:
        registry, name, missing = voice_files(voice, env)
    except PrimeSpeechError as exc:
        return f"{exc}\nList the voices with: primespeech-mlx voices"
    if not missing:
        return None
    if any(path in missing for path in registry.overridden(name).values()):
        return registry.missing_message(name)  # GPT_MODEL_PATH & co. name no file: nothing to download
    root = f" --model-root {registry.model_root}" if "PRIMESPEECH_MODEL_DIR" in env else ""
    repository = f"REPOSITORY={registry.repository} " if "REPOSITORY" in env else ""
    print(f"The voice {name!r} is not installed in {registry.model_root}: downloading it (once).", flush=True)
    try:
        run_download(download_plan(registry, [name], with_g2pw=False))
    except PrimeSpeechError as exc:
        return (f"The voice {name!r} could not be downloaded: {exc}\n"
                f"Download it later (from {registry.repository}) with:  "
                f"{repository}primespeech-mlx download --voice \"{name}\"{root}\n"
                "or try the pipeline now on random weights with:  make run VOICE=test")
    return None


def build_test_voice(model_dir: Path) -> str:
    """The random-weight test voice in the official layout under model_dir (built once); its name."""
    from primespeech_devtools.oracle.voice import build_test_voice as build

    result = build(model_dir)
    return getattr(result, "name", None) or str(result)


def report(summary_path: Path) -> int:
    """Print what the recorder got; 1 when a text failed."""
    data = json.loads(summary_path.read_text("utf-8"))
    answers = [e for e in data["segment_complete"] if e["value"] != "skipped"]
    failed = [e for e in answers if e["value"] == "error"]
    print(f"\nwrote {data['wav']}: {data['seconds']:.2f} s of audio in {len(data['audio'])} message(s); "
          f"texts: {', '.join(e['value'] for e in answers) or 'none'}")
    for entry in failed:
        print(f"error: {entry['metadata'].get('error')}", file=sys.stderr)
    return 1 if failed or not answers else 0


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    env = dict(os.environ)
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"  # dora-primespeech and python for the nodes
    voice = env.get("VOICE") or env.get("VOICE_NAME") or "Doubao"
    env.setdefault("NAME", "say")
    # the dataflow's nodes run in dataflows/: hand them absolute paths
    env["OUTPUT_DIR"] = str(Path(env.get("OUTPUT_DIR") or ROOT / "out").resolve())
    if env.get("TEXT_FILE"):
        env["TEXT_FILE"] = str(Path(env["TEXT_FILE"]).expanduser().resolve())
    if voice == "test":
        env["PRIMESPEECH_MODEL_DIR"] = str(TEST_VOICE_DIR)
        print(f"VOICE=test: a voice with random weights in {TEST_VOICE_DIR} (it speaks noise, by design); "
              "generating it the first time takes a few minutes", flush=True)
        voice = build_test_voice(TEST_VOICE_DIR)
    else:
        problem = fetch_voice(voice, env)
        if problem:
            print(problem, file=sys.stderr)
            return 2
    env["VOICE_NAME"] = voice
    dora = shutil.which("dora", path=env["PATH"])
    if dora is None:
        print("The `dora` command is missing: pip install dora-rs-cli (make setup installs it)", file=sys.stderr)
        return 2
    proc = subprocess.run([dora, "run", str(ROOT / "dataflows" / "say.yml")], env=env, cwd=ROOT)
    summary = Path(env["OUTPUT_DIR"]) / f"{env['NAME']}.json"
    if proc.returncode != 0 or not summary.exists():
        print(f"dora run failed (exit code {proc.returncode})", file=sys.stderr)
        return proc.returncode or 1
    return report(summary)


if __name__ == "__main__":
    sys.exit(main())
