"""The README's own commands, typed the way a new user types them: in a fresh copy of the checkout, in
its root directory, with nothing activated.

`make run VOICE=test` must speak into out/say.wav from the checkout itself: there, `uv` (which
dora-rs-cli installs into .venv/bin) sees the project's pyproject.toml, and `dora run` resolves node
commands through `uv run which ...` — a flow that passed from a temporary folder failed from the
checkout (and uv would lock the project and rewrite .venv). The copy reuses this checkout's prepared
environment (.venv links to it, the copied files keep their times so make sees the set-up as done):
the set-up itself is what `make test` has just run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from checkout import copy_checkout

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("make") is None or shutil.which("git") is None, reason="needs make and git"),
    pytest.mark.skipif(not (VENV / "bin" / "dora").exists(), reason="the dora command is not installed"),
]


def fresh_copy(dest: Path) -> Path:
    """The checkout's tracked and unignored files (as the working tree has them, times kept) in `dest`,
    a new git repository, with .venv linking to this environment."""
    copy_checkout(dest)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    (dest / ".venv").symlink_to(VENV, target_is_directory=True)
    return dest


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a shell where nothing is activated: no venv on PATH, no test variables."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
           and not k.startswith(("PRIMESPEECH_", "PYTEST_"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() != (VENV / "bin").resolve())
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    dest = fresh_copy(tmp_path_factory.mktemp("clone"))
    # make must see the set-up as done: otherwise it would reinstall this package from the copy
    pending = subprocess.run(["make", "-q", "setup"], cwd=dest, env=user_env(), capture_output=True)
    if pending.returncode != 0:
        pytest.fail("the environment's set-up is older than the sources: run `make setup` (or `make test`) first")
    return dest


def read_wav(path: Path) -> tuple[int, np.ndarray]:
    with wave.open(str(path), "rb") as f:
        frames = f.readframes(f.getnframes())
        return f.getframerate(), np.frombuffer(frames, dtype=np.int16)


def git_status(checkout: Path) -> list[str]:
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=checkout,
                         capture_output=True, text=True, check=True).stdout
    return sorted(line for line in out.splitlines() if not line[3:].startswith("out/"))


def untouched(checkout: Path, before: list[str]) -> None:
    """No tool wrote lock files into the repository or the environment, and git sees no other change."""
    assert not (checkout / "uv.lock").exists()
    assert not (VENV / ".lock").exists()
    assert git_status(checkout) == before


def test_make_run_test_voice_from_the_checkout(checkout):
    before = git_status(checkout)
    proc = subprocess.run(["make", "run", "VOICE=test"], cwd=checkout, env=user_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"make run VOICE=test failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "wrote " in proc.stdout and "texts: completed" in proc.stdout, proc.stdout[-2000:]
    rate, samples = read_wav(checkout / "out" / "say.wav")
    assert rate == 32000 and samples.size > 32000 // 2 and np.abs(samples).max() > 0
    untouched(checkout, before)


def test_dora_run_after_activating(checkout):
    """The README's `. .venv/bin/activate && dora run dataflows/say.yml`, on the test voice built above."""
    voice_root = checkout / "out" / "test-voice"
    if not (voice_root / "voices.json").is_file():
        pytest.skip("needs the test voice that `make run VOICE=test` builds")
    command = ". .venv/bin/activate && dora run dataflows/say.yml"
    before = git_status(checkout)
    proc = subprocess.run(["bash", "-c", command], cwd=checkout, timeout=600, capture_output=True, text=True,
                          env=user_env(VOICE_NAME="test", PRIMESPEECH_MODEL_DIR=str(voice_root),
                                       OUTPUT_DIR=str(checkout / "out"), NAME="activated"))
    assert proc.returncode == 0, f"{command} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    rate, samples = read_wav(checkout / "out" / "activated.wav")
    assert rate == 32000 and samples.size > 32000 // 2
    untouched(checkout, before)


def test_make_run_without_the_voice_offline(checkout, tmp_path):
    """Plain `make run` with the default voice missing and no network: one message, naming both ways on."""
    env = user_env(PRIMESPEECH_MODEL_DIR=str(tmp_path / "models"), HF_ENDPOINT="http://127.0.0.1:9",
                   HF_HUB_ETAG_TIMEOUT="2", HF_HUB_DOWNLOAD_TIMEOUT="2")
    proc = subprocess.run(["make", "run"], cwd=checkout, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    err = proc.stderr
    assert "primespeech-mlx download" in err and "make run VOICE=test" in err, err
    assert "Traceback" not in err and "Traceback" not in proc.stdout, err
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("*")), \
        sorted((tmp_path / "models").rglob("*"))
