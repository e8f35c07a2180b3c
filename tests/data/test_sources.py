"""Tests of pipeline/data/sources.py and pipeline/data/split.py on tiny hand-written IDX files."""

from __future__ import annotations

import gzip
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
from pipeline.data.split import (
    MANIFEST_COLUMNS,
    ManifestRow,
    cap_training_rows,
    class_counts,
    manifest_rows,
    read_manifest,
    select,
    stratified_split,
    write_manifest,
)

TRAIN_LABELS = np.array([3, 0, 9, 1, 0, 3], dtype=np.uint8)
T10K_LABELS = np.array([9, 2, 0, 1], dtype=np.uint8)


def _images(count: int, first_value: int) -> np.ndarray:
    """Returns `count` 28x28 uint8 images, each different from the others and not constant."""
    pixels = np.arange(28 * 28, dtype=np.int64).reshape(28, 28)
    return np.stack([(pixels + first_value + 7 * item) % 256 for item in range(count)]).astype(np.uint8)


TRAIN_IMAGES = _images(len(TRAIN_LABELS), first_value=0)
T10K_IMAGES = _images(len(T10K_LABELS), first_value=100)


def _idx_bytes(array: np.ndarray) -> bytes:
    """Encodes a uint8 array as IDX: zero, zero, type 0x08, ndim, big-endian uint32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _write_idx(path: Path, array: np.ndarray) -> Path:
    """Writes `array` as an IDX file, gzipped when `path` ends in .gz."""
    data = _idx_bytes(array)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


def _write_dataset(directory: Path, *, train_suffix: str = ".gz", t10k_suffix: str = "") -> Path:
    """Writes the four files of the tiny dataset: train gzipped, t10k plain unless told otherwise."""
    _write_idx(directory / f"train-images-idx3-ubyte{train_suffix}", TRAIN_IMAGES)
    _write_idx(directory / f"train-labels-idx1-ubyte{train_suffix}", TRAIN_LABELS)
    _write_idx(directory / f"t10k-images-idx3-ubyte{t10k_suffix}", T10K_IMAGES)
    _write_idx(directory / f"t10k-labels-idx1-ubyte{t10k_suffix}", T10K_LABELS)
    return directory


@pytest.fixture
def source(tmp_path: Path) -> ImageSource:
    """The tiny dataset, loaded."""
    return load_idx_dataset(_write_dataset(tmp_path))


# --- IDX files --------------------------------------------------------------------------------


def test_idx_header_matches_the_mnist_magic_numbers() -> None:
    assert int.from_bytes(_idx_bytes(TRAIN_IMAGES)[:4], "big") == 2051
    assert int.from_bytes(_idx_bytes(TRAIN_LABELS)[:4], "big") == 2049


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_images(tmp_path: Path, suffix: str) -> None:
    path = _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", TRAIN_IMAGES)

    images = read_idx(path)

    assert images.dtype == np.uint8
    assert images.shape == (6, 28, 28)
    np.testing.assert_array_equal(images, TRAIN_IMAGES)
    assert images[2, 0, :3].tolist() == [14, 15, 16]


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_labels(tmp_path: Path, suffix: str) -> None:
    path = _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", TRAIN_LABELS)

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
    path.write_bytes(_idx_bytes(TRAIN_LABELS)[:-2])

    with pytest.raises(DatasetFormatError, match="holds 4 values, its header announces 6"):
        read_idx(path)


def test_read_idx_of_too_long_body(tmp_path: Path) -> None:
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(_idx_bytes(TRAIN_LABELS) + b"\x00")

    with pytest.raises(DatasetFormatError, match="holds 7 values, its header announces 6"):
        read_idx(path)


@pytest.mark.parametrize("length", [4, 6, 12])
def test_read_idx_of_truncated_header(tmp_path: Path, length: int) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(_idx_bytes(TRAIN_IMAGES)[:length])

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
    loaded = load_idx_dataset(_write_dataset(tmp_path, train_suffix=train_suffix, t10k_suffix=t10k_suffix))

    np.testing.assert_array_equal(loaded.images, np.concatenate([TRAIN_IMAGES, T10K_IMAGES]))
    assert loaded.labels.tolist() == [3, 0, 9, 1, 0, 3, 9, 2, 0, 1]


def test_missing_file_says_how_to_install(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()

    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte") as caught:
        load_idx_dataset(tmp_path)

    message = str(caught.value)
    assert message.startswith(f"dataset files missing in {tmp_path}: t10k-labels-idx1-ubyte (.gz or plain);")
    assert "apt-get install dataset-fashion-mnist" in message
    assert isinstance(caught.value, FileNotFoundError)


def test_idx_file_digests_follow_the_bytes_of_each_file(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    names = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    digests = idx_file_digests(tmp_path)
    assert list(digests) == names
    assert digests == {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in names}
    assert digests["t10k-labels-idx1-ubyte"] == hashlib.sha256(_idx_bytes(T10K_LABELS)).hexdigest()

    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", T10K_LABELS[::-1].copy())
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
    _write_dataset(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])

    with pytest.raises(DatasetFormatError, match="t10k-images-idx3-ubyte holds 3036 values, its header announces 3136"):
        load_idx_dataset(tmp_path)


def test_image_and_label_counts_differ(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", T10K_LABELS[:3])

    with pytest.raises(DatasetFormatError, match=r"disagree: shapes \(4, 28, 28\) and \(3,\)"):
        load_idx_dataset(tmp_path)


def test_label_beyond_class_names(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([9, 10, 0, 1], dtype=np.uint8))

    with pytest.raises(DatasetFormatError, match="t10k-labels-idx1-ubyte has label 10, only 10 classes are named"):
        load_idx_dataset(tmp_path)


def test_label_beyond_custom_class_names(tmp_path: Path) -> None:
    _write_dataset(tmp_path)

    with pytest.raises(DatasetFormatError, match="has label 9, only 3 classes are named"):
        load_idx_dataset(tmp_path, class_names=("a", "b", "c"))


# --- the split --------------------------------------------------------------------------------


def _split_sizes(split: dict[str, np.ndarray]) -> dict[str, int]:
    """Number of positions in each split."""
    return {name: len(positions) for name, positions in split.items()}


def test_split_sizes_are_exact() -> None:
    labels = np.arange(100) % 10

    split = stratified_split(labels, subset_size=None, val_fraction=0.1, test_fraction=0.1, seed=0)

    assert _split_sizes(split) == {"train": 80, "val": 10, "test": 10}


def test_split_sizes_with_subset() -> None:
    labels = np.arange(1000) % 10

    split = stratified_split(labels, subset_size=200, val_fraction=0.2, test_fraction=0.1, seed=1)

    assert _split_sizes(split) == {"train": 140, "val": 40, "test": 20}


@pytest.mark.parametrize(("count", "subset_size", "expected"), [(300, None, 30), (70000, 40000, 4000)])
def test_val_size_is_its_fraction(count: int, subset_size: int | None, expected: int) -> None:
    labels = np.arange(count) % 10

    split = stratified_split(labels, subset_size=subset_size, val_fraction=0.1, test_fraction=0.1, seed=42)

    assert len(split["val"]) == expected
    assert len(split["test"]) == expected


def test_splits_are_disjoint_sorted_and_cover_everything() -> None:
    labels = np.arange(100) % 10

    split = stratified_split(labels, subset_size=None, val_fraction=0.2, test_fraction=0.1, seed=3)

    train, val, test = (set(split[name].tolist()) for name in ("train", "val", "test"))
    assert not train & val
    assert not train & test
    assert not val & test
    assert train | val | test == set(range(100))
    assert all(np.array_equal(positions, np.sort(positions)) for positions in split.values())


def test_subset_splits_are_disjoint_and_their_union_is_the_stratified_subset() -> None:
    labels = np.arange(1000) % 10

    split = stratified_split(labels, subset_size=200, val_fraction=0.1, test_fraction=0.1, seed=5)

    union = np.concatenate(list(split.values()))
    assert len(np.unique(union)) == len(union) == 200
    assert union.min() >= 0
    assert union.max() < 1000
    assert np.bincount(labels[union], minlength=10).tolist() == [20] * 10


def test_split_preserves_class_proportions() -> None:
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    fractions = {"train": 0.7, "val": 0.2, "test": 0.1}

    split = stratified_split(labels, subset_size=None, val_fraction=0.2, test_fraction=0.1, seed=7)

    for name, positions in split.items():
        counts = np.bincount(labels[positions], minlength=4)
        expected = np.array([40, 30, 20, 10]) * fractions[name]
        assert np.all(np.abs(counts - expected) <= 1), (name, counts, expected)


def test_same_seed_same_split_other_seed_other_split() -> None:
    labels = np.arange(200) % 10
    arguments = {"subset_size": 100, "val_fraction": 0.1, "test_fraction": 0.1}

    first = stratified_split(labels, seed=11, **arguments)
    again = stratified_split(labels, seed=11, **arguments)
    other = stratified_split(labels, seed=12, **arguments)

    assert all(np.array_equal(first[name], again[name]) for name in first)
    assert any(not np.array_equal(first[name], other[name]) for name in first)


def test_subset_larger_than_dataset() -> None:
    labels = np.arange(100) % 10

    with pytest.raises(ValueError, match="data.subset_size is 101, the dataset has only 100 images"):
        stratified_split(labels, subset_size=101, val_fraction=0.1, test_fraction=0.1, seed=0)


# --- the manifest -----------------------------------------------------------------------------

TINY_SPLIT = {"train": np.array([0, 1, 2, 3, 6, 7]), "val": np.array([4, 8]), "test": np.array([5, 9])}


def test_manifest_rows_train_first_in_source_order(source: ImageSource) -> None:
    rows = manifest_rows(source, TINY_SPLIT)

    assert rows == [
        ManifestRow("train", 0, 3, "train"),
        ManifestRow("train", 1, 0, "train"),
        ManifestRow("train", 2, 9, "train"),
        ManifestRow("train", 3, 1, "train"),
        ManifestRow("t10k", 0, 9, "train"),
        ManifestRow("t10k", 1, 2, "train"),
        ManifestRow("train", 4, 0, "val"),
        ManifestRow("t10k", 2, 0, "val"),
        ManifestRow("train", 5, 3, "test"),
        ManifestRow("t10k", 3, 1, "test"),
    ]


def test_manifest_roundtrip(tmp_path: Path, source: ImageSource) -> None:
    rows = manifest_rows(source, TINY_SPLIT)
    path = tmp_path / "data" / "manifest.csv"

    write_manifest(rows, path)

    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",".join(MANIFEST_COLUMNS) == "part,index,label,split"
    assert lines[1] == "train,0,3,train"
    assert read_manifest(path) == rows


def test_manifest_with_wrong_header(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    path.write_text("part,index,label\ntrain,0,3\n", encoding="utf-8")

    with pytest.raises(ValueError, match=r"is not a manifest: header \('part', 'index', 'label'\)"):
        read_manifest(path)


def test_select_returns_exact_images_and_labels(source: ImageSource) -> None:
    rows = manifest_rows(source, TINY_SPLIT)

    images, labels = select(source, rows, "val")

    np.testing.assert_array_equal(images, np.stack([TRAIN_IMAGES[4], T10K_IMAGES[2]]))
    assert labels.tolist() == [0, 0]
    train_images, train_labels = select(source, rows, "train")
    np.testing.assert_array_equal(train_images, np.concatenate([TRAIN_IMAGES[:4], T10K_IMAGES[:2]]))
    assert train_labels.tolist() == [3, 0, 9, 1, 9, 2]


def test_select_of_split_without_rows(source: ImageSource) -> None:
    images, labels = select(source, [ManifestRow("train", 0, 3, "train")], "test")

    assert images.shape == (0, 28, 28)
    assert labels.shape == (0,)


def test_select_rejects_row_whose_label_disagrees(source: ImageSource) -> None:
    rows = [ManifestRow("train", 0, 3, "test"), ManifestRow("t10k", 1, 5, "test")]

    with pytest.raises(ValueError, match="t10k.*does not match the source images: rerun the prepare stage"):
        select(source, rows, "test")


def test_select_rejects_row_outside_the_source(source: ImageSource) -> None:
    rows = [ManifestRow("t10k", 4, 0, "train")]

    with pytest.raises(ValueError, match="rerun the prepare stage"):
        select(source, rows, "train")


def test_class_counts(source: ImageSource) -> None:
    counts = class_counts(manifest_rows(source, TINY_SPLIT), FASHION_MNIST_CLASSES)

    zero = dict.fromkeys(FASHION_MNIST_CLASSES, 0)
    assert counts == {
        "train": {**zero, "T-shirt/top": 1, "Trouser": 1, "Pullover": 1, "Dress": 1, "Ankle boot": 2},
        "val": {**zero, "T-shirt/top": 2},
        "test": {**zero, "Trouser": 1, "Dress": 1},
    }


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


def test_fixed_test_split_takes_the_whole_part_and_splits_the_rest() -> None:
    labels = np.arange(150) % 3
    parts = np.array(["train"] * 120 + ["t10k"] * 30)

    split = stratified_split(
        labels, subset_size=None, val_fraction=0.25, test_fraction=0.1, seed=0, test_mask=parts == "t10k"
    )

    assert split["test"].tolist() == list(range(120, 150))
    assert _split_sizes(split) == {"train": 90, "val": 30, "test": 30}
    assert np.bincount(labels[split["val"]]).tolist() == [10, 10, 10]
    assert set(split["train"].tolist()) | set(split["val"].tolist()) == set(range(120))
    with pytest.raises(ValueError, match="a fixed test split takes every image of its part: it can't be combined"):
        stratified_split(labels, subset_size=60, val_fraction=0.25, test_fraction=0.1, seed=0, test_mask=parts == "x")


def test_cap_training_rows_draws_stratified_and_keeps_val_and_test() -> None:
    rows = [ManifestRow("train", index, index % 2, "train") for index in range(40)]
    rows += [ManifestRow("train", 40 + index, index % 2, "val") for index in range(6)]
    rows += [ManifestRow("t10k", index, index % 2, "test") for index in range(8)]

    capped = cap_training_rows(rows, 10, seed=0)

    train = [row for row in capped if row.split == "train"]
    assert len(train) == 10
    assert sorted(row.label for row in train) == [0] * 5 + [1] * 5
    assert [row for row in capped if row.split != "train"] == rows[40:]
    assert capped == [row for row in rows if row in capped]
    assert cap_training_rows(rows, 10, seed=0) == capped
    assert cap_training_rows(rows, None, seed=0) == rows
    with pytest.raises(ValueError, match="data.train_size is 41, but the split leaves 40 training images"):
        cap_training_rows(rows, 41, seed=0)
    with pytest.raises(ValueError, match="data.train_size is 1, fewer than the 2 classes it must hold"):
        cap_training_rows(rows, 1, seed=0)
