"""The native libraries' C sources and builds; they are loaded with ctypes (runtime.py,
models/native_ops.py, models/panel_ops.py), never imported as Python modules."""

from __future__ import annotations

import glob
import os


def library_path(name: str) -> str | None:
    """The built library `name` (e.g. "_panel_kernels") in this folder, or None when it was not built."""
    found = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}*.so")))
    return found[0] if found else None
