"""Importing the package does nothing but the OpenBLAS dlopen MLX's Linux CPU build needs: no
environment writes, no /proc sampling, no threads of ours. `runtime.prepare(config)` sets the CPU
policy at start-up (OpenBLAS threads through its own API, the CPU-kernel switch), and
`runtime.accelerate(model)` is the CPU accelerator's one dispatch point. Once prepare chose the
thread count itself, it follows other processes' load: `OtherLoad` counts cores busy with other
processes' work (not this one's), and `adapt_blas_threads` gives OpenBLAS one thread fewer per such core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS before MLX)
from dora_primespeech_mlx import runtime

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env: str) -> Any:
    """Run `code` in a fresh interpreter (no OPENBLAS_NUM_THREADS unless given) and return the JSON
    it prints last."""
    environ = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "PRIMESPEECH_NO_OPENBLAS")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**environ, **env}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


_IMPORT = """
import builtins, json, os, threading
opened = []
_open = builtins.open
def spy(file, *args, **kwargs):
    opened.append(str(file))
    return _open(file, *args, **kwargs)
tasks = lambda: len(os.listdir('/proc/self/task'))
environ, before, python_threads = dict(os.environ), tasks(), threading.active_count()
builtins.open = spy
import dora_primespeech_mlx
from dora_primespeech_mlx import runtime
builtins.open = _open
print(json.dumps({"environ_same": dict(os.environ) == environ, "new_tasks": tasks() - before,
                  "new_python_threads": threading.active_count() - python_threads,
                  "blas_threads": runtime.blas_thread_count(), "openblas": runtime._OPENBLAS_STATE["path"],
                  "proc_reads": [f for f in opened if f.startswith("/proc/") and f != "/proc/cpuinfo"]}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts /proc/self/task")
@pytest.mark.parametrize("blas_env", [{}, {"OPENBLAS_NUM_THREADS": "1"}], ids=["auto", "one-thread"])
def test_importing_the_package_has_no_side_effect(blas_env):
    seen = _run(_IMPORT, **blas_env)
    assert seen["environ_same"]
    assert seen["proc_reads"] == []
    assert seen["new_python_threads"] == 0
    if blas_env:  # OpenBLAS loaded for one thread starts none of its own: nothing else may
        assert seen["new_tasks"] == 0


_PREPARE = """
import json, os, types
import dora_primespeech_mlx
from dora_primespeech_mlx import runtime
environ = dict(os.environ)
runtime.prepare(types.SimpleNamespace(cpu_kernels=os.environ["KERNELS"]))
library = __import__("sys").modules.get("dora_primespeech_mlx.cpu.library")
# the variables prepare may set, before MLX is loaded: MLX's CUDA convolution plan cache and graph size
cache, graph_mb = os.environ.get("MLX_CUDA_CONV_CACHE_SIZE"), os.environ.get("MLX_MAX_MB_PER_BUFFER")
environ_after = {k: v for k, v in os.environ.items() if k not in ("MLX_CUDA_CONV_CACHE_SIZE", "MLX_MAX_MB_PER_BUFFER")}
print(json.dumps({"environ_same": environ_after == environ, "cuda_conv_cache": cache, "graph_mb": graph_mb,
                  "mlx_loaded": "mlx.core" in __import__("sys").modules, "threads": runtime.blas_thread_count(),
                  "cores": len(runtime.usable_cores()), "status": runtime.openblas_status(),
                  "kernels": None if library is None else library.enabled()}))
"""


@pytest.mark.skipif(runtime.blas_thread_count() is None, reason="MLX does not use OpenBLAS here")
def test_prepare_sets_the_blas_threads_through_openblas():
    seen = _run(_PREPARE, KERNELS="auto")
    assert seen["environ_same"] and 1 <= seen["threads"] <= seen["cores"]
    assert "auto" in seen["status"]
    assert seen["kernels"] is None  # on by default: the accelerator is not even imported
    explicit = _run(_PREPARE, KERNELS="auto", OPENBLAS_NUM_THREADS="1")
    assert explicit["environ_same"] and explicit["threads"] == 1 and "OPENBLAS_NUM_THREADS" in explicit["status"]


def test_prepare_switches_the_cpu_kernels_off():
    seen = _run(_PREPARE, KERNELS="off", OPENBLAS_NUM_THREADS="1")
    assert seen["kernels"] is False


def test_prepare_takes_a_config_without_the_field(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", str(runtime.blas_thread_count() or 1))
    runtime.prepare(SimpleNamespace())


_ACCELERATE = """
import json, sys
import dora_primespeech_mlx
from dora_primespeech_mlx import runtime
import mlx.core as mx
mx.default_device = lambda: mx.gpu  # as on Metal or CUDA
model = object()
same = runtime.accelerate(model) is model
print(json.dumps({"same": same, "imported": [m for m in sys.modules if m.startswith("dora_primespeech_mlx.cpu")]}))
"""


def test_accelerate_off_the_cpu_never_imports_the_accelerator():
    seen = _run(_ACCELERATE, OPENBLAS_NUM_THREADS="1")
    assert seen == {"same": True, "imported": []}


def test_accelerate_with_the_switch_off_leaves_the_model(monkeypatch):
    from dora_primespeech_mlx.cpu import library

    calls = []
    monkeypatch.setattr("dora_primespeech_mlx.cpu.accelerate", lambda model: calls.append(model) or model)
    model = object()
    library.set_enabled(False)
    try:
        assert runtime.accelerate(model) is model and not calls
    finally:
        library.set_enabled(True)
    import mlx.core as mx

    if mx.default_device() == mx.cpu:
        assert runtime.accelerate(model) is model and calls == [model]


def _settle(monitor: runtime.OtherLoad, seconds: float) -> float:
    time.sleep(seconds)
    value = monitor.cores_busy()
    assert value is not None
    return value


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_other_processes_count_and_this_one_does_not():
    monitor = runtime.OtherLoad(period=0.1, smoothing=0.5)
    assert monitor.cores_busy() is None  # no sample yet: the thread has just started
    quiet = _settle(monitor, 1.0)
    if quiet > len(monitor.cores) - 1.2:
        pytest.skip(f"other processes already keep {quiet:.1f} cores busy: no room to measure")

    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    worker = threading.Thread(target=spin)
    worker.start()
    try:
        own = _settle(monitor, 1.2)  # a core busy with THIS process's work
    finally:
        stop.set()
        worker.join()
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time() + 3\nwhile time.time() < t: pass"])
    try:
        other = _settle(monitor, 1.5)  # a core busy with another process's work
    finally:
        child.kill()
        child.wait()
    assert own < quiet + 0.4, (quiet, own)
    assert other > quiet + 0.5, (quiet, other)


@pytest.mark.skipif(runtime.blas_thread_count() is None, reason="MLX does not use OpenBLAS here")
def test_adapt_blas_threads_follows_the_load(monkeypatch):
    busy = {"cores": 0.0}
    fake = SimpleNamespace(cores={0, 1}, cores_busy=lambda: busy["cores"])
    monkeypatch.setattr(runtime, "_OTHER_LOAD", [fake])
    before = runtime.blas_thread_count()
    try:
        monkeypatch.setitem(runtime._OPENBLAS_STATE, "auto", False)  # OPENBLAS_NUM_THREADS set by the user
        assert runtime.adapt_blas_threads() is None
        monkeypatch.setitem(runtime._OPENBLAS_STATE, "auto", True)
        for load, threads in ((0.0, 2), (0.15, 2), (0.5, 1), (1.0, 1), (2.0, 1)):
            busy["cores"] = load
            assert runtime.adapt_blas_threads() == threads and runtime.blas_thread_count() == threads
        busy["cores"] = 0.0
        with runtime.blas_threads(1):  # lanes hold the count: left alone until they finish
            assert runtime.adapt_blas_threads() is None and runtime.blas_thread_count() == 1
        assert runtime.adapt_blas_threads() == 2
    finally:
        runtime._openblas_thread_api()[1](before)


def test_the_load_sampler_starts_only_after_prepare_chose_the_threads():
    """No sampling thread unless prepare() set the thread count itself (auto): the engine's calls
    to adapt_blas_threads do nothing before that, or where OPENBLAS_NUM_THREADS was given."""
    code = """
import json, os, threading, types
import dora_primespeech_mlx
from dora_primespeech_mlx import runtime
counts = [threading.active_count()]
runtime.adapt_blas_threads()
counts.append(threading.active_count())
runtime.prepare(types.SimpleNamespace(cpu_kernels="auto"))
runtime.adapt_blas_threads()
counts.append(threading.active_count())
print(json.dumps(counts))
"""
    assert _run(code, OPENBLAS_NUM_THREADS="1") == [1, 1, 1]
    if runtime.blas_thread_count() is not None and sys.platform.startswith("linux"):
        assert _run(code) == [1, 1, 2]


class _FakeOpenBLAS:
    def __init__(self, config: bytes):
        self.openblas_get_config = lambda: config


@pytest.mark.parametrize(("config", "flags", "usable"), [
    (b"OpenBLAS 0.3.31 NO_AFFINITY SKYLAKEX MAX_THREADS=4", {"avx2"}, False),  # cmeel's build on an AMD EPYC
    (b"OpenBLAS 0.3.31 NO_AFFINITY SKYLAKEX MAX_THREADS=4", {"avx2", "avx512f"}, True),
    (b"OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY Zen MAX_THREADS=64", {"avx2"}, True),
    (b"OpenBLAS 0.3.21 NO_AFFINITY HASWELL", {"avx2"}, True),
])
def test_an_openblas_built_for_avx512_alone_is_skipped_without_avx512(monkeypatch, config, flags, usable):
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: flags)
    reason = runtime._unusable_reason(_FakeOpenBLAS(config))
    assert (reason is None) == usable
    if not usable:
        assert "SKYLAKEX" in reason and "AVX-512" in reason


def test_prepare_sizes_the_cuda_convolution_plan_cache_before_mlx_loads():
    seen = _run(_PREPARE, KERNELS="auto", OPENBLAS_NUM_THREADS="1")
    assert not seen["mlx_loaded"] and seen["cuda_conv_cache"] == runtime.CUDA_CONV_CACHE_SIZE
    assert seen["graph_mb"] == (None if sys.platform == "darwin" else runtime.CUDA_GRAPH_MB)
    own = _run(_PREPARE, KERNELS="auto", OPENBLAS_NUM_THREADS="1", MLX_CUDA_CONV_CACHE_SIZE="64",
               MLX_MAX_MB_PER_BUFFER="1000")
    assert own["cuda_conv_cache"] == "64" and own["graph_mb"] == "1000"  # the user's own settings stay


def test_prepare_turns_tf32_off_for_float32_only(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", str(runtime.blas_thread_count() or 1))
    monkeypatch.delenv("MLX_ENABLE_TF32", raising=False)
    runtime.prepare(SimpleNamespace(cpu_kernels="auto", dtype="auto"))
    assert "MLX_ENABLE_TF32" not in os.environ
    runtime.prepare(SimpleNamespace(cpu_kernels="auto", dtype="float32"))
    assert os.environ["MLX_ENABLE_TF32"] == "0"
    monkeypatch.setenv("MLX_ENABLE_TF32", "1")  # the user's own setting stays
    runtime.prepare(SimpleNamespace(cpu_kernels="auto", dtype="float32"))
    assert os.environ["MLX_ENABLE_TF32"] == "1"


def test_prepare_leaves_the_plan_cache_alone_once_mlx_is_loaded(monkeypatch):
    import mlx.core  # noqa: F401  (loaded: MLX has read its settings)

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", str(runtime.blas_thread_count() or 1))
    monkeypatch.delenv("MLX_CUDA_CONV_CACHE_SIZE", raising=False)
    monkeypatch.delenv("MLX_MAX_MB_PER_BUFFER", raising=False)
    runtime.prepare(SimpleNamespace(cpu_kernels="auto"))
    assert "MLX_CUDA_CONV_CACHE_SIZE" not in os.environ and "MLX_MAX_MB_PER_BUFFER" not in os.environ
