"""Core ML encoders (CNHuBERT, Chinese RoBERTa) for Apple's Neural Engine, with MLX as the fallback.

`primespeech-mlx coreml-export` turns the converted MLX encoder weights into two ML Program packages
(`hubert.mlpackage`, `roberta.mlpackage`) stored beside them; `dora_primespeech_mlx.encoders` picks
Core ML or MLX at run time. coremltools is optional (extra `coreml`) and imported only when needed.

Modules: `programs` (the MIL graphs), `export` (packages + verification), `readback` (read packages
back on any OS), `runtime` (Core ML prediction wrappers), `cli` (the `coreml-export` subcommand). This
module imports none of them: each imports it (and its siblings) as needed.
"""

from __future__ import annotations

import logging
import sys

from ..errors import PrimeSpeechError

INSTALL_HINT = "pip install 'dora-primespeech-mlx[coreml]' (or: pip install coremltools)"


def require_coremltools():
    """Import coremltools (quietly: on Linux it warns that its Core ML bindings are absent)."""
    ct_logger = logging.getLogger("coremltools")
    level = ct_logger.level
    ct_logger.setLevel(logging.ERROR)
    try:
        import coremltools
    except ImportError as exc:
        raise PrimeSpeechError(f"coremltools is not installed: {INSTALL_HINT}") from exc
    finally:
        ct_logger.setLevel(level)
    return coremltools


def running_on_macos() -> bool:
    """True on macOS, the only OS where Core ML runs."""
    return sys.platform == "darwin"


__all__ = ["INSTALL_HINT", "require_coremltools", "running_on_macos"]
