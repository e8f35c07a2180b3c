"""Tests of pipeline/data/split.py: the stratified split, the manifest and selecting a split's images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.data.sources import FASHION_MNIST_CLASSES, ImageSource
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
from tests.data.conftest import T10K_IMAGES, TRAIN_IMAGES

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
