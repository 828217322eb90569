"""Read PyTorch checkpoints (`.ckpt`, `.pth`, `pytorch_model.bin`) safely, without torch.

The unpickler resolves only an explicit allow-list of globals, each mapped to a function of ours
that builds plain Python or numpy values; any other global (e.g. `os.system`) raises
`PrimeSpeechError` naming it, before anything from the file can run. Tensors come back as
C-contiguous numpy arrays; bfloat16 is widened exactly to float32 (numpy has no bfloat16).

Both torch formats are read: the zip archive (torch >= 1.6) and the legacy single-stream pickle.
GPT-SoVITS overwrites the zip's leading `PK` with a two-digit version header for newer SoVITS
weights; it is detected, reported and undone in memory.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import PrimeSpeechError

# GPT-SoVITS `process_ckpt.head2version` and `model_version2byte`.
HEADER_VERSIONS = {
    b"00": "v1",
    b"01": "v2",
    b"02": "v3",
    b"03": "v3-lora",
    b"04": "v4-lora",
    b"05": "v2Pro",
    b"06": "v2ProPlus",
}

_STORAGE_DTYPES = {
    "HalfStorage": np.dtype("<f2"),
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "BFloat16Storage": np.dtype("<u2"),  # widened to float32 after reading
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    "UntypedStorage": np.dtype("u1"),
}

_TORCH_DTYPES = {
    "float16": "float16", "half": "float16", "float32": "float32", "float": "float32",
    "float64": "float64", "double": "float64", "bfloat16": "bfloat16", "int64": "int64",
    "long": "int64", "int32": "int32", "int": "int32", "int16": "int16", "int8": "int8",
    "uint8": "uint8", "bool": "bool",
}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass
class Checkpoint:
    """A checkpoint's content and what the file said about itself."""

    data: Any
    format: str  # "zip" or "legacy"
    header_version: str | None  # GPT-SoVITS version header, None for a plain torch file


class _StorageType:
    """Stands for a `torch.<X>Storage` class inside the pickle."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """A flat numpy view of one storage's bytes."""

    def __init__(self, storage_type: _StorageType, raw: bytes | memoryview, byteorder: str):
        dtype = storage_type.dtype if byteorder == "little" else storage_type.dtype.newbyteorder(">")
        if len(raw) % dtype.itemsize:
            raise PrimeSpeechError("checkpoint storage size is not a multiple of its element size: "
                                   "the file is corrupt; download it again")
        self.array = np.frombuffer(raw, dtype=dtype)
        self.bfloat16 = storage_type.name == "BFloat16Storage"


class _PendingTensor:
    """A tensor of the legacy format, whose storage bytes follow the pickle."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def materialise(self) -> np.ndarray:
        return _rebuild_tensor(*self.args)


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *_unused) -> np.ndarray:
    if storage.array is None:
        return _PendingTensor(storage, offset, size, stride)
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    flat = storage.array
    if len(size) != len(stride):
        raise PrimeSpeechError("corrupt checkpoint: tensor size and stride disagree")
    if any(s == 0 for s in size):
        out = np.zeros(size, dtype=flat.dtype)
    else:
        last = offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True))
        if offset < 0 or any(st < 0 for st in stride) or last >= flat.size:
            raise PrimeSpeechError("corrupt checkpoint: a tensor reaches outside its storage; "
                                   "download the file again")
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=tuple(st * item for st in stride), writeable=False
        )
        out = np.array(view, order="C")
    if storage.bfloat16:
        out = (out.astype(np.uint32) << 16).view(np.float32)
    elif out.dtype.byteorder == ">":
        out = out.astype(out.dtype.newbyteorder("<"))
    return out


def _rebuild_parameter(data, *_unused):
    return data


def _rebuild_from_type_v2(func, _new_type, args, _state):
    return func(*args)


class _HParams(dict):
    """Upstream's `utils.HParams` (attribute bag) read back as a dict."""

    def __setstate__(self, state):
        self.update(state)


def _ordered_dict(*args):
    return OrderedDict(*args)


def _numpy_scalar(dtype, data=None):
    return np.frombuffer(data, dtype=dtype)[0] if data is not None else dtype.type()


def _numpy_reconstruct(_subtype, shape, dtype):
    return np.ndarray.__new__(np.ndarray, shape, np.dtype(dtype))


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): _ordered_dict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("utils", "HParams"): _HParams,
        ("GPT_SoVITS.utils", "HParams"): _HParams,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("pathlib", "PosixPath"): str,
        ("pathlib", "WindowsPath"): str,
    }
    for name in _STORAGE_DTYPES:
        allowed[("torch", name)] = _StorageType(name)
        allowed[("torch.storage", name)] = _StorageType(name)
    for name, canonical in _TORCH_DTYPES.items():
        allowed[("torch", name)] = canonical
    return allowed


_ALLOWED = _allowed_globals()


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str):
        found = _ALLOWED.get((module, name))
        if found is None:
            raise PrimeSpeechError(
                f"refusing to load checkpoint: it references the disallowed global {module}.{name}; "
                "only tensors, containers and GPT-SoVITS configs are accepted. Use an official "
                "GPT-SoVITS file, or re-save it with torch.save of a plain state dict."
            )
        return found

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise PrimeSpeechError(f"refusing to load checkpoint: unsupported persistent id {pid[:1]!r}")
        return self._load_storage(pid[1:])


