"""The activation store: frozen activations on disk, memory-mapped, shared by every run with the same key.

Why: the pass of the frozen backbone over every image is the largest single cost of a run on a CPU (about
40% of the train stage), and it gives the same numbers for every run that changes only what sits above the
frozen part: the head, the optimiser, the schedule, the epochs, the learning rate, a resume, or `lr_find`
followed by `train`. `pipeline.training.features` asks this store for the activations at its deepest cut,
one entry per split and view (orientation), and computes only what is missing.

An entry is a folder named by its key's digest, holding `activations.npy` and `manifest.json` (the key's
parts, shape, dtype, byte size, checksum, and when it was computed). It is written into a temporary folder
and renamed into place with its manifest already inside, so a crash leaves a temporary folder, never a
half-written entry; two processes writing the same entry race on that rename, and the loser reads the
winner's. An entry whose manifest is missing or disagrees with its file (size, checksum, shape) is
removed and recomputed, with one printed line, and never read as data. Past the size limit, the least
recently used entries (by the manifest's modification time, touched on every read) are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipeline.runtime.processes import process_alive

# Bump when what an entry holds changes meaning (the file layout, or how the images become the backbone's
# input before the preprocessing: `pipeline.data.datasets.to_model_input`), so old entries are never read.
FORMAT_VERSION = 1
ACTIVATIONS = "activations.npy"
MANIFEST = "manifest.json"
_TEMPORARY = ".tmp-"
_TRASH = ".trash-"
_CHUNK = 1 << 24


@dataclass(frozen=True)
class ActivationKey:
    """Everything that decides the activations of one split and view at one cut.

    Attributes:
        backbone: The backbone's name.
        weights_digest: `weights_digest` of the layers below the cut (their configuration and weights,
            BatchNorm statistics included): any change of weights changes it.
        image_size: Square input size of the backbone.
        preprocessing: `describe_layer` of the backbone's preprocessing.
        cut_layer: The layer whose output is stored.
        batchnorm: How the layers below the cut run; always inference mode (`"inference"`), so their
            BatchNorm layers use the moving statistics that `weights_digest` covers.
        dtype_policy: Keras' dtype policy of the pass (mixed precision gives other numbers).
        flip: The view's orientation ("none", or the flip of a flip-only augmentation).
        images_digest: `images_digest` of the split's uint8 images; the labels are left out, since the
            activations do not depend on them (the factory reads them from the split).
    """

    backbone: str
    weights_digest: str
    image_size: int
    preprocessing: str
    cut_layer: str
    batchnorm: str
    dtype_policy: str
    flip: str
    images_digest: str

    def digest(self) -> str:
        """The entry's name: a digest of every part and of `FORMAT_VERSION`."""
        text = json.dumps({"format": FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def images_digest(images: np.ndarray) -> str:
    """Digest of an image array's shape, dtype and every pixel, read in chunks of rows (no full copy)."""
    digest = hashlib.blake2b(f"{images.shape}{images.dtype.str}".encode(), digest_size=16)
    rows = max(1, _CHUNK // max(1, images[:1].nbytes))
    for start in range(0, len(images), rows):
        digest.update(np.ascontiguousarray(images[start : start + rows]).data)
    return digest.hexdigest()


def weights_digest(layers: Iterable[tuple[str, list[np.ndarray]]]) -> str:
    """Digest of layers in order: each layer's description and its weights' shapes, dtypes and bytes.

    Args:
        layers: (description, weights) per layer, e.g. `describe_layer(layer)` and its weights as arrays.

    Returns:
        A hex digest.
    """
    digest = hashlib.blake2b(digest_size=16)
    for description, weights in layers:
        digest.update(description.encode())
        for weight in weights:
            digest.update(f"{weight.shape}{weight.dtype.str}".encode())
            digest.update(np.ascontiguousarray(weight).data)
    return digest.hexdigest()


def describe_layer(layer: object) -> str:
    """A layer's class and configuration as stable text, for a key.

    Why without its name, `trainable` flag and addresses: Keras numbers unnamed layers per process
    (`input_layer_3`), the phases (and `lr_find`) set `trainable` before the pass, and a configuration that
    holds a function prints as `<function f at 0x7f...>`; each would differ between runs of the same model
    and make them miss the store, and none changes what a layer computes in inference mode.
    """
    try:
        config = dict(layer.get_config())
    except (AttributeError, NotImplementedError, TypeError):
        config = {}
    config.pop("name", None)
    config.pop("trainable", None)
    text = json.dumps(config, sort_keys=True, default=repr)
    return f"{type(layer).__module__}.{type(layer).__qualname__}:{re.sub(r' at 0x[0-9a-fA-F]+', '', text)}"


def file_checksum(path: Path) -> str:
    """blake2b of a file, read in chunks.

    Why blake2b: it catches a flipped byte or a truncation anywhere in the file, which is all the store
    needs (it guards against crashes and bad disks, not against an attacker), and at about 1 GB/s on one
    core it costs seconds where the pass it saves costs minutes. The read also brings the entry into the
    page cache, where training reads it from next.
    """
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class StoredActivations:
    """Activations the store holds, memory-mapped read-only.

    Attributes:
        array: The activations (an `np.memmap`, or the computed array when they were not stored).
        entry: The entry's digest (its folder's name).
        computed_at: When the entry was computed (ISO 8601, UTC).
        read: True when read from the store, False when computed by this call.
    """

    array: np.ndarray
    entry: str
    computed_at: str
    read: bool


class ActivationStore:
    """A folder of activation entries with a size limit (see the module docstring).

    Args:
        root: The store's folder (created on the first write).
        limit_bytes: Largest total size of the entries; past it the least recently used are removed. An entry
            larger than this is not stored.
    """

    def __init__(self, root: Path, *, limit_bytes: int) -> None:
        self.root = Path(root)
        self.limit_bytes = limit_bytes
        # Entries this process read or wrote: its own writes never evict them, since its datasets map them.
        self._in_use: set[str] = set()

    def fetch(self, key: ActivationKey, compute: Callable[[], np.ndarray], *, label: str) -> StoredActivations:
        """The entry of `key`, read when it is sound, otherwise computed with `compute()` and stored.

        Args:
            key: The entry's key.
            compute: Computes the activations (the forward pass), called only when the entry is missing.
            label: What the entry holds in words (split and view), for the manifest and the printed lines.

        Returns:
            The activations, memory-mapped from the store whenever they could be stored.
        """
        found = self.load(key, label=label)
        if found is not None:
            return found
        return self.save(key, compute(), label=label)

    def load(self, key: ActivationKey, *, label: str) -> StoredActivations | None:
        """The sound entry of `key`, or None; an unsound one is removed, with one printed line."""
        name = key.digest()
        entry = self.root / name
        if not entry.exists():
            return None
        problem, manifest = _check(entry, name)
        if problem is not None:
            print(f"activation store: entry {name} ({label}) {problem}; removed, recomputing it", flush=True)
            _remove(entry)
            return None
        array = np.load(entry / ACTIVATIONS, mmap_mode="r")
        # The manifest's modification time is the entry's last use, which the size limit evicts by.
        with contextlib.suppress(OSError):
            os.utime(entry / MANIFEST)
        self._in_use.add(name)
        return StoredActivations(array, name, manifest["computed_at"], read=True)

    def save(self, key: ActivationKey, array: np.ndarray, *, label: str) -> StoredActivations:
        """Stores `array` as the entry of `key` and returns it memory-mapped; the computed array when it cannot."""
        name = key.digest()
        computed_at = datetime.now(UTC).isoformat(timespec="seconds")
        if array.nbytes > self.limit_bytes:
            return StoredActivations(array, name, computed_at, read=False)
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.root / f"{_TEMPORARY}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        temporary.mkdir()
        try:
            path = temporary / ACTIVATIONS
            with path.open("wb") as handle:
                np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
            manifest = {
                "format": FORMAT_VERSION,
                "key": asdict(key),
                "label": label,
                "shape": list(array.shape),
                "dtype": array.dtype.str,
                "bytes": path.stat().st_size,
                "checksum": file_checksum(path),
                "computed_at": computed_at,
            }
            # The manifest last: a folder without one was never finished.
            _write_json(temporary / MANIFEST, manifest)
            os.rename(temporary, self.root / name)
        except OSError as error:
            _remove(temporary)
            # Another process renamed the same entry into place first (the rename of a folder onto a non-empty
            # one fails): use the winner's. Anything else (a full disk) leaves the run on the computed array.
            winner = self.load(key, label=label)
            if winner is not None:
                return winner
            print(f"activation store: could not store entry {name} ({label}): {error}; kept in memory", flush=True)
            return StoredActivations(array, name, computed_at, read=False)
        self._in_use.add(name)
        self.evict()
        stored = np.load(self.root / name / ACTIVATIONS, mmap_mode="r")
        return StoredActivations(stored, name, computed_at, read=False)

    def entries(self) -> list[tuple[str, float, int]]:
        """Every finished entry as (name, last used as a POSIX time, bytes), least recently used first."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                used = (entry / MANIFEST).stat().st_mtime
            except OSError:
                used = 0.0  # no manifest: unfinished or damaged, the first to go
            size = sum(path.stat().st_size for path in entry.iterdir() if path.is_file())
            found.append((entry.name, used, size))
        return sorted(found, key=lambda item: (item[1], item[0]))

    def evict(self) -> list[str]:
        """Removes the least recently used entries until the store fits its limit; returns their names.

        Entries this process uses are kept. Temporary folders of processes that are gone (a crash mid-write)
        are removed too.
        """
        self._remove_abandoned()
        entries = self.entries()
        total = sum(size for _, _, size in entries)
        evicted = []
        for name, _, size in entries:
            if total <= self.limit_bytes:
                break
            if name in self._in_use:
                continue
            _remove(self.root / name)
            total -= size
            evicted.append(name)
        return evicted

    def _remove_abandoned(self) -> None:
        for entry in self.root.glob(f"{_TEMPORARY}*"):
            pid = entry.name.rsplit("-", 2)[-2]
            if pid.isdigit() and not process_alive(int(pid)):
                _remove(entry)
        for entry in self.root.glob(f"{_TRASH}*"):
            shutil.rmtree(entry, ignore_errors=True)


def _check(entry: Path, name: str) -> tuple[str | None, dict]:
    """Why `entry` must not be read (None when it is sound), and its manifest."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except FileNotFoundError:
        return "has no manifest (an interrupted or damaged write)", {}
    except (OSError, ValueError) as error:
        return f"has an unreadable manifest ({error})", {}
    path = entry / ACTIVATIONS
    try:
        size = path.stat().st_size
    except OSError:
        return f"has no {ACTIVATIONS}", manifest
    try:
        same_key = manifest.get("format") == FORMAT_VERSION and ActivationKey(**manifest["key"]).digest() == name
    except (KeyError, TypeError):
        same_key = False
    if not same_key:
        return "has a manifest of another key or format", manifest
    if size != manifest.get("bytes"):
        expected = manifest.get("bytes")
        return f"is truncated ({ACTIVATIONS} holds {size} bytes, its manifest says {expected})", manifest
    if file_checksum(path) != manifest.get("checksum"):
        return f"is damaged ({ACTIVATIONS} does not match its manifest's checksum)", manifest
    try:
        array = np.load(path, mmap_mode="r")
    except ValueError as error:
        return f"has an unreadable {ACTIVATIONS} ({error})", manifest
    if list(array.shape) != manifest.get("shape") or array.dtype.str != manifest.get("dtype"):
        return f"holds {array.shape} {array.dtype.str}, not its manifest's shape and dtype", manifest
    return None, manifest


def _write_json(path: Path, content: dict) -> None:
    with path.open("w") as handle:
        json.dump(content, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def _remove(entry: Path) -> None:
    """Removes a folder by renaming it aside first, so no reader ever sees it half removed.

    A process that still maps one of its files keeps reading it: POSIX frees the data at the last unmap.
    """
    trash = entry.parent / f"{_TRASH}{uuid.uuid4().hex}"
    try:
        os.rename(entry, trash)
    except OSError:
        return  # already gone: another process removed it
    shutil.rmtree(trash, ignore_errors=True)
