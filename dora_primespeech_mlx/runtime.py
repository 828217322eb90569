"""MLX device and dtype selection, and the OpenBLAS preload for MLX's Linux CPU build.

The Linux `mlx[cpu]` wheel links a reference BLAS that is ~50x slower than OpenBLAS. Loading an
OpenBLAS with standard cblas symbols into the global symbol scope before `mlx.core` is first
imported makes MLX's cblas calls resolve to it. `dora_primespeech_mlx/__init__.py` calls
`preload_openblas()` so that this happens before any module of the package imports MLX.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import sys
import sysconfig
from dataclasses import dataclass

from .errors import PrimeSpeechError

logger = logging.getLogger(__name__)

_OPENBLAS_STATE: dict[str, str | None] = {"path": None, "why": "not attempted"}


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
    # One BLAS thread unless the user says otherwise: with two, OpenBLAS's spinning workers fight MLX,
    # a second model or torch for the cores, and a busy 2-core machine ran the engine 4x slower.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    errors = []
    for path in _openblas_candidates():
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            errors.append(str(exc))
            continue
        _OPENBLAS_STATE.update(path=path, why="loaded")
        return path
    if errors:
        # cmeel-openblas needs the system's libgfortran.so.5 (Debian/Ubuntu: apt-get install libgfortran5).
        _OPENBLAS_STATE["why"] = f"OpenBLAS failed to load: {errors[-1]} (apt-get install libgfortran5)"
    else:
        _OPENBLAS_STATE["why"] = "no libopenblas found (pip install cmeel-openblas)"
    return None


def openblas_status() -> str:
    """A short human-readable account of the BLAS that MLX's CPU backend uses."""
    path = _OPENBLAS_STATE["path"]
    return f"openblas: {path}" if path else f"reference BLAS ({_OPENBLAS_STATE['why']})"


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
