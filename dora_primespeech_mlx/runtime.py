"""MLX device and dtype selection; the OpenBLAS preload for MLX's Linux CPU build; the process's
CPU policy (`prepare`) and the CPU accelerator's one dispatch point (`accelerate`).

The Linux `mlx[cpu]` wheel links a reference BLAS that is ~50x slower than OpenBLAS. Loading an
OpenBLAS with standard cblas symbols into the global symbol scope before `mlx.core` is first
imported makes MLX's cblas calls resolve to it. `dora_primespeech_mlx/__init__.py` calls
`preload_openblas()` so that this happens before any module of the package imports MLX; that
dlopen is all importing the package does. The node and the CLI call `prepare(config)` at start-up
(BLAS threads through OpenBLAS's own API, the CPU-kernel switch), and every model loader passes
its model through `accelerate(model)`.
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
from typing import Any, TypeVar

from .errors import PrimeSpeechError

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
    """Re-choose OpenBLAS's thread count from the current load of other processes, when `prepare`
    chose the count (OPENBLAS_NUM_THREADS was not set) and no `blas_threads` block is active: all usable
    cores while they are free, one fewer per core that other work keeps busy (more than a fifth of a
    core counts). OpenBLAS's threads wait for each other at every product, so a thread whose core is
    taken stalls all of them (a busy second core made two threads 1.7x slower than one). Call it
    between requests (the native T2S step follows the same count); the sampling thread starts on the
    first such call. Returns the count set, or None when nothing was changed."""
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
    """Load OpenBLAS globally on Linux before MLX is imported (the only thing importing the package
    does: no environment writes, no /proc sampling, no threads of ours). Returns the library path or
    None. PRIMESPEECH_NO_OPENBLAS skips it (processes that run torch beside MLX)."""
    if _OPENBLAS_STATE["path"] or not sys.platform.startswith("linux"):
        return _OPENBLAS_STATE["path"]
    if os.environ.get("PRIMESPEECH_NO_OPENBLAS"):
        _OPENBLAS_STATE["why"] = "disabled by PRIMESPEECH_NO_OPENBLAS"
        return None
    if "mlx.core" in sys.modules:
        _OPENBLAS_STATE["why"] = "mlx.core was imported before dora_primespeech_mlx"
        return None
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


def openblas_status() -> str:
    """A short human-readable account of the BLAS that MLX's CPU backend uses."""
    path = _OPENBLAS_STATE["path"]
    if not path:
        return f"reference BLAS ({_OPENBLAS_STATE['why']})"
    return f"openblas: {path}, {blas_thread_count()} threads ({_OPENBLAS_STATE.get('policy', 'OpenBLAS default')})"


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


def prepare(config: Any) -> None:
    """Set the process's CPU policy at start-up, before any model is loaded (the node and the CLI
    call it): OpenBLAS's thread count through OpenBLAS's own API, and the CPU accelerator's switch.

    config: a NodeConfig; its `cpu_kernels` ("auto" or "off") switches the CPU kernels. Called before
    MLX is loaded, it also sizes MLX's CUDA convolution plan cache (MLX_CUDA_CONV_CACHE_SIZE; see
    CUDA_CONV_CACHE_SIZE) and, off macOS, its CUDA graphs (MLX_MAX_MB_PER_BUFFER; see CUDA_GRAPH_MB),
    and for dtype float32 turns TF32 off (MLX_ENABLE_TF32=0): the three MLX environment variables it
    may set, each only where the user has not. Threads: an
    OPENBLAS_NUM_THREADS given in the environment is OpenBLAS's own setting, honoured by OpenBLAS
    and left alone; otherwise OpenBLAS gets the usable cores that are idle now, from a 0.1 s
    /proc/stat sample (on idle cores two threads decode 1.5x faster than one; with a core taken by
    another process, two ran 1.7x slower than one), then `adapt_blas_threads` follows the load.
    """
    _cuda_settings()
    _float32_precision(getattr(config, "dtype", "auto"))
    _set_cpu_kernels(getattr(config, "cpu_kernels", "auto") != "off")
    api = _openblas_thread_api()
    if api is None:
        return
    if os.environ.get("OPENBLAS_NUM_THREADS"):  # read by OpenBLAS itself when it was loaded
        _OPENBLAS_STATE.update(policy="OPENBLAS_NUM_THREADS", auto=False)
        return
    threads = auto_blas_threads()
    api[1](threads)
    _OPENBLAS_STATE.update(policy="auto: the cores idle at start-up", auto=True)
    logger.debug("OpenBLAS threads: %d (idle usable cores at start-up)", threads)


