"""Read a saved `.mlpackage` back without Core ML: its interface, metadata, MIL program and constants.

Everything here works on any OS: the spec is protobuf, the weights live in the package's blob file,
which coremltools reads with its bundled `libmilstoragepython`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PrimeSpeechError
from . import require_coremltools


@dataclass(frozen=True)
class FeatureInfo:
    """One input or output of a model: name, element type and allowed shapes."""

    name: str
    dtype: str
    shape: tuple[int, ...]  # the default shape (empty for outputs whose shape Core ML infers)
    ranges: tuple[tuple[int, int], ...] | None = None  # per-dimension (lower, upper) for range shapes
    enumerated: tuple[tuple[int, ...], ...] | None = None  # the allowed shapes for enumerated shapes


@dataclass(frozen=True)
class PackageInfo:
    """What a package's spec says about itself."""

    spec_version: int
    model_type: str  # "mlProgram" for ML Program packages
    inputs: tuple[FeatureInfo, ...]
    outputs: tuple[FeatureInfo, ...]
    metadata: dict[str, str] = field(default_factory=dict)


def load_spec(path: str | os.PathLike):
    """The protobuf spec of a `.mlpackage` (no Core ML needed, the model is not compiled)."""
    ct = require_coremltools()
    path = Path(path)
    if not path.exists():
        raise PrimeSpeechError(f"no Core ML package at {path}: run `primespeech-mlx coreml-export`")
    try:
        return ct.utils.load_spec(str(path))
    except Exception as exc:  # protobuf / package errors come in many types
        raise PrimeSpeechError(f"cannot read the Core ML package {path} ({exc}): export it again "
                               "with `primespeech-mlx coreml-export`") from exc


def _feature(desc) -> FeatureInfo:
    from coremltools.proto import FeatureTypes_pb2

    array = desc.type.multiArrayType
    dtype = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType).lower()
    ranges = enumerated = None
    kind = array.WhichOneof("ShapeFlexibility")
    if kind == "shapeRange":
        ranges = tuple((int(r.lowerBound), int(r.upperBound)) for r in array.shapeRange.sizeRanges)
    elif kind == "enumeratedShapes":
        enumerated = tuple(tuple(int(d) for d in s.shape) for s in array.enumeratedShapes.shapes)
    return FeatureInfo(desc.name, dtype, tuple(int(d) for d in array.shape), ranges, enumerated)


def package_info(path: str | os.PathLike, spec=None) -> PackageInfo:
    """Inputs, outputs, metadata and spec version of a saved package."""
    spec = spec if spec is not None else load_spec(path)
    desc = spec.description
    return PackageInfo(
        spec_version=int(spec.specificationVersion),
        model_type=spec.WhichOneof("Type") or "",
        inputs=tuple(_feature(f) for f in desc.input),
        outputs=tuple(_feature(f) for f in desc.output),
        metadata=dict(desc.metadata.userDefined),
    )


def read_program(path: str | os.PathLike, spec=None):
    """The package's MIL program, weights loaded from its blob file (a coremltools `Program`)."""
    require_coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load

    path = Path(path)
    spec = spec if spec is not None else load_spec(path)
    if spec.WhichOneof("Type") != "mlProgram":
        raise PrimeSpeechError(f"{path} is not an ML Program package: export it again")
    weights_dir = path / "Data" / "com.apple.CoreML" / "weights"
    return load(spec, spec.specificationVersion, file_weights_dir=str(weights_dir))


def program_constants(program, function: str = "main") -> dict[str, np.ndarray]:
    """Every tensor constant of the program by name (scalars and strings left out)."""
    out: dict[str, np.ndarray] = {}
    for op in program.functions[function].operations:
        if op.op_type != "const":
            continue
        value = op.outputs[0].val
        if isinstance(value, np.ndarray) and value.ndim > 0:
            out[op.outputs[0].name] = value
    return out


def compare_constants(found: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> list[str]:
    """Problems (empty if none): each expected constant present, same dtype, shape and exact values."""
    problems = []
    for name, want in expected.items():
        got = found.get(name)
        if got is None:
            problems.append(f"{name}: missing")
        elif got.dtype != want.dtype or got.shape != want.shape:
            problems.append(f"{name}: {got.dtype}{list(got.shape)} instead of {want.dtype}{list(want.shape)}")
        elif not np.array_equal(got, want):
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64)).max()
            problems.append(f"{name}: values differ (max {diff:.3g})")
    return problems


def summary(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-friendly description of a package (for the CLI)."""
    info = package_info(path)

    def feature(f: FeatureInfo) -> dict[str, Any]:
        d: dict[str, Any] = {"name": f.name, "dtype": f.dtype}
        if f.shape:
            d["default_shape"] = list(f.shape)
        if f.ranges:
            d["range"] = [list(r) for r in f.ranges]
        if f.enumerated:
            d["enumerated"] = [list(s) for s in f.enumerated]
        return d

    return {"path": str(path), "inputs": [feature(f) for f in info.inputs],
            "outputs": [feature(f) for f in info.outputs],
            "metadata": {k: v for k, v in info.metadata.items() if k.startswith("primespeech.")}}
