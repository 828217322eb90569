"""Error measures shared by the parity tests."""

from __future__ import annotations

import numpy as np


def rel_err(ours, ref) -> float:
    """Largest absolute difference relative to the reference's peak, computed in float64."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())
