"""Image sources: the IDX files of Fashion-MNIST (and any dataset in that format).

Why: the embedded default must work offline, from the files Debian's `dataset-fashion-mnist` installs,
or from any folder holding the four standard files, gzipped or not.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

IDX_IMAGE_MAGIC = 2051
IDX_LABEL_MAGIC = 2049

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Source part name -> (images file, labels file), without the optional .gz suffix.
IDX_PARTS: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
INSTALL_HINT = (
    "install them with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu, files land in "
    "/usr/share/datasets/fashion-mnist), or set data.path to a folder holding "
    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
    "t10k-labels-idx1-ubyte (each optionally .gz)"
)


class DatasetNotFoundError(PipelineError, FileNotFoundError):
    """Raised when the dataset files are missing; the message says how to install them."""


class DatasetFormatError(PipelineError, ValueError):
    """Raised when a file is not in the IDX format it claims to be."""


@dataclass(frozen=True)
class ImageSource:
    """All images of a dataset, with where each came from.

    Attributes:
        images: uint8 array (count, height, width) or (count, height, width, channels).
        labels: int64 array (count,).
        parts: For each image, the name of the source part it came from ("train", "t10k").
        indices: For each image, its index inside that part.
        class_names: Label index -> human-readable name.
    """

    images: np.ndarray
    labels: np.ndarray
    parts: np.ndarray
    indices: np.ndarray
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class DatasetIdentity:
    """What a run's data is, as the tracking store shows it: a name and where it lives."""

    name: str
    source: str


def dataset_identity(path: str | Path) -> DatasetIdentity:
    """Names the data by its own location, for each kind: the IDX folder, the image folder or the CSV file.

    Why: a run on a user's folder or CSV must not be listed in MLflow as Fashion-MNIST; the folder's or
    file's name tells runs apart at a glance, and its absolute path says where the data was read.

    Args:
        path: `data.path` (absolute, or relative to the working folder).

    Returns:
        The name (the folder's or CSV file's name) and the absolute path as the source.
    """
    resolved = Path(path).resolve()
    # "/" has no name: the path itself is the best name it has.
    return DatasetIdentity(name=resolved.name or str(resolved), source=str(resolved))


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as handle:
            return handle.read()
    return path.read_bytes()


def read_idx(path: Path) -> np.ndarray:
    """Reads an IDX file of unsigned bytes (the MNIST family's format).

    Args:
        path: The file, gzipped when its name ends in .gz.

    Returns:
        uint8 array shaped as the header says: (count,) for labels, (count, rows, cols) for images.

    Raises:
        DatasetFormatError: The header is not an unsigned-byte IDX header, or the data is truncated.
    """
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetFormatError(f"{path} is not an IDX file of unsigned bytes")
    dimension_count = data[3]
    header_size = 4 + 4 * dimension_count
    if len(data) < header_size:
        raise DatasetFormatError(f"{path} ends inside its IDX header")
    shape = tuple(int(size) for size in np.frombuffer(data[4:header_size], dtype=">u4"))
    expected = int(np.prod(shape))
    body = np.frombuffer(data, dtype=np.uint8, offset=header_size)
    if body.size != expected:
        raise DatasetFormatError(f"{path} holds {body.size} values, its header announces {expected}")
    return body.reshape(shape)


def idx_file_digests(directory: str | Path) -> dict[str, str]:
    """SHA-256 of each IDX file of the dataset, as stored (gzipped or not).

    Why: later stages read the IDX files themselves, not a cache; the prepare stage writes these digests
    into its output so that a change of the files' content reaches every stage that depends on it.

    Args:
        directory: Folder holding the four IDX files.

    Returns:
        File name -> hex digest, in `IDX_PARTS` order.

    Raises:
        DatasetNotFoundError: A file is missing; the message says how to install the dataset.
    """
    directory = Path(directory)
    digests: dict[str, str] = {}
    for stem in (stem for stems in IDX_PARTS.values() for stem in stems):
        path = _find(directory, stem)
        if path is None:
            raise DatasetNotFoundError(f"dataset files missing in {directory}: {stem} (.gz or plain); {INSTALL_HINT}")
        digests[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def load_idx_dataset(directory: str | Path, class_names: tuple[str, ...] = FASHION_MNIST_CLASSES) -> ImageSource:
    """Loads both parts (train and t10k) of an MNIST-style dataset.

    Args:
        directory: Folder holding the four IDX files.
        class_names: Names of the label values.

    Returns:
        Every image of both parts, in file order (train first).

    Raises:
        DatasetNotFoundError: A file is missing; the message says how to install the dataset.
        DatasetFormatError: A file is malformed, or image and label counts differ.
    """
    directory = Path(directory)
    images, labels, parts, indices = [], [], [], []
    for part, (image_stem, label_stem) in IDX_PARTS.items():
        image_path, label_path = _find(directory, image_stem), _find(directory, label_stem)
        missing = [stem for stem, found in ((image_stem, image_path), (label_stem, label_path)) if not found]
        if missing:
            raise DatasetNotFoundError(
                f"dataset files missing in {directory}: {', '.join(missing)} (.gz or plain); {INSTALL_HINT}"
            )
        part_images, part_labels = read_idx(image_path), read_idx(label_path)
        if part_images.ndim != 3 or part_labels.ndim != 1 or len(part_images) != len(part_labels):
            raise DatasetFormatError(
                f"{image_path} and {label_path} disagree: shapes {part_images.shape} and {part_labels.shape}"
            )
        if part_labels.size and int(part_labels.max()) >= len(class_names):
            raise DatasetFormatError(
                f"{label_path} has label {int(part_labels.max())}, only {len(class_names)} classes are named"
            )
        images.append(part_images)
        labels.append(part_labels.astype(np.int64))
        parts.append(np.full(len(part_labels), part))
        indices.append(np.arange(len(part_labels)))
    return ImageSource(
        images=np.concatenate(images),
        labels=np.concatenate(labels),
        parts=np.concatenate(parts),
        indices=np.concatenate(indices),
        class_names=class_names,
    )


def select_classes(source: ImageSource, classes: Sequence[str]) -> ImageSource:
    """Keeps the images of some classes, labelled by their position in `classes`.

    Why: a task may use part of a dataset (Hands-On ML's transfer example trains on 8 Fashion-MNIST
    classes, then on the other 2); the labels must then run 0..k-1 for the classifier's k outputs.

    Args:
        source: All images.
        classes: Names of the classes to keep, in the label order wanted.

    Returns:
        The kept images in source order, with their new labels and `classes` as class names.

    Raises:
        DatasetFormatError: A name is not one of the source's classes.
    """
    unknown = [name for name in classes if name not in source.class_names]
    if unknown:
        raise DatasetFormatError(
            f"classes {', '.join(map(repr, unknown))} are not in the dataset; it has {', '.join(source.class_names)}"
        )
    relabel = np.full(len(source.class_names), -1, dtype=np.int64)
    for label, name in enumerate(classes):
        relabel[source.class_names.index(name)] = label
    new_labels = relabel[source.labels]
    keep = new_labels >= 0
    return ImageSource(
        images=source.images[keep],
        labels=new_labels[keep],
        parts=source.parts[keep],
        indices=source.indices[keep],
        class_names=tuple(classes),
    )
