"""The wheel holds the runtime package only: no dev tools (oracle, benchmarks), no dataflow helper nodes,
no test-only Core ML interpreter, no torch import.

The wheel is built offline (`pip wheel --no-deps --no-build-isolation`, no index) from a copy of the
checkout's files (tracked and unignored, as the working tree has them), so the checkout gets no build/
folder. The optional C extension is left out of this build (`CC=/bin/false`: setup.py marks it optional):
compiling it takes minutes on a 2-core machine, and its sources are still packaged and checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from checkout import copy_checkout

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IMPORTS = (b"import torch", b"from torch ", b"from torch.")

pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                                reason="needs a git checkout (the wheel is built from its files)")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    pytest.importorskip("setuptools")
    src = copy_checkout(tmp_path_factory.mktemp("src"))
    assert (src / "devtools" / "primespeech_devtools").is_dir()  # present beside the package, kept out
    out = tmp_path_factory.mktemp("wheel")
    env = dict(os.environ, CC="/bin/false", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(src)], cwd=src, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = out.glob("dora_primespeech_mlx-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_the_wheel_holds_the_runtime_package(wheel):
    names = set(wheel.namelist())
    for module in ("cli.py", "main.py", "node.py", "engine.py", "coreml/__init__.py", "coreml/runtime.py",
                   "models/t2s.py", "configs/voices.json"):
        assert f"dora_primespeech_mlx/{module}" in names
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert wheel.read(top_level).decode().split() == ["dora_primespeech_mlx"]


def test_the_wheel_holds_no_dev_tools_nodes_or_test_helpers(wheel):
    names = wheel.namelist()
    assert not [n for n in names if n.startswith(("primespeech_devtools", "devtools", "dataflows", "tests"))]
    package_dirs = {part for n in names for part in Path(n).parts[1:-1]}
    assert not package_dirs & {"oracle", "bench", "nodes"}
    assert "dora_primespeech_mlx/coreml/reference.py" not in names


def test_no_file_in_the_wheel_imports_torch(wheel):
    offending = [n for n in wheel.namelist() if any(s in wheel.read(n) for s in FORBIDDEN_IMPORTS)]
    assert offending == []
