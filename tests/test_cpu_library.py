"""The CPU accelerator's one C library (dora_primespeech_mlx/cpu/native) through its one loader
(cpu/library.py): every exported function declared once, one ABI version check, one switch, one
worker pool, and no process-wide interposition (nothing we build exports a cblas_ symbol)."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from dora_primespeech_mlx import cpu
from dora_primespeech_mlx.cpu import library

pytestmark = pytest.mark.skipif(library.library_path() is None, reason="the CPU library is not built")

PANEL = 32


def _exported_functions(path: str) -> set[str]:
    """The functions the library defines in its dynamic symbol table (`nm -D`)."""
    out = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True, check=True).stdout
    return {fields[2] for fields in (line.split() for line in out.splitlines())
            if len(fields) == 3 and fields[1] in "Tt" and fields[2] not in ("_init", "_fini")}


@pytest.fixture
def fresh_state(monkeypatch):
    """The loader as in a new process (nothing tried yet), restored afterwards."""
    monkeypatch.setattr(library, "_STATE", dict(library._STATE, tried=False, lib=None, sgemm=False, enabled=True))


def test_the_library_loads_with_every_declared_function():
    lib = library.load()
    assert lib is not None and lib.ps_abi_version() == library.ABI_VERSION
    for name, argtypes in library.SIGNATURES.items():
        function = getattr(lib, name)
        assert function.argtypes == argtypes and function.restype is ctypes.c_int
    assert library.sgemm_bound()  # OpenBLAS is in the global scope (runtime.preload_openblas)


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils' nm")
def test_every_exported_function_is_declared_and_none_is_blas():
    exported = _exported_functions(library.library_path())
    assert not [name for name in exported if name.lower().startswith("cblas_")]
    assert exported == set(library.SIGNATURES)


def test_no_blas_symbol_is_reachable_through_the_library():
    lib = ctypes.CDLL(library.library_path())
    for name in ("cblas_sgemm", "cblas_sgemv", "sgemm_"):
        assert not hasattr(lib, name)


def test_the_version_check_refuses_another_abi(fresh_state, monkeypatch, caplog):
    with pytest.raises(OSError, match="ABI version"):
        library.open_library(library.library_path(), abi=library.ABI_VERSION + 1)
    monkeypatch.setattr(library, "ABI_VERSION", library.ABI_VERSION + 1)
    with caplog.at_level("WARNING", logger=library.__name__):
        assert library.load() is None
    assert "rebuild" in caplog.text


def test_a_missing_build_gives_none(fresh_state, monkeypatch, caplog):
    monkeypatch.setattr(library, "library_path", lambda: None)
    with caplog.at_level("INFO", logger=library.__name__):
        assert library.load() is None
    assert "not built" in caplog.text


def test_switched_off_load_is_none(fresh_state, caplog):
    library.set_enabled(False)
    try:
        assert not library.enabled()
        with caplog.at_level("INFO", logger=library.__name__):
            assert library.load() is None and library.load() is None
        assert caplog.text.count("switched off") == 1  # one line, not one per call
        assert not library.sgemm_bound()
    finally:
        library.set_enabled(True)
    assert library.enabled() and library.load() is not None


def _pack(lib, w: np.ndarray) -> np.ndarray:
    n, k = w.shape
    panels = np.empty((-(-n // PANEL), k, PANEL), np.float32)
    assert lib.panel_pack(w.ctypes.data, n, k, panels.ctypes.data, 0, 1) == 0
    return panels


def _product(lib, x: np.ndarray, panels: np.ndarray, n: int, threads: int) -> np.ndarray:
    out = np.empty((x.shape[0], n), np.float32)
    assert lib.panel_product(x.ctypes.data, x.shape[0], x.shape[1], panels.ctypes.data, 0, n, None,
                             out.ctypes.data, threads) == 0
    return out


def test_the_pool_starts_workers_only_when_asked_for_them():
    """A fresh process: loading the library starts no thread; a two-thread call starts one worker,
    which later calls reuse; results do not depend on the thread count."""
    code = """
