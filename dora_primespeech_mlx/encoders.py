"""The encoder backend: CNHuBERT features and BERT hidden states through MLX or Core ML, one interface.

`select_encoder_backend(setting, model_root)` returns an object whose `hubert_model()` and
`roberta_model()` are callables with the MLX models' signatures (waveform -> [1, T, 768]; token ids
-> hidden_states[-3] [1, L, 1024], as MLX arrays), plus `roberta_tokenizer()`, `name` ("mlx" or
"coreml") and `reason` (why this backend). Settings:

- "mlx": the MLX encoders.
- "coreml": the exported Core ML packages (macOS only); anything that prevents it raises
  PrimeSpeechError saying what to do.
- "auto": Core ML when on macOS, coremltools is installed, both packages exist, match the current
  converted weights and Core ML loads them; MLX otherwise. The choice and its reason are logged.

Models load on first use, so selecting a backend is cheap except for Core ML's own model loading,
which "auto" must do to know that Core ML can run the packages.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import PrimeSpeechError

logger = logging.getLogger(__name__)

SETTINGS = ("auto", "mlx", "coreml")
KINDS = ("hubert", "roberta")


def encoder_folders(model_root: str | os.PathLike) -> dict[str, Path]:
    """The official encoder folders under a dora-primespeech model root (`moyoyo/<name>/`)."""
    from .voices import ModelRoot

    return {kind: ModelRoot(Path(model_root)).encoder(kind) for kind in KINDS}


def _as_mx(x):
    import mlx.core as mx

    return x if isinstance(x, mx.array) else mx.array(x)


class MLXEncoders:
    """The MLX encoders, loaded on first use from the official (or converted) folders."""

    name = "mlx"

    def __init__(self, hubert_dir: str | os.PathLike, roberta_dir: str | os.PathLike, *, dtype=None,
                 reason: str = "requested"):
        import mlx.core as mx

        self.hubert_dir = Path(hubert_dir)
        self.roberta_dir = Path(roberta_dir)
        self.dtype = dtype or mx.float32
        self.reason = reason
        self._mlx: dict[str, Any] = {}
        self._tokenizer = None

    def describe(self) -> str:
        """e.g. "coreml (Core ML packages loaded, compute units ALL)" — for logs and status."""
        return f"{self.name} ({self.reason})"

    def _mlx_model(self, kind: str) -> Callable[..., Any]:
        if kind not in self._mlx:
            from .loading import load_model

            folder = self.hubert_dir if kind == "hubert" else self.roberta_dir
            if not folder.exists():
                raise PrimeSpeechError(f"{kind} model not found at {folder}: run `primespeech-mlx download`")
            model = load_model(kind, folder, dtype=self.dtype)

            def call(x, *args, _model=model, **kwargs):
                kwargs = {k: None if v is None else _as_mx(v) for k, v in kwargs.items()}
                return _model(_as_mx(x), *(_as_mx(a) for a in args), **kwargs)

            self._mlx[kind] = call
        return self._mlx[kind]

    def hubert_model(self) -> Callable[..., Any]:
        """waveform at 16 kHz ([N] or [1, N], numpy or MLX) -> last hidden state [1, T, 768] (MLX)."""
        return self._mlx_model("hubert")

    def release(self, kind: str) -> None:
        """Drop the loaded MLX model of `kind` (loaded again on its next use) and return its memory."""
        if self._mlx.pop(kind, None) is not None:
            import mlx.core as mx

            mx.clear_cache()

    def roberta_model(self) -> Callable[..., Any]:
        """token ids ([L] or [1, L]) -> hidden_states[-3] [1, L, 1024] (MLX)."""
        return self._mlx_model("roberta")

    def roberta_tokenizer(self):
        """The BERT folder's tokenizer (`tokenizers.Tokenizer`)."""
        if self._tokenizer is None:
            from .models.roberta import load_tokenizer

            self._tokenizer = load_tokenizer(self.roberta_dir)
        return self._tokenizer


class CoreMLEncoders(MLXEncoders):
    """Core ML encoders; inputs a package cannot take exactly go to the MLX encoders (loaded then)."""

    name = "coreml"

    def __init__(self, hubert_dir, roberta_dir, mlmodels: dict[str, tuple[Any, Path]], *, dtype=None,
                 reason: str = "requested"):
        super().__init__(hubert_dir, roberta_dir, dtype=dtype, reason=reason)
        from .coreml.runtime import CoreMLBert, CoreMLHubert

        model, path = mlmodels["hubert"]
        self._hubert = CoreMLHubert(model, path, dtype=self.dtype, fallback=lambda: self._mlx_model("hubert"))
        model, path = mlmodels["roberta"]
        self._bert = CoreMLBert(model, path, dtype=self.dtype, fallback=lambda: self._mlx_model("roberta"))

    def hubert_model(self):
        return self._hubert

    def roberta_model(self):
        return self._bert


