"""Error measures shared by the parity tests."""

from __future__ import annotations

import numpy as np


def rel_err(ours, ref) -> float:
    """Largest absolute difference relative to the reference's peak, computed in float64."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def load_model(kind: str, path, *, kernels: bool):
    """Our `kind` model from `path` through the package's loader, with the CPU accelerator switched on
    (the native twins installed, as loaded on this CPU) or off (pure MLX, as on every other device) for
    this load only; the switch is restored afterwards."""
    import dora_primespeech_mlx  # noqa: F401  (OpenBLAS before MLX)
    from dora_primespeech_mlx import loading
    from dora_primespeech_mlx.cpu import library

    enabled = library.enabled()
    library.set_enabled(kernels)
    try:
        return loading.load_model(kind, path)
    finally:
        library.set_enabled(enabled)
