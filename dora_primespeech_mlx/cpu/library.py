"""The one ctypes loader of the CPU accelerator's C library (cpu/native/*.c, built as the extension
`dora_primespeech_mlx.cpu._kernels`; it is loaded with ctypes, never imported as a Python module).

Every exported function's signature is declared here, once, for ABI version `ABI_VERSION`; a build
of another version is refused. `load()` gives the library, or None (with one log line why) when it
was not built (no C compiler at install time), does not match, or the accelerator is switched off
(`set_enabled(False)`). Nothing is loaded or started at import.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.machinery
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

ABI_VERSION = 1  # cpu/native/library.c: ps_abi_version()

_P, _LONG, _INT, _FLOAT = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float

# name: argument types; every function returns an int (0, or a negative status; see the C sources)
SIGNATURES: dict[str, list[Any]] = {
    # library.c, pool.c
    "ps_abi_version": [],
    "ps_pool_workers": [],
    # encoders.c: HuBERT / RoBERTa kernels
    "ps_bind_sgemm": [_P],
    "ps_conv_rows": [],
    "ps_gelu": [_P, _P, _INT, _LONG],
    "ps_add_layer_norm": [_P, _P, _P, _P, _INT, _LONG, _P, _P, _FLOAT],
    "ps_grouped_conv": [_P, _P, _LONG, _LONG, _LONG, _LONG, _P, _P, _INT],
    "ps_windows": [_P, _P, _P, _INT, _LONG, _LONG],
    "ps_small_conv_gelu": [_P, _P, _P, _INT, _LONG, _LONG, _P, _P, _LONG],
    "ps_attention": [_INT, _P, _P, _P, _P, _INT, _LONG, _LONG, _FLOAT, _P],
    "ps_linear": [_P, _P, _LONG, _LONG, _P, _P, _LONG, _INT, _INT],
    "ps_pair_conv": [_P, _P, _LONG, _LONG, _P, _P, _P, _LONG, _INT, _LONG, _P, _P, _P, _INT],
    # vocoder.c: HiFi-GAN convolutions
    "ps_vconv_pack": [_P, _P, _LONG, _LONG, _LONG],
    "ps_vconv_level": [_INT],
    "ps_vconv": [_P, _P, _P, _P, _P, _P, _LONG, _LONG, _LONG, _LONG, _LONG, _LONG, _LONG,
                 _INT, _FLOAT, _INT, _FLOAT, _FLOAT, _INT],
    # panels.c: products on packed weight panels
    "panel_force_generic": [_INT],
    "panel_pack": [_P, _LONG, _LONG, _P, _INT, _INT],
    "panel_product": [_P, _LONG, _LONG, _P, _INT, _LONG, _P, _P, _INT],
    # t2s.c: the T2S decode step and prefill attention
    "t2s_step": [_P, _FLOAT, _P, _P, _P, _P, _P, _P, _P],
    "t2s_prefill_attention": [_P, _P, _P, _P, _P, _P, _P],
}

_STATE: dict[str, Any] = {"enabled": True, "tried": False, "lib": None, "sgemm": False, "logged_off": False}


def library_path() -> str | None:
    """The built library (cpu/_kernels.<python extension suffix>), or None when it was not built."""
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        found = sorted(glob.glob(os.path.join(here, "_kernels" + suffix)))
        if found:
            return found[0]
    return None


def open_library(path: str, abi: int | None = None) -> ctypes.CDLL:
    """The library at `path` with every signature declared; OSError when it does not load, is of
    another ABI version than `abi` (default ABI_VERSION), or lacks a declared function."""
    abi = ABI_VERSION if abi is None else abi
    lib = ctypes.CDLL(path)
    try:
        version = lib.ps_abi_version
    except AttributeError as exc:
        raise OSError(f"{path} has no ps_abi_version: rebuild it (pip install -e .)") from exc
    version.restype = ctypes.c_int
    if version() != abi:
        raise OSError(f"{path} is ABI version {version()}, this package needs {abi}: rebuild it (pip install -e .)")
    for name, argtypes in SIGNATURES.items():
        try:
            function = getattr(lib, name)
        except AttributeError as exc:
            raise OSError(f"{path} lacks {name}: rebuild it (pip install -e .)") from exc
        function.argtypes = argtypes
        function.restype = ctypes.c_int
    return lib


def _bind_sgemm(lib: ctypes.CDLL) -> bool:
    """Bind the encoder kernels' products to the process's global cblas_sgemm (the OpenBLAS that
    runtime.preload_openblas put there for MLX); False where there is none."""
    try:
        sgemm = ctypes.cast(ctypes.CDLL(None).cblas_sgemm, ctypes.c_void_p)
    except (OSError, AttributeError):
        return False
    return lib.ps_bind_sgemm(sgemm) == 0


def load() -> ctypes.CDLL | None:
    """The CPU library, or None when it was not built, does not match this package, or the
    accelerator is switched off; loaded once per process."""
    if not _STATE["enabled"]:
        if not _STATE["logged_off"]:
            logger.info("CPU kernels switched off: pure-MLX paths")
            _STATE["logged_off"] = True
        return None
    if not _STATE["tried"]:
        _STATE["tried"] = True
        path = library_path()
        if path is None:
            logger.info("CPU kernels not built (pip install -e . with a C compiler): pure-MLX paths")
            return None
        try:
            _STATE["lib"] = open_library(path)
        except OSError as exc:
            logger.warning("CPU kernels unusable (%s): pure-MLX paths", exc)
            return None
        _STATE["sgemm"] = _bind_sgemm(_STATE["lib"])
    return _STATE["lib"]


def sgemm_bound() -> bool:
    """Whether the kernels that call BLAS (ps_attention, ps_linear, ps_pair_conv) can run: the
    library is loaded and a cblas_sgemm was bound."""
    return load() is not None and _STATE["sgemm"]


def set_enabled(enabled: bool) -> None:
    """Switch the CPU kernels on (default) or off (then `load()` is None and the models run pure MLX)."""
    _STATE["enabled"] = bool(enabled)
    _STATE["logged_off"] = False


def enabled() -> bool:
    """Whether the CPU kernels are switched on (built or not)."""
    return _STATE["enabled"]