def _load_coreml(folders: dict[str, Path], compute_units: str) -> tuple[dict[str, tuple[Any, Path]] | None, str]:
    """(Core ML models by kind, "") when Core ML can run both packages here, else (None, why not)."""
    from . import coreml

    if not coreml.running_on_macos():
        return None, f"Core ML runs only on macOS (this is {sys.platform})"
    from .coreml import require_coremltools
    from .coreml.export import package_path, package_problem
    from .coreml.runtime import load_mlmodel
    from .loading import converted_dir_for, is_converted, is_fresh

    try:
        require_coremltools()
    except PrimeSpeechError as exc:
        return None, str(exc)
    loaded = {}
    for kind, folder in folders.items():
        if not folder.exists():
            return None, f"the {kind} folder {folder} does not exist (run `primespeech-mlx download`)"
        converted = folder if is_converted(folder, kind) else converted_dir_for(folder)
        if converted != folder and not is_fresh(converted, folder, kind):
            return None, (f"the {kind} weights in {folder} have no current MLX conversion, so no current "
                          "Core ML package: run `primespeech-mlx coreml-export`")
        problem = package_problem(converted, kind)
        if problem:
            return None, f"{problem}: run `primespeech-mlx coreml-export`"
        path = package_path(converted, kind)
        try:
            loaded[kind] = (load_mlmodel(path, compute_units), path)
        except PrimeSpeechError as exc:
            return None, str(exc)
    return loaded, ""


def select_encoder_backend(setting: str = "auto", model_root: str | os.PathLike | None = None, *,
                           hubert_dir: str | os.PathLike | None = None,
                           roberta_dir: str | os.PathLike | None = None, dtype=None,
                           compute_units: str = "ALL") -> MLXEncoders:
    """The encoder backend for `setting` ("auto", "mlx" or "coreml"); see the module docstring.

    The folders default to `<model_root>/moyoyo/chinese-hubert-base` and
    `<model_root>/moyoyo/chinese-roberta-wwm-ext-large`; `dtype` is the MLX dtype of outputs and of the
    MLX encoders (default float32); `compute_units` is Core ML's: ALL (Core ML picks among CPU, GPU and
    Neural Engine), CPU_AND_NE (keeps the GPU free for MLX), CPU_AND_GPU or CPU_ONLY.
    """
    import mlx.core as mx

    dtype = dtype or mx.float32
    setting = (setting or "auto").lower()
    if setting not in SETTINGS:
        raise PrimeSpeechError(f"unknown encoder backend {setting!r}: use {', '.join(SETTINGS)}")
    from .coreml.runtime import COMPUTE_UNITS

    if compute_units not in COMPUTE_UNITS:
        raise PrimeSpeechError(f"unknown Core ML compute units {compute_units!r}: use {', '.join(COMPUTE_UNITS)}")
    if model_root is None and (hubert_dir is None or roberta_dir is None):
        raise PrimeSpeechError("give model_root, or both hubert_dir and roberta_dir")
    folders = encoder_folders(model_root) if model_root is not None else {}
    if hubert_dir is not None:
        folders["hubert"] = Path(hubert_dir).expanduser()
    if roberta_dir is not None:
        folders["roberta"] = Path(roberta_dir).expanduser()
    if setting == "mlx":
        backend = MLXEncoders(folders["hubert"], folders["roberta"], dtype=dtype, reason="requested")
    else:
        mlmodels, why_not = _load_coreml(folders, compute_units)
        if mlmodels is not None:
            backend = CoreMLEncoders(folders["hubert"], folders["roberta"], mlmodels, dtype=dtype,
                                     reason=f"Core ML packages loaded, compute units {compute_units}")
        elif setting == "coreml":
            raise PrimeSpeechError(f"encoder backend coreml is not available: {why_not}. "
                                   "Use encoder backend auto or mlx to run the MLX encoders instead")
        else:
            backend = MLXEncoders(folders["hubert"], folders["roberta"], dtype=dtype,
                                  reason=f"auto: {why_not}")
    logger.info("encoder backend: %s", backend.describe())
    return backend
