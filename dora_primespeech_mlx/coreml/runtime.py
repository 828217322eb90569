"""Run the exported encoders through Core ML (macOS), with the MLX models' call signatures.

`CoreMLHubert` and `CoreMLBert` are drop-in callables for `models.hubert.Model` and
`models.roberta.Model`: same inputs (waveform / token ids, numpy or MLX), same outputs (an MLX array
[1, T, hidden]). Inputs a package cannot take exactly (audio outside its length range, more tokens
than its largest shape, explicit attention masks or token types, a real token with the pad id) go
to the MLX fallback, so results never silently differ from the MLX path.

Copies: an MLX input reaches Core ML through numpy's buffer view (no copy); coremltools returns each
output as a new numpy array, which MLX copies once into its own memory (`mx.array` has no zero-copy
import). The float16 output is converted only if the MLX side computes in another dtype.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PrimeSpeechError
from . import programs, readback, require_coremltools

logger = logging.getLogger(__name__)

COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")
_STAMP = "primespeech-package.json"  # inside a cached .mlmodelc: the fingerprint of its package


def compiled_path(package: str | os.PathLike) -> Path:
    """Where the compiled form of a package is cached (beside it: `hubert.mlmodelc`)."""
    return Path(package).with_suffix(".mlmodelc")


def _package_stamp(package: Path) -> str:
    """Identity of a package: each file's path, size and a hash of its first and last MiB."""
    digest = hashlib.sha256()
    for file in sorted(p for p in package.rglob("*") if p.is_file()):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(package)}:{size}".encode())
        with open(file, "rb") as f:
            digest.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(size - (1 << 20))
                digest.update(f.read(1 << 20))
    return digest.hexdigest()


def _load_compiled(package: Path, units):
    """The cached compiled model if it was compiled from this very package, else None."""
    ct = require_coremltools()
    compiled = compiled_path(package)
    try:
        if (compiled / _STAMP).read_text() != _package_stamp(package):
            return None
        return ct.models.CompiledMLModel(str(compiled), compute_units=units)
    except Exception as exc:  # a missing, partial or unloadable cache: compile the package again
        logger.debug("compiled Core ML cache %s not used: %s", compiled, exc)
        return None


def _store_compiled(model, package: Path) -> None:
    """Keep Core ML's compiled model (valid only while `model` lives) for the next process."""
    compiled = compiled_path(package)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{compiled.name}.", dir=package.parent))
        shutil.copytree(model.get_compiled_model_path(), tmp / compiled.name)
        (tmp / compiled.name / _STAMP).write_text(_package_stamp(package))
        if compiled.exists():
            shutil.rmtree(compiled)
        os.replace(tmp / compiled.name, compiled)
    except Exception as exc:  # caching is an optimisation: a read-only model folder must still work
        logger.debug("could not cache the compiled Core ML model %s: %s", compiled, exc)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def load_mlmodel(path: str | os.PathLike, compute_units: str = "ALL"):
    """Load a package for prediction; PrimeSpeechError when Core ML cannot run it here.

    Core ML compiles an `.mlpackage` on every load (seconds for BERT-large); the compiled model is
    cached beside the package as `<name>.mlmodelc` and loaded directly while the package is unchanged.
    """
    ct = require_coremltools()
    if compute_units not in COMPUTE_UNITS:
        raise PrimeSpeechError(f"unknown Core ML compute units {compute_units!r}: use {', '.join(COMPUTE_UNITS)}")
    units = getattr(ct.ComputeUnit, compute_units)
    path = Path(path)
    model = _load_compiled(path, units)
    if model is not None:
        return model
    try:
        model = ct.models.MLModel(str(path), compute_units=units)
    except Exception as exc:  # Core ML reports load failures with assorted exception types
        raise PrimeSpeechError(f"Core ML cannot load {path} ({exc}): export it again with "
                               "`primespeech-mlx coreml-export --force`, or use encoder backend mlx") from exc
    _store_compiled(model, path)
    return model


def _to_mx(out: np.ndarray, dtype):
    import mlx.core as mx

    arr = mx.array(out)
    return arr if dtype is None or arr.dtype == dtype else arr.astype(dtype)


