"""The CPU accelerator: native twins of the modules its C kernels serve, installed into a loaded
model by `accelerate(model)` (called only by `runtime.accelerate`, on the CPU device with the
switch on; the models never import this package).

One C library (cpu/native/, loaded by `library.load()`), one worker pool in it, and one family
module per model kind, each exposing `install(model) -> bool` (True when it changed something).
"""

from __future__ import annotations

import importlib
import logging
from typing import TypeVar

from . import library

logger = logging.getLogger(__name__)

FAMILIES = ("t2s", "encoders", "vocoder")

M = TypeVar("M")


def _family(name: str):
    """The family module `name`, or None where this package has none (yet)."""
    full = f"{__name__}.{name}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as exc:
        if exc.name != full:
            raise
        return None


def accelerate(model: M) -> M:
    """Swap the modules of `model` that the CPU kernels serve for their native twins, in place, and
    return the model; untouched when the library is not built or switched off."""
    if library.load() is None:
        return model
    for name in FAMILIES:
        family = _family(name)
        if family is not None and family.install(model):
            logger.debug("CPU kernels installed: %s into %s", name, type(model).__name__)
    return model
