"""The BLAS thread count follows other processes' load: `OtherLoad` counts cores busy with other
processes' work (not this one's), and `adapt_blas_threads` gives OpenBLAS one thread fewer per such core."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS before MLX)
from dora_primespeech_mlx import runtime

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _settle(monitor: runtime.OtherLoad, seconds: float) -> float:
    time.sleep(seconds)
    value = monitor.cores_busy()
    assert value is not None
    return value


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
