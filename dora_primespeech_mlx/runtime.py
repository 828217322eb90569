"""MLX device and dtype selection, and the OpenBLAS preload for MLX's Linux CPU build.

The Linux `mlx[cpu]` wheel links a reference BLAS that is ~50x slower than OpenBLAS. Loading an
OpenBLAS with standard cblas symbols into the global symbol scope before `mlx.core` is first
imported makes MLX's cblas calls resolve to it. `dora_primespeech_mlx/__init__.py` calls
`preload_openblas()` so that this happens before any module of the package imports MLX.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import logging
import math
import os
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import PrimeSpeechError
from .native import library_path

logger = logging.getLogger(__name__)

_OPENBLAS_STATE: dict[str, Any] = {"path": None, "why": "not attempted"}


def _openblas_candidates() -> list[str]:
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], sys.prefix}
    found: list[str] = []
    for root in sorted(roots):
        found += sorted(glob.glob(os.path.join(root, "cmeel.prefix", "lib", "libopenblas.so*")))
        found += sorted(glob.glob(os.path.join(root, "lib", "python*", "site-packages", "cmeel.prefix",
                                               "lib", "libopenblas.so*")))
    found += sorted(glob.glob("/usr/lib/*-linux-gnu/libopenblas.so.0"))
    found += sorted(glob.glob("/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0"))
    return found


# OpenBLAS cores whose kernels need AVX-512: a build made for one of them alone (no DYNAMIC_ARCH, as
# cmeel-openblas 0.3.31 is) dies with SIGILL on a CPU without it (seen on an AMD EPYC with AVX2).
_AVX512_CORES = ("SKYLAKEX", "COOPERLAKE", "SAPPHIRERAPIDS")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _unusable_reason(openblas: ctypes.CDLL) -> str | None:
    """Why this OpenBLAS cannot run on this CPU (its build names one AVX-512 core and the CPU lacks
    AVX-512), or None."""
    try:
        get_config = openblas.openblas_get_config
    except AttributeError:
        return None
    get_config.restype = ctypes.c_char_p
    config = (get_config() or b"").decode(errors="replace").split()
    if "DYNAMIC_ARCH" in config or not set(config) & set(_AVX512_CORES):
        return None
    if "avx512f" in _cpu_flags():
        return None
    return f"built for {' '.join(c for c in config if c in _AVX512_CORES)} only and this CPU has no AVX-512"


def _cpu_times(cores: set[int]) -> tuple[int, int] | None:
    """(idle, total) jiffies summed over `cores` from /proc/stat, or None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            lines = [line.split() for line in f if line.startswith("cpu") and line[3].isdigit()]
    except OSError:
        return None
    idle = total = 0
    for fields in lines:
        if int(fields[0][3:]) in cores:
            values = [int(v) for v in fields[1:9]]
            idle += values[3] + values[4]  # idle + iowait
            total += sum(values)
    return (idle, total) if total else None


def _own_cpu_ticks() -> int | None:
    """This process's user + system CPU time in clock ticks (the unit of /proc/stat), all threads."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))


class OtherLoad:
    """How many of this process's cores OTHER processes keep busy, as a moving average over about a
    second: the busy time of the usable cores (/proc/stat) minus this process's own CPU time
    (/proc/self/stat), sampled every `period` seconds by a daemon thread started on first use."""

    def __init__(self, period: float = 0.25, smoothing: float = 0.5):
        self.period, self.smoothing = period, smoothing
        self.cores = usable_cores()
        self._value: float | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _sample(self) -> tuple[float, int, int, int] | None:
        times, own = _cpu_times(self.cores), _own_cpu_ticks()
        if times is None or own is None:
            return None
        return time.monotonic(), times[1] - times[0], times[1], own

    def _run(self) -> None:
        last = self._sample()
        while last is not None:
            time.sleep(self.period)
            now = self._sample()
            if now is None:
                return
            total = now[2] - last[2]
            if total > 0:
                busy = (now[1] - last[1]) - (now[3] - last[3])
                cores = len(self.cores) * max(0.0, busy) / total
                with self._lock:
                    old = self._value
                    self._value = cores if old is None else old + self.smoothing * (cores - old)
            last = now

    def cores_busy(self) -> float | None:
        """Cores busy with other processes' work (0.0 .. usable cores); None before the first sample
        or where /proc cannot be read."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="primespeech-load", daemon=True)
            self._thread.start()
        with self._lock:
            return self._value


_OTHER_LOAD: list[OtherLoad] = []


