"""Products on pre-packed weight panels (native/panel_kernels.c), loaded with ctypes.

OpenBLAS's sgemm packs the whole weight matrix on every call, which costs more than the arithmetic
when the activations have few rows: a T2S decode step (1-16 rows) or a RoBERTa sentence (~50 rows).
The panel kernels take weights packed once, at load, and compute float32 products about 1.5x faster
than OpenBLAS at 50 rows. The same library holds the T2S decode step (`t2s_native`). Optional:
without the built library, or off the CPU, `panel_library()` is None and the callers use MLX/BLAS.
"""

from __future__ import annotations

import ctypes
import logging

import mlx.core as mx
import numpy as np

from ..errors import PrimeSpeechError
from ..native import library_path
from ..runtime import usable_cores

logger = logging.getLogger(__name__)

_VERSION = 4
PANEL = 32  # output features per packed weight panel
_STATE: dict = {"lib": None, "tried": False, "enabled": True}


def _load() -> ctypes.CDLL | None:
    path = library_path("_panel_kernels")
    if path is None:
        logger.info("native panel kernels not built (pip install -e . with a C compiler): MLX/BLAS paths")
        return None
    p = ctypes.c_void_p
    try:
        lib = ctypes.CDLL(path)
        if lib.panel_version() != _VERSION:
            raise OSError(f"version {lib.panel_version()}, expected {_VERSION}: rebuild it")
        lib.t2s_step.argtypes = [p, ctypes.c_float, p, p, p, p, p, p, p]
        lib.t2s_prefill_attention.argtypes = [p, p, p, p, p, p, p]
        lib.panel_force_generic.argtypes = [ctypes.c_int]
        lib.panel_pack.argtypes = [p, ctypes.c_long, ctypes.c_long, p, ctypes.c_int, ctypes.c_int]
        lib.panel_product.argtypes = [p, ctypes.c_long, ctypes.c_long, p, ctypes.c_int, ctypes.c_long, p, p,
                                      ctypes.c_int]
    except (OSError, AttributeError) as exc:
        logger.warning("native panel kernels unusable (%s): MLX/BLAS paths", exc)
        return None
    return lib


def panel_library() -> ctypes.CDLL | None:
    """The panel kernels when built, enabled and MLX computes on the CPU; otherwise None."""
    if not _STATE["enabled"] or mx.default_device() != mx.cpu:
        return None
    if not _STATE["tried"]:
        _STATE["lib"] = _load()
        _STATE["tried"] = True
    return _STATE["lib"]


def set_panel_kernels(enabled: bool) -> None:
    """Allow (default) or forbid the panel kernels (and with them the native T2S decode step)."""
    _STATE["enabled"] = bool(enabled)


def _float32_rows(weight) -> np.ndarray:
    """A row-contiguous float32 NumPy array of `weight` (MLX or NumPy): a view where possible."""
    if isinstance(weight, mx.array):
        if weight.dtype != mx.float32:
            weight = weight.astype(mx.float32)
        mx.eval(weight)
        weight = np.array(weight, copy=False)
    return np.ascontiguousarray(weight, dtype=np.float32)


def pack_panels(lib: ctypes.CDLL, weight, half: bool | None = None) -> np.ndarray | None:
    """[n, k] (torch Linear layout, MLX or NumPy) -> panels [ceil(n / 32), k, 32], zero-padded:
    float16 where every value is exactly a float16 (half None: whichever holds; True: float16 or
    None), else float32."""
    w = _float32_rows(weight)
    n, k = w.shape
    threads = min(2, len(usable_cores()))
    shape = (-(-n // PANEL), k, PANEL)
    if half is not False:
        out = np.empty(shape, np.float16)
        if lib.panel_pack(w.ctypes.data, n, k, out.ctypes.data, 1, threads) == 0:
            return out
        if half:
            return None
    out = np.empty(shape, np.float32)
    lib.panel_pack(w.ctypes.data, n, k, out.ctypes.data, 0, threads)
    return out


class PackedLinear:
    """y = x @ W^T + b with W packed once (float16 panels only where that is exact)."""

    def __init__(self, lib: ctypes.CDLL, weight, bias=None):
        self.lib = lib
        self.out_features, self.in_features = weight.shape
        self.panels = pack_panels(lib, weight)
        self.half = self.panels.dtype == np.float16
        self.bias = None if bias is None else np.array(_float32_rows(bias))

    def __call__(self, x: np.ndarray, threads: int = 1, out: np.ndarray | None = None) -> np.ndarray:
        """x [rows, in] float32 C-contiguous -> [rows, out] (written into `out` when given)."""
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != self.in_features or not x.flags.c_contiguous:
            raise PrimeSpeechError(f"packed product needs float32 [rows, {self.in_features}] C-contiguous input, "
                                   f"got {x.dtype} {x.shape}")
        if out is None:
            out = np.empty((x.shape[0], self.out_features), np.float32)
        bias = None if self.bias is None else self.bias.ctypes.data
        status = self.lib.panel_product(x.ctypes.data, x.shape[0], self.in_features, self.panels.ctypes.data,
                                        int(self.half), self.out_features, bias, out.ctypes.data, int(threads))
        if status != 0:
            raise PrimeSpeechError(f"packed product refused its arguments (status {status})")
        return out