def _predict(model, inputs: dict[str, np.ndarray], what: str) -> np.ndarray:
    try:
        result = model.predict(inputs)
    except Exception as exc:  # Core ML prediction errors are plain Exceptions
        raise PrimeSpeechError(f"Core ML {what} prediction failed ({exc}): use encoder backend mlx") from exc
    if programs.OUTPUT not in result:
        raise PrimeSpeechError(f"the Core ML {what} package has no output {programs.OUTPUT!r}: export it again")
    return result[programs.OUTPUT]


class _CoreMLEncoder:
    kind = ""

    def __init__(self, model, path: str | os.PathLike, *, dtype=None,
                 fallback: Callable[[], Callable[..., Any]] | None = None):
        self.model = model
        self.path = Path(path)
        self.dtype = dtype
        self._fallback_factory = fallback
        self._fallback = None
        self.info = readback.package_info(self.path)
        self.calls = {"coreml": 0, "mlx": 0}

    def _mlx(self, why: str):
        if self._fallback_factory is None:
            raise PrimeSpeechError(f"the Core ML {self.kind} package cannot take this input ({why}) and no "
                                   "MLX fallback is configured")
        if self._fallback is None:
            logger.info("%s: %s; using the MLX encoder for such inputs", self.kind, why)
            self._fallback = self._fallback_factory()
        self.calls["mlx"] += 1
        return self._fallback


class CoreMLHubert(_CoreMLEncoder):
    """HuBERT through Core ML: waveform [N] or [1, N] at 16 kHz -> last hidden state [1, T, hidden]."""

    kind = "hubert"

    def __init__(self, model, path, **kwargs):
        super().__init__(model, path, **kwargs)
        feature = self.info.inputs[0]
        if feature.name != programs.HUBERT_INPUT or not feature.ranges:
            raise PrimeSpeechError(f"{path} is not a HuBERT package of this version: export it again")
        self.min_samples, self.max_samples = feature.ranges[-1]

    def __call__(self, wave) -> Any:
        samples = np.asarray(wave, dtype=np.float32)
        if samples.ndim == 1:
            samples = samples[None]
        if samples.ndim != 2 or samples.shape[0] != 1:
            return self._mlx(f"batch shape {samples.shape}")(wave)
        n = samples.shape[1]
        if not self.min_samples <= n <= self.max_samples:
            return self._mlx(f"{n} samples is outside the package's {self.min_samples}..{self.max_samples}")(wave)
        out = _predict(self.model, {programs.HUBERT_INPUT: np.ascontiguousarray(samples)}, "HuBERT")
        self.calls["coreml"] += 1
        return _to_mx(out, self.dtype)


class CoreMLBert(_CoreMLEncoder):
    """BERT through Core ML: token ids [L] or [1, L] -> hidden_states[-3] [1, L, hidden]."""

    kind = "roberta"
    accepts_batches = False  # the package takes one unpadded sequence; batches go one text at a time

    def __init__(self, model, path, **kwargs):
        super().__init__(model, path, **kwargs)
        feature = self.info.inputs[0]
        if feature.name != programs.BERT_INPUT or not feature.enumerated:
            raise PrimeSpeechError(f"{path} is not a BERT package of this version: export it again")
        self.lengths = sorted(shape[-1] for shape in feature.enumerated)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> Any:
        ids = np.asarray(input_ids)
        if ids.ndim == 1:
            ids = ids[None]
        why = None
        if ids.ndim != 2 or ids.shape[0] != 1:
            why = f"batch shape {ids.shape}"
        elif attention_mask is not None and not np.all(np.asarray(attention_mask)):
            why = "an attention mask"
        elif token_type_ids is not None and np.any(np.asarray(token_type_ids)):
            why = "token types other than 0"
        elif ids.shape[1] > self.lengths[-1]:
            why = f"{ids.shape[1]} tokens, more than {self.lengths[-1]}"
        elif np.any(ids == programs.BERT_PAD_ID):
            why = "a token with the pad id"
        if why:
            return self._mlx(why)(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        n = ids.shape[1]
        length = next(size for size in self.lengths if size >= n)
        padded = np.full((1, length), programs.BERT_PAD_ID, dtype=np.int32)
        padded[:, :n] = ids
        out = _predict(self.model, {programs.BERT_INPUT: padded}, "BERT")
        self.calls["coreml"] += 1
        return _to_mx(out[:, :n], self.dtype)