def adapt_blas_threads() -> int | None:
    """Re-choose OpenBLAS's thread count from the current load of other processes, when the count is
    automatic (OPENBLAS_NUM_THREADS was not set) and no `blas_threads` block is active: all usable
    cores while they are free, one fewer per core that other work keeps busy (more than a fifth of a
    core counts). OpenBLAS's threads wait for each other at every product, so a thread whose core is
    taken stalls all of them (a busy second core made two threads 1.7x slower than one). Call it
    between requests; returns the count set, or None when nothing was changed."""
    api = _openblas_thread_api()
    if api is None or not _OPENBLAS_STATE.get("auto"):
        return None
    if not _OTHER_LOAD:
        _OTHER_LOAD.append(OtherLoad())
    monitor = _OTHER_LOAD[0]
    busy = monitor.cores_busy()
    if busy is None:
        return None
    threads = max(1, len(monitor.cores) - math.ceil(max(0.0, busy - 0.2)))
    with _BLAS_LOCK:
        if _BLAS_USERS["count"]:
            return None
        if api[0]() != threads:
            logger.debug("OpenBLAS threads -> %d (other processes keep %.2f cores busy)", threads, busy)
            api[1](threads)
    return threads


def usable_cores() -> set[int]:
    """The CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def auto_blas_threads(sample_seconds: float = 0.1) -> int:
    """OpenBLAS threads for this process: the cores it may use that are idle now (at least one),
    from a short /proc/stat sample (the load average lags by a minute and counts finished runs).

    OpenBLAS's workers spin between calls: on idle cores two threads decode the T2S GPT 1.5x faster
    than one, but with one core taken by another process they ran it 1.7x slower than one thread.
    """
    cores = usable_cores()
    before = _cpu_times(cores)
    if before is None:
        return len(cores)
    time.sleep(sample_seconds)
    after = _cpu_times(cores)
    if after is None or after[1] <= before[1]:
        return len(cores)
    idle_share = (after[0] - before[0]) / (after[1] - before[1])
    return max(1, min(len(cores), int(len(cores) * idle_share + 0.5)))


def preload_openblas() -> str | None:
    """Load OpenBLAS globally on Linux before MLX is imported. Returns the library path or None."""
    if _OPENBLAS_STATE["path"] or not sys.platform.startswith("linux"):
        return _OPENBLAS_STATE["path"]
    if os.environ.get("PRIMESPEECH_NO_OPENBLAS"):
        _OPENBLAS_STATE["why"] = "disabled by PRIMESPEECH_NO_OPENBLAS"
        return None
    if "mlx.core" in sys.modules:
        _OPENBLAS_STATE["why"] = "mlx.core was imported before dora_primespeech_mlx"
        return None
    if not os.environ.get("OPENBLAS_NUM_THREADS"):
        os.environ["OPENBLAS_NUM_THREADS"] = str(auto_blas_threads())
        _OPENBLAS_STATE["threads"] = f"{os.environ['OPENBLAS_NUM_THREADS']} threads (auto, adapts to load)"
        _OPENBLAS_STATE["auto"] = True
    else:
        _OPENBLAS_STATE["threads"] = f"{os.environ['OPENBLAS_NUM_THREADS']} threads (OPENBLAS_NUM_THREADS)"
    errors = []
    for path in _openblas_candidates():
        try:
            openblas = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
        except OSError as exc:
            errors.append(str(exc))
            continue
        unusable = _unusable_reason(openblas)
        if unusable:
            errors.append(f"{path}: {unusable} (apt-get install libopenblas0-pthread)")
            continue
        # the forwarder must enter the global scope before OpenBLAS for its cblas_sgemm to win
        _load_gemv_forward(openblas)
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        _OPENBLAS_STATE.update(path=path, why="loaded")
        return path
    if errors:
        # cmeel-openblas needs the system's libgfortran.so.5 (Debian/Ubuntu: apt-get install libgfortran5).
        _OPENBLAS_STATE["why"] = "no usable OpenBLAS: " + "; ".join(
            e if "libopenblas0-pthread" in e else f"{e} (apt-get install libgfortran5)" for e in errors)
    else:
        _OPENBLAS_STATE["why"] = "no libopenblas found (pip install cmeel-openblas)"
    return None


def _load_gemv_forward(openblas: ctypes.CDLL) -> None:
    """Load native/gemv_forward.c's library globally and bind it to `openblas`. Skipped when it was
    not built (no C compiler at install time) or does not load: then sgemm serves every product."""
    path = library_path("_gemv_forward")
    if path is None:
        return
    try:
        forward = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        pointers = [ctypes.cast(getattr(openblas, name), ctypes.c_void_p) for name in ("cblas_sgemm", "cblas_sgemv")]
        if forward.primespeech_bind_blas(*pointers) != 0:
            raise OSError("binding to OpenBLAS failed")
        forward.primespeech_bind_threads(ctypes.cast(openblas.openblas_get_num_threads, ctypes.c_void_p))
    except (OSError, AttributeError) as exc:
        logger.warning("gemv forwarding unavailable (%s): OpenBLAS's sgemm serves every product", exc)
        return
    _OPENBLAS_STATE["forward_lib"] = forward


def _forwarder_count(symbol: str) -> int | None:
    forward = _OPENBLAS_STATE.get("forward_lib")
    if forward is None:
        return None
    counter = getattr(forward, symbol)
    counter.restype = ctypes.c_long
    return int(counter())


def gemv_forwarded_calls() -> int | None:
    """How many products the gemv forwarder has handed to sgemv so far; None when it is not loaded."""
    return _forwarder_count("primespeech_forwarded_calls")


def skinny_product_calls() -> int | None:
    """How many 2..16-row products the forwarder has computed itself; None when it is not loaded."""
    return _forwarder_count("primespeech_skinny_calls")


def openblas_status() -> str:
    """A short human-readable account of the BLAS that MLX's CPU backend uses."""
    path = _OPENBLAS_STATE["path"]
    if not path:
        return f"reference BLAS ({_OPENBLAS_STATE['why']})"
    return (f"openblas: {path}, {_OPENBLAS_STATE.get('threads', 'default threads')}"
            + (", gemv forwarding" if _OPENBLAS_STATE.get("forward_lib") else ""))