class _HeaderPatched(io.RawIOBase):
    """A read-only file whose first two bytes read as `PK`."""

    def __init__(self, path: str):
        self._file = open(path, "rb")  # closed by close()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = self._file.seek(offset, whence)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:
        data = self._file.read(len(buffer))
        if self._pos < 2 and data:
            head = bytearray(data)
            for i in range(self._pos, min(2, self._pos + len(head))):
                head[i - self._pos] = b"PK"[i]
            data = bytes(head)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()


def _plain(value):
    """HParams (and dicts holding them) as plain dicts; legacy-format tensors materialised."""
    if isinstance(value, _PendingTensor):
        return value.materialise()
    if isinstance(value, _HParams):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, OrderedDict):
        return OrderedDict((k, _plain(v)) for k, v in value.items())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def _read_zip(fileobj) -> Any:
    try:
        archive = zipfile.ZipFile(fileobj)
    except zipfile.BadZipFile as exc:
        raise PrimeSpeechError(f"not a readable PyTorch zip checkpoint ({exc}); download it again") from exc
    with archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise PrimeSpeechError("not a PyTorch checkpoint: no single */data.pkl in the archive")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode().strip()
        storages: dict[str, _Storage] = {}

        def load_storage(pid):
            storage_type, key, _location, _numel = pid[:4]
            if not isinstance(storage_type, _StorageType):
                raise PrimeSpeechError("corrupt checkpoint: a storage has no known element type")
            if key not in storages:
                try:
                    raw = archive.read(f"{prefix}data/{key}")
                except KeyError as exc:
                    raise PrimeSpeechError(f"corrupt checkpoint: storage {key} is missing") from exc
                storages[key] = _Storage(storage_type, raw, byteorder)
            return storages[key]

        with archive.open(pkl[0]) as stream:
            return _SafeUnpickler(stream, load_storage).load()


def _read_legacy(stream) -> Any:
    def plain_load():
        return _SafeUnpickler(stream, _no_storage).load()

    if plain_load() != _LEGACY_MAGIC:
        raise PrimeSpeechError("not a PyTorch checkpoint (neither a zip archive nor the legacy format)")
    plain_load()  # protocol version
    sys_info = plain_load()
    byteorder = "little" if sys_info.get("little_endian", True) else "big"
    pending: dict[str, tuple[_StorageType, int]] = {}
    views: list[tuple[Any, str, int, int]] = []

    class Lazy:
        """A storage whose bytes come after the main pickle."""

        def __init__(self):
            self.array = None
            self.bfloat16 = False

    lazies: dict[str, Lazy] = {}

    def load_storage(pid):
        storage_type, key, _location, numel, view_metadata = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise PrimeSpeechError("corrupt checkpoint: a storage has no known element type")
        pending.setdefault(key, (storage_type, numel))
        root = lazies.setdefault(key, Lazy())
        if view_metadata is None:
            return root
        view_key, offset, size = view_metadata
        view = lazies.setdefault(view_key, Lazy())
        views.append((view, key, offset, size))
        return view

    result = _SafeUnpickler(stream, load_storage).load()
    keys = _SafeUnpickler(stream, _no_storage).load()
    for key in keys:
        storage_type, _ = pending[key]
        (numel,) = struct.unpack("<q", stream.read(8))
        raw = stream.read(numel * storage_type.dtype.itemsize)
        if len(raw) != numel * storage_type.dtype.itemsize:
            raise PrimeSpeechError("checkpoint is truncated; download it again")
        storage = _Storage(storage_type, raw, byteorder)
        lazies[key].array, lazies[key].bfloat16 = storage.array, storage.bfloat16
    for view, key, offset, size in views:
        view.array, view.bfloat16 = lazies[key].array[offset: offset + size], lazies[key].bfloat16
    return result


def _no_storage(_pid):
    raise PrimeSpeechError("corrupt checkpoint: unexpected storage reference")


def sniff_header(path: str | os.PathLike) -> str | None:
    """The GPT-SoVITS version header of a file (e.g. "v2Pro"), or None for a plain torch file."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK" or len(head) < 2:
        return None
    return HEADER_VERSIONS.get(head)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a PyTorch checkpoint into numpy arrays and plain containers, without executing code."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PrimeSpeechError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK":
        with open(path, "rb") as f:
            return Checkpoint(_plain(_read_zip(f)), "zip", None)
    if head in HEADER_VERSIONS:
        with _HeaderPatched(path) as raw, io.BufferedReader(raw) as f:
            return Checkpoint(_plain(_read_zip(f)), "zip", HEADER_VERSIONS[head])
    with open(path, "rb") as f:
        try:
            data = _read_legacy(f)
        except (pickle.UnpicklingError, EOFError, ValueError, KeyError, struct.error) as exc:
            raise PrimeSpeechError(f"{path} is not a PyTorch checkpoint or is corrupt ({exc})") from exc
    return Checkpoint(_plain(data), "legacy", None)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read a PyTorch checkpoint (zip or legacy, GPT-SoVITS headers undone) as a dict of numpy arrays."""
    data = load_checkpoint(path).data
    if not isinstance(data, dict):
        raise PrimeSpeechError(f"{path} holds a {type(data).__name__}, not a dict of tensors")
    return data
