"""Products on pre-packed weight panels (native/panel_kernels.c), loaded with ctypes.

OpenBLAS's sgemm packs the whole weight matrix on every call, which costs more than the arithmetic
when the activations have few rows: a T2S decode step (1-16 rows) or a RoBERTa sentence (~50 rows).
The panel kernels take weights packed once, at load, and compute float32 products about 1.5x faster
than OpenBLAS at 50 rows. The same library holds the T2S decode step (`t2s_native`). Optional:
without the built library, or off the CPU, `panel_library()` is None and the callers use MLX/BLAS.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os

import mlx.core as mx
import numpy as np

from ..errors import PrimeSpeechError

logger = logging.getLogger(__name__)

_VERSION = 2
PANEL = 32  # output features per packed weight panel
_STATE: dict = {"lib": None, "tried": False, "enabled": True}


def _load() -> ctypes.CDLL | None:
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "native")
    found = sorted(glob.glob(os.path.join(folder, "_panel_kernels*.so")))
    if not found:
        logger.info("native panel kernels not built (pip install -e . with a C compiler): MLX/BLAS paths")
        return None
    p = ctypes.c_void_p
    try:
        lib = ctypes.CDLL(found[0])
        if lib.panel_version() != _VERSION:
            raise OSError(f"version {lib.panel_version()}, expected {_VERSION}: rebuild it")
        lib.t2s_step.argtypes = [p, ctypes.c_float, p, p, p, p, p, p, p]
        lib.t2s_prefill_attention.argtypes = [p, p, p, p, p, p, p]
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


def exactly_half(arrays) -> bool:
    """Whether every value of `arrays` is a float16 value (packing them as float16 changes nothing)."""
    return all(np.array_equal(a.astype(np.float16).astype(np.float32), a) for a in arrays)


def pack_panels(weight: np.ndarray, half: bool) -> np.ndarray:
    """[n, k] (torch Linear layout) -> panels [ceil(n / 32), k, 32], zero-padded, float16 or float32."""
    n, k = weight.shape
    padded = np.zeros((-(-n // PANEL) * PANEL, k), np.float32)
    padded[:n] = weight
    panels = padded.reshape(-1, PANEL, k).transpose(0, 2, 1)
    return np.ascontiguousarray(panels, dtype=np.float16 if half else np.float32)


class PackedLinear:
    """y = x @ W^T + b with W packed once (float16 panels only where that is exact)."""

    def __init__(self, lib: ctypes.CDLL, weight, bias=None):
        w = np.ascontiguousarray(np.array(weight, dtype=np.float32))
        self.lib = lib
        self.out_features, self.in_features = w.shape
        self.half = exactly_half([w])
        self.panels = pack_panels(w, self.half)
        self.bias = None if bias is None else np.ascontiguousarray(np.array(bias, dtype=np.float32))

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