def _openblas_thread_api():
    """OpenBLAS's (get, set) thread-count functions when MLX's BLAS is OpenBLAS, else None."""
    try:
        lib = ctypes.CDLL(None)
        get, set_ = lib.openblas_get_num_threads, lib.openblas_set_num_threads
    except (OSError, AttributeError):
        return None
    get.restype = ctypes.c_int
    set_.argtypes = [ctypes.c_int]
    return get, set_


def blas_thread_count() -> int | None:
    """OpenBLAS's current thread count, or None when MLX does not use OpenBLAS."""
    api = _openblas_thread_api()
    return int(api[0]()) if api else None


_BLAS_LOCK = threading.Lock()
_BLAS_USERS: dict[str, Any] = {"count": 0, "restore": None}


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Run the enclosed (evaluated) MLX work with OpenBLAS limited to `n` threads, for code that
    spreads independent products over several MLX streams itself; a no-op for other BLAS.
    Nested and overlapping users (threads) share the setting; the last one out restores the old count."""
    api = _openblas_thread_api()
    if api is None:
        yield
        return
    get, set_ = api
    with _BLAS_LOCK:
        if _BLAS_USERS["count"] == 0:
            _BLAS_USERS["restore"] = get()
        _BLAS_USERS["count"] += 1
        set_(n)
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_USERS["count"] -= 1
            if _BLAS_USERS["count"] == 0:
                set_(_BLAS_USERS["restore"])


@dataclass(frozen=True)
class Runtime:
    """Where models run and in which floating-point type."""

    device: str  # "cpu" or "gpu"
    dtype_name: str  # "float32", "float16" or "bfloat16"

    @property
    def dtype(self):
        import mlx.core as mx

        return getattr(mx, self.dtype_name)


_DTYPES = ("float32", "float16", "bfloat16")


def select_runtime(device: str = "auto", dtype: str = "auto") -> Runtime:
    """Pick the MLX device and dtype and make that device MLX's default.

    device: "auto" (MLX's default: Metal or CUDA GPU when present, else CPU), "cpu" or "gpu".
    dtype: "auto" (float32 on CPU, where half precision has no BLAS path; float16 on a GPU) or a name.
    """
    import mlx.core as mx

    device = (device or "auto").lower()
    dtype = (dtype or "auto").lower()
    if device not in ("auto", "cpu", "gpu"):
        raise PrimeSpeechError(f"unknown device {device!r}: use auto, cpu or gpu")
    if dtype != "auto" and dtype not in _DTYPES:
        raise PrimeSpeechError(f"unknown dtype {dtype!r}: use auto, {', '.join(_DTYPES)}")
    if device == "auto":
        device = "gpu" if mx.default_device() == mx.gpu else "cpu"
    if device == "gpu":
        if not mx.is_available(mx.gpu):
            raise PrimeSpeechError(
                "no MLX GPU backend here: use device cpu, or install MLX with Metal (macOS) "
                "or the CUDA build (pip install 'dora-primespeech-mlx[cuda]')"
            )
        mx.set_default_device(mx.gpu)
    else:
        mx.set_default_device(mx.cpu)
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "float16"
    return Runtime(device=device, dtype_name=dtype)
