"""Official file -> `Model.sanitize` -> safetensors cache -> strict load, for every model kind.

A `Kind` says how to read a model's official file or folder into (state dict, `ModelArgs` fields) and
which module holds its `ModelArgs` and `Model`; `register` adds one. Converting reads the official form,
maps its weights once through `Model.sanitize`, checks them against the model's parameters and writes
safetensors + config.json beside the source: `X/name.ckpt` -> `X/name.mlx/`, a folder `X/` -> `X/mlx/`.
config.json records the source's size and a hash of the first and last MiB of each of its files, so a
replaced source is converted again. `load_model` loads that cache (or a converted folder given
directly) strictly and hands the model to `runtime.accelerate`, where the CPU accelerator installs its
fast paths.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from . import runtime
from .checkpoint import load_checkpoint, read_checkpoint
from .errors import PrimeSpeechError

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
_CHUNK = 1 << 20
_SHOWN = 5  # keys named per kind of mismatch in a strict-load error

Reader = Callable[[Path], tuple[dict[str, Any], dict[str, Any]]]


# ---------------------------------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class Kind:
    """How one kind of model is read from its official form and built.

    dtype: what `load_model` casts the weights to by default: a dtype name, "device" (float32 on the
    CPU, float16 on a GPU) or None (as converted).
    """

    name: str  # recorded in the conversion's config.json
    title: str  # for messages
    module: str  # the module holding `ModelArgs` and `Model` (imported on first use)
    read: Reader  # official source -> (state dict, ModelArgs fields)
    official: str  # what the official source is, for messages
    folder: bool = False  # the official source is a folder (Hugging Face layout), not a file
    dtype: str | None = "float32"
    sanitize_takes_args: bool = False  # `Model.sanitize(weights, args)`
    extra_files: tuple[str, ...] = ()  # copied from the source folder into the conversion

    def model_module(self):
        """The module holding this kind's `ModelArgs` and `Model`."""
        return importlib.import_module(self.module)


KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Make `kind` loadable by its name (e.g. `load_model(kind.name, path)`)."""
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> Kind:
    """The registered kind `name`; PrimeSpeechError naming the known ones otherwise."""
    try:
        return KINDS[name]
    except KeyError:
        raise PrimeSpeechError(f"unknown model kind {name!r}: use {', '.join(KINDS)}") from None


# ------------------------------------------------------------------------------------ official readers


def _plain(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _read_t2s(source: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """An official s1 `.ckpt`: its `weight` state dict and the ModelArgs of its training config."""
    ModelArgs = get_kind("t2s").model_module().ModelArgs  # noqa: N806  (models are imported by name only)

    data = read_checkpoint(source)
    if not isinstance(data.get("weight"), dict):
        raise PrimeSpeechError(f"{source} is not a GPT-SoVITS GPT checkpoint (no 'weight' dict): "
                               "pass a GPT_weights*/*.ckpt file")
    return data["weight"], ModelArgs.from_checkpoint_config(data.get("config") or {}).to_dict()


class UnsupportedVersion(PrimeSpeechError):
    """A GPT-SoVITS checkpoint of a version we recognise but do not load (`version`: e.g. "v4")."""

    def __init__(self, message: str, version: str):
        super().__init__(message)
        self.version = version


def detect_sovits_version(weights: dict[str, Any], config: dict[str, Any], header_version: str | None) -> str:
    """"v1", "v2", "v2Pro" or "v2ProPlus" for a supported SoVITS state dict; PrimeSpeechError naming
    any other version. The file header (`00`/`01`/`05`/`06` in place of `PK`) decides when there is
    one; else the speaker-verification layers mark v2Pro/v2ProPlus (told apart by the config, or by
    the generator's width: 768 for v2ProPlus) and the symbol table v1 from v2."""
    sovits = get_kind("sovits").model_module()  # models are imported by name only (no import circle)
    cfg_version = _plain(config.get("model")).get("version") or config.get("version")

    def refuse(version: str, why: str) -> UnsupportedVersion:
        return UnsupportedVersion(
            f"this SoVITS checkpoint is GPT-SoVITS {version} ({why}); only v1, v2, v2Pro and v2ProPlus SoVITS "
            "weights are supported: use such a voice, or export the voice from one of those training runs",
            version)

    if header_version is not None and header_version not in sovits.VERSIONS:
        raise refuse(header_version, "file header")
    if any(k.startswith("cfm.") for k in weights):
        raise refuse(cfg_version if cfg_version in ("v3", "v4") else "v3/v4", "it has a CFM decoder")
    speaker_layers = any(k.startswith(("sv_emb.", "ge_to512.", "prelu.")) for k in weights)
    if header_version in sovits.SPEAKER_VERSIONS or (header_version is None and speaker_layers):
        if not speaker_layers:
            raise PrimeSpeechError(f"this file says GPT-SoVITS {header_version} but has no speaker-verification "
                                   "layers (sv_emb, ge_to512, prelu): it is damaged")
        if header_version is not None:
            return header_version
        if cfg_version in sovits.SPEAKER_VERSIONS:
            return cfg_version
        conv_pre = weights.get("dec.conv_pre.weight")
        return "v2ProPlus" if conv_pre is not None and conv_pre.shape[0] == 768 else "v2Pro"
    if cfg_version in sovits.UNSUPPORTED_VERSIONS:
        raise refuse(cfg_version, "its config")
    embedding = weights.get("enc_p.text_embedding.weight")
    if embedding is None:
        raise PrimeSpeechError("this file has no enc_p.text_embedding.weight: it is not a GPT-SoVITS "
                               "SoVITS checkpoint (SoVITS_weights/*.pth)")
    rows = embedding.shape[0]
    if rows == sovits.V1_SYMBOLS:
        return "v1"
    if rows == sovits.V2_SYMBOLS:
        return "v2"
    raise PrimeSpeechError(f"unexpected SoVITS symbol table of {rows} entries (v1 has {sovits.V1_SYMBOLS}, v2 "
                           f"{sovits.V2_SYMBOLS}): the file is not a supported GPT-SoVITS checkpoint")


def _read_sovits(source: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """An official SoVITS `.pth`: its state dict and ModelArgs fields; other versions are refused."""
    ckpt = load_checkpoint(source)
    data = ckpt.data
    if not isinstance(data, dict):
        raise PrimeSpeechError(f"{source} is not a GPT-SoVITS SoVITS checkpoint")
    weights = data.get("weight", data.get("model"))
    if not isinstance(weights, dict):
        raise PrimeSpeechError(f"{source} has no 'weight' state dict: it is not a GPT-SoVITS SoVITS checkpoint "
                               "(SoVITS_weights/*.pth)")
    config = _plain(data.get("config"))
    version = detect_sovits_version(weights, config, ckpt.header_version)
    sovits = get_kind("sovits").model_module()
    model_cfg = _plain(config.get("model"))
    data_cfg = _plain(config.get("data"))
    if model_cfg.get("semantic_frame_rate", "25hz") != "25hz":
        raise PrimeSpeechError("only 25 Hz semantic SoVITS models are supported")
    if model_cfg.get("resblock", "1") != "1":
        raise PrimeSpeechError("only HiFi-GAN ResBlock1 SoVITS decoders are supported")
    fields = {**model_cfg, "version": version, "n_symbols": int(weights["enc_p.text_embedding.weight"].shape[0])}
    if version in sovits.SPEAKER_VERSIONS:  # sv_emb.weight [gin, sv_dim]: the speaker embedding's width
        sv_weight = weights.get("sv_emb.weight")
        fields["sv_dim"] = int(sv_weight.shape[1]) if sv_weight is not None else sovits.SPEAKER_EMBEDDING
    if "filter_length" in data_cfg:
        fields["spec_channels"] = int(data_cfg["filter_length"]) // 2 + 1
    for name in ("sampling_rate", "hop_length"):
        if name in data_cfg:
            fields[name] = int(data_cfg[name])
    return weights, fields


def sovits_version(path: str | os.PathLike) -> str | None:
    """The GPT-SoVITS version of a SoVITS file, for listings: its fresh conversion's record, else the
    file's version header, else the file itself read and recognised; None when it cannot be read.
    Versions we do not load (v3, v4) are named too."""
    from .checkpoint import sniff_header

    path = Path(path)
    try:
        out = converted_dir_for(path)
        if is_fresh(out, path, "sovits"):
            return read_config(out).get("version")
        header = sniff_header(path)
        if header is not None:
            return header
        data = load_checkpoint(path).data
        weights = data.get("weight") if isinstance(data, dict) else None
        if not isinstance(weights, dict):
            return None
        return detect_sovits_version(weights, _plain(data.get("config")), None)
    except UnsupportedVersion as exc:
        return exc.version
    except (PrimeSpeechError, OSError):
        return None


def read_hf_folder(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Hugging Face model folder: the weights of pytorch_model.bin or model.safetensors, and config.json."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except FileNotFoundError as exc:
        raise PrimeSpeechError(f"{folder} has no config.json: give the Hugging Face model folder "
                               "(chinese-hubert-base or chinese-roberta-wwm-ext-large)") from exc
    except ValueError as exc:
        raise PrimeSpeechError(f"{folder / CONFIG_FILE} is corrupt ({exc}): download the model folder again") from exc
    if (folder / "pytorch_model.bin").is_file():
        return read_checkpoint(folder / "pytorch_model.bin"), config
    if (folder / "model.safetensors").is_file():
        from safetensors.numpy import load_file

        return load_file(str(folder / "model.safetensors")), config
    raise PrimeSpeechError(f"{folder} holds neither pytorch_model.bin nor model.safetensors: "
                           "download the model folder again")


def _read_speaker(source: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The official ERes2NetV2 `.ckpt` (a plain state dict); its architecture is upstream's fixed one."""
    weights = read_checkpoint(source)
    if "layer3_ds.weight" not in weights:
        raise PrimeSpeechError(f"{source} is not an ERes2NetV2 speaker-verification state dict (no "
                               "layer3_ds.weight): pass pretrained_models/sv/pretrained_eres2netv2w24s4ep4.ckpt")
    return weights, {}


_MODELS = f"{__package__}.models"
register(Kind("t2s", "GPT (T2S)", f"{_MODELS}.t2s", _read_t2s, "GPT checkpoint (GPT_weights*/*.ckpt)",
              dtype="device"))
register(Kind("sovits", "SoVITS", f"{_MODELS}.sovits", _read_sovits, "SoVITS checkpoint (SoVITS_weights*/*.pth)",
              dtype=None))
register(Kind("hubert", "HuBERT", f"{_MODELS}.hubert", read_hf_folder, "chinese-hubert-base folder", folder=True))
register(Kind("roberta", "BERT", f"{_MODELS}.roberta", read_hf_folder, "chinese-roberta-wwm-ext-large folder",
              folder=True, sanitize_takes_args=True, extra_files=("tokenizer.json",)))
register(Kind("speaker", "speaker verification (ERes2NetV2)", f"{_MODELS}.speaker", _read_speaker,
              "ERes2NetV2 state dict (sv/pretrained_eres2netv2w24s4ep4.ckpt)"))


# ------------------------------------------------------------------------------------- strict loading


def _some(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown if len(items) <= _SHOWN else f"{shown} and {len(items) - _SHOWN} more"


def check_weights(model: nn.Module, weights: dict[str, Any], what: str, fix: str) -> None:
    """PrimeSpeechError naming the missing, unexpected and mis-shaped keys, unless `weights` cover
    exactly the parameters of `model` with their shapes. `fix` ends the message: what to do."""
    expected = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} ({_some(missing)})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} ({_some(unexpected)})")
    if wrong:
        problems.append(f"{len(wrong)} with the wrong shape "
                        f"({_some([f'{k}: file {got[k]}, model {expected[k]}' for k in wrong])})")
    if problems:
        raise PrimeSpeechError(f"{what} weights do not match the model: {'; '.join(problems)}. {fix}")


def load_weights(model: nn.Module, weights: dict[str, mx.array], what: str,
                 fix: str = "The weights are not a supported checkpoint of this kind.") -> None:
    """`model.load_weights(weights, strict=True)`, with an error that names the keys at fault."""
    check_weights(model, weights, what, fix)
    model.load_weights(list(weights.items()), strict=True)


# ----------------------------------------------------------------------------------- conversion cache


def source_fingerprint(source: str | os.PathLike) -> dict[str, Any]:
    """Size and a hash of the head and tail of a file (or of every file in a folder)."""
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
    """The config.json of a converted folder (its ModelArgs fields and `conversion` record)."""
    path = Path(out_dir) / CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise PrimeSpeechError(f"no converted model at {out_dir}: run `primespeech-mlx convert`") from exc
    except json.JSONDecodeError as exc:
        raise PrimeSpeechError(f"{path} is corrupt: delete {out_dir} and convert again") from exc


def conversion_kind(folder: str | os.PathLike) -> str | None:
    """The kind a converted folder holds; None when `folder` is not a converted folder."""
    try:
        config = json.loads((Path(folder) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    meta = config.get("conversion") if isinstance(config, dict) else None
    return meta.get("kind") if isinstance(meta, dict) else None


def is_converted(folder: str | os.PathLike, kind: str) -> bool:
    """True if `folder` is a converted model folder of `kind` (not an official one)."""
    return conversion_kind(folder) == kind


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


def save_converted(out_dir: str | os.PathLike, weights: dict[str, np.ndarray], config: dict[str, Any], *,
                   kind: str, source: str | os.PathLike | None = None, files: Iterable[Path] = ()) -> Path:
    """Write weights, config and `files` (copied) atomically: a temporary folder renamed into place."""
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
        for path in files:
            shutil.copy(path, tmp / path.name)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_converted(out_dir: str | os.PathLike) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """(weights as mx.arrays, config dict) of a converted model folder."""
    out_dir = Path(out_dir)
    config = read_config(out_dir)
    try:
        weights = mx.load(str(out_dir / WEIGHTS_FILE))
    except Exception as exc:  # MLX raises plain RuntimeErrors
        raise PrimeSpeechError(f"cannot read {out_dir / WEIGHTS_FILE} ({exc}): delete {out_dir} "
                               "and convert again") from exc
    return weights, config


def ensure_converted(source: str | os.PathLike, kind: str,
                     convert: Callable[[Path, Path], Any], out_dir: str | os.PathLike | None = None) -> Path:
    """Convert `source` once into its cache folder with `convert(source, out)`; reuse the folder while
    the source is unchanged."""
    source = Path(source)
    if not source.exists():
        raise PrimeSpeechError(f"model file not found: {source}")
    out = Path(out_dir) if out_dir else converted_dir_for(source)
    if is_fresh(out, source, kind):
        return out
    with _conversion_lock(out):
        if is_fresh(out, source, kind):  # another process converted it while this one waited
            return out
        logger.info("converting %s to MLX (first use only; kept in %s) ...", source, out)
        started = time.perf_counter()
        convert(source, out)
        logger.info("converted %s in %.1fs", source.name, time.perf_counter() - started)
    return out


@contextlib.contextmanager
def _conversion_lock(out: Path):
    """One conversion of a cache folder at a time, across processes: the nodes of one dataflow share a
    model root, and a second conversion replacing the folder would pull it from under a process
    loading the first. The others wait here, then find the conversion fresh. (A hidden lock file
    beside the folder; hidden files are not part of a folder source's fingerprint.)"""
    import fcntl

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------- the flow


def _stored(value: np.ndarray) -> np.ndarray:
    """Converted storage: exact source values (fp16 stays fp16); other types as float32."""
    return value if value.dtype in (np.float16, np.float32) else value.astype(np.float32)


def _convert_into(spec: Kind, source: Path, out: Path) -> None:
    state, fields = spec.read(source)
    module = spec.model_module()
    args = module.ModelArgs.from_dict(fields)
    model = module.Model(args)
    state = {k: np.asarray(v) for k, v in state.items()}
    weights = model.sanitize(state, args) if spec.sanitize_takes_args else model.sanitize(state)
    weights = {k: _stored(v) for k, v in weights.items()}
    # strict check before anything is written
    check_weights(model, weights, f"{spec.title} ({source})", f"It is not a supported {spec.official}.")
    files = [source / name for name in spec.extra_files if (source / name).is_file()]
    save_converted(out, weights, args.to_dict(), kind=spec.name, source=source, files=files)


def convert(kind: str, source: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """The converted folder of `source`: its official file or folder converted once into `out_dir`
    (default: beside it) and reused while unchanged; a converted folder of `kind` is taken as it is."""
    spec = get_kind(kind)
    path = Path(source).expanduser()
    if not path.exists():
        raise PrimeSpeechError(f"{spec.title} model not found: {path} (give the {spec.official} "
                               "or a converted folder)")
    if spec.folder and path.is_file():
        path = path.parent
    found = conversion_kind(path)
    if found is not None:
        if found != spec.name:
            raise PrimeSpeechError(f"{path} holds a converted {found} model, not {spec.title}")
        return path
    if path.is_dir() and not spec.folder:
        raise PrimeSpeechError(f"{path} is a folder: give the {spec.official} (or a converted folder)")
    return ensure_converted(path, spec.name, functools.partial(_convert_into, spec), out_dir)


def _dtype(spec: Kind, dtype: str | mx.Dtype | None) -> mx.Dtype | None:
    if dtype is None:
        if spec.dtype == "device":
            return mx.float32 if mx.default_device() == mx.cpu else mx.float16
        dtype = spec.dtype
    return getattr(mx, dtype) if isinstance(dtype, str) else dtype


def load_model(kind: str, path: str | os.PathLike, *, dtype: str | mx.Dtype | None = None) -> nn.Module:
    """A model of `kind` from its official file or folder (converted once, cached beside it) or from a
    converted folder, loaded strictly and accelerated for the device. dtype None: the kind's default
    (float32; T2S: float32 on the CPU, float16 on a GPU; SoVITS: as converted)."""
    spec = get_kind(kind)
    folder = convert(kind, path)
    weights, config = load_converted(folder)
    module = spec.model_module()
    model = module.Model(module.ModelArgs.from_dict(config))
    dtype = _dtype(spec, dtype)
    if dtype is not None:
        weights = {k: v.astype(dtype) for k, v in weights.items()}
    load_weights(model, weights, f"{spec.title} ({folder})",
                 f"Its conversion is stale or damaged: delete {folder} and convert again.")
    model.eval()
    mx.eval(model.parameters())
    del weights  # the model holds them now; what the accelerator replaces is then freed
    return runtime.accelerate(model)
