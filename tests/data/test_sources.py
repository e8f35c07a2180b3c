"""Tests of pipeline/data/sources.py on tiny hand-written IDX files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.sources import (
    FASHION_MNIST_CLASSES,
    DatasetFormatError,
    DatasetNotFoundError,
    ImageSource,
    idx_file_digests,
    load_idx_dataset,
    read_idx,
    select_classes,
)
from tests.data.conftest import (
    T10K_IMAGES,
    T10K_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    idx_bytes,
    write_dataset,
    write_idx,
)

# --- IDX files --------------------------------------------------------------------------------


def test_idx_header_matches_the_mnist_magic_numbers() -> None:
    assert int.from_bytes(idx_bytes(TRAIN_IMAGES)[:4], "big") == 2051
    assert int.from_bytes(idx_bytes(TRAIN_LABELS)[:4], "big") == 2049


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_images(tmp_path: Path, suffix: str) -> None:
    path = write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", TRAIN_IMAGES)

    images = read_idx(path)

    assert images.dtype == np.uint8
    assert images.shape == (6, 28, 28)
    np.testing.assert_array_equal(images, TRAIN_IMAGES)
    assert images[2, 0, :3].tolist() == [14, 15, 16]


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_labels(tmp_path: Path, suffix: str) -> None:
    path = write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", TRAIN_LABELS)

    labels = read_idx(path)

    assert labels.dtype == np.uint8
    assert labels.tolist() == [3, 0, 9, 1, 0, 3]


def test_read_idx_of_non_idx_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello, world")

    with pytest.raises(DatasetFormatError, match="notes.txt is not an IDX file of unsigned bytes"):
        read_idx(path)


def test_read_idx_of_truncated_body(tmp_path: Path) -> None:
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(TRAIN_LABELS)[:-2])

    with pytest.raises(DatasetFormatError, match="holds 4 values, its header announces 6"):
        read_idx(path)


def test_read_idx_of_too_long_body(tmp_path: Path) -> None:
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(TRAIN_LABELS) + b"\x00")

    with pytest.raises(DatasetFormatError, match="holds 7 values, its header announces 6"):
        read_idx(path)


@pytest.mark.parametrize("length", [4, 6, 12])
def test_read_idx_of_truncated_header(tmp_path: Path, length: int) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(TRAIN_IMAGES)[:length])

    with pytest.raises(DatasetFormatError):
        read_idx(path)


# --- the dataset ------------------------------------------------------------------------------


def test_load_idx_dataset_in_file_order(source: ImageSource) -> None:
    np.testing.assert_array_equal(source.images, np.concatenate([TRAIN_IMAGES, T10K_IMAGES]))
    assert source.images.dtype == np.uint8
    assert source.labels.dtype == np.int64
    assert source.labels.tolist() == [3, 0, 9, 1, 0, 3, 9, 2, 0, 1]
    assert source.parts.tolist() == ["train"] * 6 + ["t10k"] * 4
    assert source.indices.tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
    assert source.class_names == FASHION_MNIST_CLASSES


@pytest.mark.parametrize(("train_suffix", "t10k_suffix"), [("", ""), (".gz", ".gz"), ("", ".gz")])
def test_load_idx_dataset_plain_or_gzipped(tmp_path: Path, train_suffix: str, t10k_suffix: str) -> None:
    loaded = load_idx_dataset(write_dataset(tmp_path, train_suffix=train_suffix, t10k_suffix=t10k_suffix))

    np.testing.assert_array_equal(loaded.images, np.concatenate([TRAIN_IMAGES, T10K_IMAGES]))
    assert loaded.labels.tolist() == [3, 0, 9, 1, 0, 3, 9, 2, 0, 1]


def test_missing_file_says_how_to_install(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()

    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte") as caught:
        load_idx_dataset(tmp_path)

    message = str(caught.value)
    assert message.startswith(f"dataset files missing in {tmp_path}: t10k-labels-idx1-ubyte (.gz or plain);")
    assert "apt-get install dataset-fashion-mnist" in message
    assert isinstance(caught.value, FileNotFoundError)


def test_idx_file_digests_follow_the_bytes_of_each_file(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    names = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    digests = idx_file_digests(tmp_path)
    assert list(digests) == names
    assert digests == {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in names}
    assert digests["t10k-labels-idx1-ubyte"] == hashlib.sha256(idx_bytes(T10K_LABELS)).hexdigest()

    write_idx(tmp_path / "t10k-labels-idx1-ubyte", T10K_LABELS[::-1].copy())
    changed = idx_file_digests(tmp_path)
    assert [name for name in names if changed[name] != digests[name]] == ["t10k-labels-idx1-ubyte"]

    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"train-images-idx3-ubyte \(\.gz or plain\)"):
        idx_file_digests(tmp_path)


def test_empty_folder_names_both_train_files(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetNotFoundError,
        match="missing in .*: train-images-idx3-ubyte, train-labels-idx1-ubyte .*apt-get install dataset-fashion-mnist",
    ):
        load_idx_dataset(tmp_path)


def test_truncated_file_in_dataset(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])

    with pytest.raises(DatasetFormatError, match="t10k-images-idx3-ubyte holds 3036 values, its header announces 3136"):
        load_idx_dataset(tmp_path)


def test_image_and_label_counts_differ(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", T10K_LABELS[:3])

    with pytest.raises(DatasetFormatError, match=r"disagree: shapes \(4, 28, 28\) and \(3,\)"):
        load_idx_dataset(tmp_path)


def test_label_beyond_class_names(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([9, 10, 0, 1], dtype=np.uint8))

    with pytest.raises(DatasetFormatError, match="t10k-labels-idx1-ubyte has label 10, only 10 classes are named"):
        load_idx_dataset(tmp_path)


def test_label_beyond_custom_class_names(tmp_path: Path) -> None:
    write_dataset(tmp_path)

    with pytest.raises(DatasetFormatError, match="has label 9, only 3 classes are named"):
        load_idx_dataset(tmp_path, class_names=("a", "b", "c"))


def _source(labels: np.ndarray, parts: np.ndarray) -> ImageSource:
    return ImageSource(
        images=np.arange(len(labels), dtype=np.uint8)[:, None, None].repeat(2, 1).repeat(2, 2),
        labels=labels.astype(np.int64),
        parts=parts,
        indices=np.arange(len(labels)),
        class_names=FASHION_MNIST_CLASSES,
    )


def test_select_classes_keeps_them_labelled_in_the_order_given() -> None:
    source = _source(np.array([5, 0, 6, 6, 9, 5]), np.array(["train"] * 4 + ["t10k"] * 2))

    selected = select_classes(source, ["Shirt", "Sandal"])

    assert selected.class_names == ("Shirt", "Sandal")
    assert selected.labels.tolist() == [1, 0, 0, 1]
    assert selected.indices.tolist() == [0, 2, 3, 5]
    assert selected.parts.tolist() == ["train", "train", "train", "t10k"]
    assert selected.images[:, 0, 0].tolist() == [0, 2, 3, 5]
    with pytest.raises(DatasetFormatError, match="classes 'Shoe' are not in the dataset; it has T-shirt/top, "):
        select_classes(source, ["Shirt", "Shoe"])


def test_dataset_of_the_default_idx_folder_is_fashion_mnist() -> None:
    from pipeline.data.sources import DatasetIdentity, dataset_identity

    assert dataset_identity("/usr/share/datasets/fashion-mnist") == DatasetIdentity(
        name="fashion-mnist", source="/usr/share/datasets/fashion-mnist"
    )
    assert dataset_identity("/") == DatasetIdentity(name="/", source="/")
