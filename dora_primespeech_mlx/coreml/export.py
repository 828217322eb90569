"""Export the encoders as Core ML ML Program packages beside their converted MLX weights, and verify them.

`export_encoder("hubert", folder)` converts the official folder to MLX first if needed (the same
cached conversion the MLX encoders load), builds the MIL program from those converted weights, saves
`<folder>/mlx/hubert.mlpackage` and reads it back: the interface, the metadata and every stored
weight must match, bit for bit, what the source weights say. A package records a fingerprint of the
weights it was built from, so a re-conversion (new official files) makes it stale rather than wrong.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import loading
from ..errors import PrimeSpeechError
from ..loading import WEIGHTS_FILE, read_config, source_fingerprint
from ..voices import ModelRoot
from . import programs, readback, require_coremltools

logger = logging.getLogger(__name__)

KINDS = ("hubert", "roberta")
PACKAGE_FILES = {"hubert": "hubert.mlpackage", "roberta": "roberta.mlpackage"}
FORMAT_VERSION = "1"
META_KIND = "primespeech.kind"
META_FORMAT = "primespeech.format_version"
META_WEIGHTS = "primespeech.weights"
META_OUTPUT = "primespeech.output"

_DESCRIPTIONS = {
    "hubert": ("CNHuBERT (chinese-hubert-base) last hidden state, for GPT-SoVITS",
               "raw mono waveform at 16 kHz, float32 [1, N], N from {lo} to {hi} samples",
               "last hidden state, float16 [1, T, {dims}], one frame per 320 samples"),
    "roberta": ("chinese-roberta-wwm-ext-large hidden_states[-3], for GPT-SoVITS",
                "token ids with [CLS]/[SEP], int32 [1, L], right-padded with 0 to one of {lengths}",
                "hidden state after layer {layers}, float16 [1, L, {dims}] (padded rows are junk)"),
}


def model_folder(model_root: str | os.PathLike, kind: str) -> Path:
    """The official encoder folder under a dora-primespeech model root."""
    return ModelRoot(Path(model_root)).encoder(kind)


def converted_folder(kind: str, folder: str | os.PathLike) -> Path:
    """The converted MLX folder of an official encoder folder, converting it first if needed (cached);
    a converted folder is taken as it is."""
    if kind not in KINDS:
        raise PrimeSpeechError(f"unknown encoder {kind!r}: use {' or '.join(KINDS)}")
    return loading.convert(kind, folder)


def package_path(converted: str | os.PathLike, kind: str) -> Path:
    """Where the package of `kind` lives: inside the converted MLX folder, beside model.safetensors."""
    return Path(converted) / PACKAGE_FILES[kind]


def weights_fingerprint(converted: str | os.PathLike) -> str:
    """A short identity of the converted weights file (size + hash of its first and last MiB)."""
    return json.dumps(source_fingerprint(Path(converted) / WEIGHTS_FILE), sort_keys=True)


def _metadata_problem(path: Path, meta: dict[str, str], converted: str | os.PathLike, kind: str) -> str | None:
    if meta.get(META_KIND) != kind or meta.get(META_FORMAT) != FORMAT_VERSION:
        return f"{path} is not a {kind} package of format {FORMAT_VERSION}"
    if meta.get(META_WEIGHTS) != weights_fingerprint(converted):
        return f"{path} was exported from other weights than {Path(converted) / WEIGHTS_FILE} (stale)"
    return None


def package_problem(converted: str | os.PathLike, kind: str) -> str | None:
    """Why the package of `kind` beside `converted` cannot be used (None if it is there and current)."""
    path = package_path(converted, kind)
    if not path.exists():
        return f"no Core ML package {path}"
    try:
        meta = readback.package_info(path).metadata
    except PrimeSpeechError as exc:
        return str(exc)
    return _metadata_problem(path, meta, converted, kind)


def _load_converted_numpy(converted: Path) -> tuple[dict[str, np.ndarray], dict]:
    from safetensors.numpy import load_file

    config = read_config(converted)
    try:
        weights = load_file(str(converted / WEIGHTS_FILE))
    except Exception as exc:  # safetensors raises its own error types
        raise PrimeSpeechError(f"cannot read {converted / WEIGHTS_FILE} ({exc}): delete {converted} "
                               "and convert again") from exc
    return weights, config


@dataclass
class Design:
    """A package's graph and interface, derived from a converted config."""

    kind: str
    keys: list[str]
    program: object
    inputs: list
    description: tuple[str, str, str]
    output_note: str


def _design(kind: str, weights: dict[str, np.ndarray], config: dict) -> Design:
    ct = require_coremltools()
    if kind == "hubert":
        shape = programs.HubertShape.from_config(config)
        lo, hi = programs.HUBERT_MIN_SAMPLES, programs.HUBERT_MAX_SAMPLES
        flexible = ct.RangeDim(lower_bound=lo, upper_bound=hi, default=programs.HUBERT_DEFAULT_SAMPLES)
        inputs = [ct.TensorType(name=programs.HUBERT_INPUT, shape=(1, flexible), dtype=np.float32)]
        short, inp, out = _DESCRIPTIONS[kind]
        return Design(kind, programs.hubert_keys(shape), programs.hubert_program(weights, shape), inputs,
                      (short, inp.format(lo=lo, hi=hi), out.format(dims=shape.hidden_size)),
                      "last_hidden_state")
    shape = programs.BertShape.from_config(config)
    lengths = [n for n in programs.BERT_LENGTHS if n <= shape.max_position_embeddings]
    flexible = ct.EnumeratedShapes(shapes=[(1, n) for n in lengths], default=(1, programs.BERT_DEFAULT_LENGTH))
    inputs = [ct.TensorType(name=programs.BERT_INPUT, shape=flexible, dtype=np.int32)]
    short, inp, out = _DESCRIPTIONS[kind]
    return Design(kind, programs.bert_keys(shape), programs.bert_program(weights, shape), inputs,
                  (short, inp.format(lengths=lengths), out.format(layers=shape.layers_used,
                                                                  dims=shape.hidden_size)),
                  f"hidden_states[{shape.layers_used}]")


