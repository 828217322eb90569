"""Products on weights packed once into panels (cpu/native/panels.c).

OpenBLAS's sgemm packs the whole weight matrix on every call, which costs more than the arithmetic
when the activations have few rows: a T2S decode step (1-64 rows) or a RoBERTa sentence (~50 rows).
The panel kernels take weights packed once, at load: panels of 32 output features [ceil(n / 32), k,
32], zero-padded, float16 where every value of the matrix is exactly a float16 (upstream stores its
checkpoints in half precision, so nothing is rounded) and float32 otherwise; arithmetic is float32.
"""

from __future__ import annotations

import ctypes

import mlx.core as mx
import numpy as np

from ..errors import PrimeSpeechError
from ..runtime import usable_cores

PANEL = 32  # output features per packed weight panel


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


def unpack_panels(panels: mx.array, n: int) -> mx.array:
    """The transposed weight W^T [k, n] in float32 from its panels [ceil(n / 32), k, 32] (exact)."""
    blocks, k, width = panels.shape
    return panels.astype(mx.float32).transpose(1, 0, 2).reshape(k, blocks * width)[:, :n]


class PackedLinear:
    """y = x @ W^T + b with W packed once (float16 panels only where that is exact), on NumPy arrays."""

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