import os, sys, numpy as np
from dora_primespeech_mlx.cpu import library
sys.path.insert(0, "tests")  # this file by its own name: a dev package (split-lang) installs a `tests` package
from test_cpu_library import _pack, _product
tasks = lambda: len(os.listdir('/proc/self/task'))
before = tasks()
lib = library.load()
assert lib.ps_pool_workers() == 0 and tasks() == before, (lib.ps_pool_workers(), tasks(), before)
rng = np.random.default_rng(0)
w, x = rng.standard_normal((300, 64), np.float32), rng.standard_normal((5, 64), np.float32)
panels = _pack(lib, w)
alone = _product(lib, x, panels, 300, 1)
assert lib.ps_pool_workers() == 0
two = _product(lib, x, panels, 300, 2)
assert lib.ps_pool_workers() == 1 and tasks() == before + 1
assert np.array_equal(alone, two) and np.array_equal(_product(lib, x, panels, 300, 2), alone)
assert lib.ps_pool_workers() == 1
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr


def test_concurrent_callers_share_the_pool():
    """Callers on several threads at once: one holds the workers, the others compute alone; every
    result is right."""
    lib = library.load()
    rng = np.random.default_rng(1)
    w, x = rng.standard_normal((1000, 96), np.float32), rng.standard_normal((7, 96), np.float32)
    panels = _pack(lib, w)
    expected = _product(lib, x, panels, 1000, 1)
    failures = []

    def work():
        for _ in range(200):
            if not np.array_equal(_product(lib, x, panels, 1000, 2), expected):
                failures.append(1)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_a_forked_child_starts_its_own_pool():
    """The pool's workers do not survive fork: the child must start its own, not wait forever."""
    lib = library.load()
    rng = np.random.default_rng(2)
    w, x = rng.standard_normal((256, 64), np.float32), rng.standard_normal((5, 64), np.float32)
    panels = _pack(lib, w)
    expected = _product(lib, x, panels, 256, 2)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        signal.alarm(30)  # a hang kills the child (test fails) instead of the suite
        os._exit(0 if np.array_equal(_product(lib, x, panels, 256, 2), expected) else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_accelerate_installs_each_present_family(monkeypatch):
    calls = []

    class Family:
        def __init__(self, name):
            self.name = name

        def install(self, model):
            calls.append((self.name, model))
            return self.name == "t2s"

    monkeypatch.setattr(cpu, "_family", lambda name: None if name == "vocoder" else Family(name))
    model = object()
    assert cpu.accelerate(model) is model
    assert calls == [("t2s", model), ("encoders", model)]
    calls.clear()
    library.set_enabled(False)
    try:
        assert cpu.accelerate(model) is model and not calls
    finally:
        library.set_enabled(True)


def test_a_family_module_not_written_yet_is_skipped():
    assert cpu._family("no_such_family") is None


@pytest.mark.parametrize("half", [1, 0], ids=["float16-panels", "float32-panels"])
def test_the_specialised_product_kernel_gives_the_generic_kernels_bits(half):
    """The AVX-512 or AVX2 product kernel (where this CPU has one) sums each feature in the same order
    as the generic vector kernel: the same bits, whatever the rows, shapes and threads."""
    lib = library.load()
    if lib.panel_force_generic(0) == 0:
        pytest.skip("this CPU has no specialised product kernel")
    rng = np.random.default_rng(3)
    try:
        for rows in (1, 2, 6, 7, 13, 50):
            for n, k in ((1025, 64), (96, 512), (32, 7)):
                w = rng.standard_normal((n, k)).astype(np.float16).astype(np.float32)
                b = rng.standard_normal(n).astype(np.float32)
                x = rng.standard_normal((rows, k)).astype(np.float32)
                panels = np.empty((-(-n // PANEL), k, PANEL), np.float16 if half else np.float32)
                assert lib.panel_pack(w.ctypes.data, n, k, panels.ctypes.data, half, 1) == 0
                outs = []
                for generic in (0, 1):
                    lib.panel_force_generic(generic)
                    for threads in (1, 2):
                        out = np.empty((rows, n), np.float32)
                        assert lib.panel_product(x.ctypes.data, rows, k, panels.ctypes.data, half, n, b.ctypes.data,
                                                 out.ctypes.data, threads) == 0
                        outs.append(out)
                assert all(np.array_equal(outs[0], out) for out in outs[1:]), (rows, n, k)
    finally:
        lib.panel_force_generic(0)
