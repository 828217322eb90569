"""Converted-weight cache: safetensors + config.json beside the official files, reconverted on change.

A source file `X/name.ckpt` converts into `X/name.mlx/`; a Hugging Face model folder `X/` into `X/mlx/`.
`config.json` records the source's size, mtime and a hash of its first and last MiB, so a replaced
source file is noticed and converted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PrimeSpeechError

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
_CHUNK = 1 << 20


def source_fingerprint(source: str | os.PathLike) -> dict[str, Any]:
    """Size, mtime and a hash of the head and tail of a file (or of every file in a folder)."""
    source = Path(source)
    if source.is_dir():
        # A folder's own conversion (mlx/) and hidden temporaries are not part of its source.
        files = sorted(p for p in source.rglob("*") if p.is_file() and not any(
            part == "mlx" or part.startswith(".") for part in p.relative_to(source).parts))
    else:
        files = [source]
    digest = hashlib.sha256()
    total = 0
    for path in files:
        size = path.stat().st_size
        total += size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as f:
            digest.update(f.read(_CHUNK))
            if size > 2 * _CHUNK:
                f.seek(size - _CHUNK)
                digest.update(f.read(_CHUNK))
    return {"size": total, "hash": digest.hexdigest()}


def converted_dir_for(source: str | os.PathLike) -> Path:
    """Where the converted form of `source` lives."""
    source = Path(source)
    return source / "mlx" if source.is_dir() else source.with_suffix(".mlx")


def read_config(out_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(out_dir) / CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise PrimeSpeechError(f"no converted model at {out_dir}: run `primespeech-mlx convert`") from exc
    except json.JSONDecodeError as exc:
        raise PrimeSpeechError(f"{path} is corrupt: delete {out_dir} and convert again") from exc


def is_fresh(out_dir: str | os.PathLike, source: str | os.PathLike, kind: str) -> bool:
    """True if `out_dir` holds a conversion of this exact source of this kind."""
    out_dir = Path(out_dir)
    if not (out_dir / WEIGHTS_FILE).is_file() or not (out_dir / CONFIG_FILE).is_file():
        return False
    try:
        config = read_config(out_dir)
    except PrimeSpeechError:
        return False
    meta = config.get("conversion", {})
    return (meta.get("kind") == kind and meta.get("format_version") == FORMAT_VERSION
            and meta.get("source") == source_fingerprint(source))


def save_converted(out_dir: str | os.PathLike, weights: dict[str, np.ndarray], config: dict[str, Any],
                   *, kind: str, source: str | os.PathLike | None = None) -> Path:
    """Write weights and config atomically (a temporary folder renamed into place)."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Fingerprint first: for a folder source the temporary folder below lies inside the source.
    fingerprint = source_fingerprint(source) if source is not None else None
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        arrays = {k: np.ascontiguousarray(v) for k, v in weights.items()}
        save_file(arrays, str(tmp / WEIGHTS_FILE), metadata={"format": "mlx"})
        meta = {"kind": kind, "format_version": FORMAT_VERSION}
        if source is not None:
            meta.update(source_path=str(source), source=fingerprint)
        (tmp / CONFIG_FILE).write_text(json.dumps({**config, "conversion": meta}, indent=2, ensure_ascii=False))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_converted(out_dir: str | os.PathLike):
    """(weights as mx.arrays, config dict) of a converted model folder."""
    import mlx.core as mx

    out_dir = Path(out_dir)
    config = read_config(out_dir)
    try:
        weights = mx.load(str(out_dir / WEIGHTS_FILE))
    except Exception as exc:  # MLX raises plain RuntimeErrors
        raise PrimeSpeechError(f"cannot read {out_dir / WEIGHTS_FILE} ({exc}): delete {out_dir} "
                               "and convert again") from exc
    return weights, config


def is_converted(folder: str | os.PathLike, kind: str) -> bool:
    """True if `folder` is a converted model folder of `kind` (not an official one)."""
    try:
        config = json.loads((Path(folder) / CONFIG_FILE).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return False
    return config.get("conversion", {}).get("kind") == kind


def converted_model_folder(path: str | os.PathLike, kind: str, convert: Callable[[Path, Path], Any],
                           out_dir: str | os.PathLike | None = None) -> Path:
    """The converted folder for a model folder (or a file inside it): used as is when already converted,
    else converted once into its cache."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if out_dir is None and is_converted(path, kind):
        return path
    return ensure_converted(path, kind, convert, out_dir)


def ensure_converted(source: str | os.PathLike, kind: str,
                     convert: Callable[[Path, Path], Any], out_dir: str | os.PathLike | None = None) -> Path:
    """Convert `source` once into its cache folder; reuse it while the source is unchanged."""
    source = Path(source)
    if not source.exists():
        raise PrimeSpeechError(f"model file not found: {source}")
    out = Path(out_dir) if out_dir else converted_dir_for(source)
    if is_fresh(out, source, kind):
        return out
    logger.info("converting %s (%s) -> %s", source, kind, out)
    convert(source, out)
    return out