def _convert(design: Design):
    ct = require_coremltools()
    ct_logger = logging.getLogger("coremltools")
    level = ct_logger.level
    ct_logger.setLevel(max(logging.WARNING, level))
    try:
        # No optimisation passes: the graph is built op by op already (the default pipeline leaves the
        # same ops, three times slower) and every weight must stay the one named constant we made.
        model = ct.convert(design.program, convert_to="mlprogram", inputs=design.inputs,
                           minimum_deployment_target=ct.target.macOS13,
                           compute_precision=ct.precision.FLOAT32,  # the graph is typed by hand
                           pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True)
    finally:
        ct_logger.setLevel(level)
    short, inp, out = design.description
    model.short_description = short
    model.author = "dora-primespeech-mlx (coreml-export)"
    model.input_description[design.inputs[0].name] = inp
    model.output_description[programs.OUTPUT] = out
    return model


def verify_package(path: str | os.PathLike, kind: str, weights: dict[str, np.ndarray], keys: list[str],
                   converted: str | os.PathLike | None = None) -> None:
    """Raise PrimeSpeechError unless the saved package has the designed interface and holds exactly the
    source weights (in the package layout and dtype)."""
    path = Path(path)
    spec = readback.load_spec(path)
    info = readback.package_info(path, spec)
    problems = []
    if info.model_type != "mlProgram":
        problems.append(f"model type {info.model_type}")
    want_in = (programs.HUBERT_INPUT, "float32") if kind == "hubert" else (programs.BERT_INPUT, "int32")
    got_in = [(f.name, f.dtype) for f in info.inputs]
    if got_in != [want_in]:
        problems.append(f"inputs {got_in} instead of {[want_in]}")
    elif kind == "hubert" and info.inputs[0].ranges != ((1, 1), (programs.HUBERT_MIN_SAMPLES,
                                                                 programs.HUBERT_MAX_SAMPLES)):
        problems.append(f"waveform shape range {info.inputs[0].ranges}")
    elif kind == "roberta" and not info.inputs[0].enumerated:
        problems.append("input_ids has no enumerated shapes")
    got_out = [(f.name, f.dtype) for f in info.outputs]
    if got_out != [(programs.OUTPUT, "float16")]:
        problems.append(f"outputs {got_out} instead of {[(programs.OUTPUT, 'float16')]}")
    if converted is not None:
        problem = _metadata_problem(path, info.metadata, converted, kind)
        if problem:
            problems.append(problem)
    found = readback.program_constants(readback.read_program(path, spec))
    expected = programs.expected_constants(kind, weights, keys)
    problems += readback.compare_constants(found, expected)
    if problems:
        raise PrimeSpeechError(f"the exported {kind} package {path} does not match its source weights: "
                               f"{'; '.join(problems[:5])}{' ...' if len(problems) > 5 else ''}. "
                               "Please report this; meanwhile use encoder backend mlx")


def _compile_where_possible(package: Path) -> None:
    """On macOS, load the package once: Core ML compiles it (cached for the node) and proves it runs."""
    from . import running_on_macos
    from .runtime import load_mlmodel

    if running_on_macos():
        started = time.perf_counter()
        load_mlmodel(package)
        logger.info("%s: Core ML compiled and loaded it in %.1f s", package.name, time.perf_counter() - started)


@dataclass
class ExportResult:
    kind: str
    package: Path
    exported: bool  # False: an up-to-date package was already there
    seconds: float
    size_bytes: int


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export_encoder(kind: str, folder: str | os.PathLike, *, force: bool = False,
                   verify: bool = True) -> ExportResult:
    """Export one encoder (`hubert` or `roberta`) from its official (or converted) folder."""
    require_coremltools()
    t0 = time.perf_counter()
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise PrimeSpeechError(f"{kind} model folder not found: {folder} (download the models first)")
    converted = converted_folder(kind, folder)
    target = package_path(converted, kind)
    if not force and package_problem(converted, kind) is None:
        logger.info("%s: %s is up to date", kind, target)
        return ExportResult(kind, target, False, time.perf_counter() - t0, _size(target))
    weights, config = _load_converted_numpy(converted)
    design = _design(kind, weights, config)
    model = _convert(design)
    model.user_defined_metadata.update({
        META_KIND: kind, META_FORMAT: FORMAT_VERSION, META_WEIGHTS: weights_fingerprint(converted),
        META_OUTPUT: design.output_note,
    })
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=converted))
    try:
        model.save(str(tmp / target.name))
        del model, design.program
        if verify:
            verify_package(tmp / target.name, kind, weights, design.keys, converted)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp / target.name, target)
        shutil.rmtree(target.with_suffix(".mlmodelc"), ignore_errors=True)  # runtime's compiled cache
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _compile_where_possible(target)
    seconds = time.perf_counter() - t0
    logger.info("%s: exported %s in %.1f s%s", kind, target, seconds, " (verified)" if verify else "")
    return ExportResult(kind, target, True, seconds, _size(target))


def export_encoders(model_root: str | os.PathLike, kinds: tuple[str, ...] = KINDS, *, force: bool = False,
                    verify: bool = True) -> list[ExportResult]:
    """Export the encoders found under a dora-primespeech model root (`moyoyo/<name>/`)."""
    return [export_encoder(kind, model_folder(model_root, kind), force=force, verify=verify) for kind in kinds]