# cuDNN plans MLX's CUDA backend keeps (its default is 128). Streaming SoVITS decodes chunks of varying
# length: one utterance needs ~230 convolution plans, and with 128 the first, second and last chunks
# rebuilt ~55 plans each (2.4 ms apiece: streaming 2.3x slower on an H100). MLX reads the setting when
# it is loaded, and only its CUDA backend uses it (Metal compiles its kernels by name, not per length).
CUDA_CONV_CACHE_SIZE = "4096"


# Inputs, in MB, that MLX's CUDA backend gathers into one CUDA graph before launching it (on an H100 its
# default is 1,000 MB and 100 kernels; Metal's command buffers take 40-50 MB). A queued graph keeps every
# buffer it reads until it has run: on an H100 a SoVITS pass of 250 frames peaked 658 MB above the loaded
# models with the default, 378-421 MB with 50, and the bench text's real-time factor was 0.016-0.017
# against 0.020-0.021 (one process each, docs/benchmarks.md). Linux only: on macOS MLX runs Metal, whose
# own per-device setting is left alone.
CUDA_GRAPH_MB = "50"


def _cuda_settings() -> None:
    """MLX_CUDA_CONV_CACHE_SIZE and, off macOS, MLX_MAX_MB_PER_BUFFER (unless the user set them), while
    MLX is not loaded yet: prepare() runs before anything imports mlx in the node and the CLI. Too late
    once MLX is loaded: then untouched."""
    if "mlx.core" not in sys.modules:
        os.environ.setdefault("MLX_CUDA_CONV_CACHE_SIZE", CUDA_CONV_CACHE_SIZE)
        if sys.platform != "darwin":
            os.environ.setdefault("MLX_MAX_MB_PER_BUFFER", CUDA_GRAPH_MB)


def _float32_precision(dtype: str) -> None:
    """PRIMESPEECH_DTYPE=float32 means float32 on a GPU too: MLX computes float32 products and
    convolutions in TF32 unless MLX_ENABLE_TF32=0 (read at its first product), and the SoVITS waveform
    was then 2.0e-3 (max abs) from upstream's float32 instead of 4e-6 (H100). Left alone if set."""
    if dtype == "float32":
        os.environ.setdefault("MLX_ENABLE_TF32", "0")


def _set_cpu_kernels(on: bool) -> None:
    """The CPU accelerator's switch (cpu.library.set_enabled), imported only to switch it off or
    where it is already loaded: it is on by default."""
    library = sys.modules.get("dora_primespeech_mlx.cpu.library")
    if library is None and not on:
        from .cpu import library
    if library is not None:
        library.set_enabled(on)


M = TypeVar("M")


def accelerate(model: M) -> M:
    """The CPU accelerator's one dispatch point, for every loaded model: on the CPU device with the
    CPU kernels switched on, `cpu.accelerate(model)` swaps the modules its kernels serve for native
    twins; elsewhere the model is returned untouched and cpu/ is never imported."""
    import mlx.core as mx

    if mx.default_device() != mx.cpu:
        return model
    library = sys.modules.get("dora_primespeech_mlx.cpu.library")
    if library is not None and not library.enabled():
        return model
    from . import cpu

    return cpu.accelerate(model)


# -- memory ----------------------------------------------------------------------------------------
class _RusageInfoV0(ctypes.Structure):
    """macOS `struct rusage_info_v0` (sys/resource.h), for proc_pid_rusage."""

    _fields_ = [("ri_uuid", ctypes.c_uint8 * 16)] + [(name, ctypes.c_uint64) for name in (
        "ri_user_time", "ri_system_time", "ri_pkg_idle_wkups", "ri_interrupt_wkups", "ri_pageins",
        "ri_wired_size", "ri_resident_size", "ri_phys_footprint", "ri_proc_start_abstime",
        "ri_proc_exit_abstime")]


def resident_bytes() -> int | None:
    """This process's resident set size: /proc on Linux, proc_pid_rusage on macOS; None elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    if sys.platform == "darwin":
        try:
            info = _RusageInfoV0()
            if ctypes.CDLL("/usr/lib/libSystem.B.dylib").proc_pid_rusage(os.getpid(), 0, ctypes.byref(info)) == 0:
                return int(info.ri_resident_size)
        except (OSError, AttributeError):
            pass
    return None


def mlx_peak_bytes() -> int | None:
    """MLX's peak memory (`mx.get_peak_memory`), None where MLX cannot tell."""
    import mlx.core as mx

    try:
        return int(mx.get_peak_memory())
    except Exception:  # an MLX without get_peak_memory or a broken install: unknown
        return None
