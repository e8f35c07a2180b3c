"""Stratified subsample and train/val/test split, written as a manifest DVC can track.

Why: every later stage must see exactly the same images in the same split; a manifest of
(part, index, label, split) rows pins that down without copying pixels, and its hash tells DVC when
the split changed.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from pipeline.data.files import USER_SPLITS, ImageFile
from pipeline.data.sources import DatasetFormatError, ImageSource
from pipeline.runtime import atomic

# The manifest names its splits as a dataset that comes split names its folders.
SPLITS: tuple[str, ...] = USER_SPLITS
MANIFEST_COLUMNS: tuple[str, ...] = ("part", "index", "label", "split")


@dataclass(frozen=True)
class ManifestRow:
    """One image of the split: where it lives in the source, its label, its split."""

    part: str
    index: int
    label: int
    split: str


def stratified_split(
    labels: np.ndarray,
    *,
    subset_size: int | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    test_mask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Splits positions 0..len(labels)-1 into train, val and test, keeping class proportions.

    Args:
        labels: One label per image.
        subset_size: Total images to keep (stratified); None keeps all.
        val_fraction: Share of the kept images for validation (with `test_mask`: of the images outside it).
        test_fraction: Share of the kept images for testing (unused with `test_mask`).
        seed: Seed of the shuffles.
        test_mask: The images that make up the test split, all of them (a dataset's official test set); the
            others are split into train and val. None draws the test split like val.

    Returns:
        Split name -> sorted positions into `labels`.

    Raises:
        ValueError: The subset is larger than the dataset, or too small to hold every class in
            every split; or `test_mask` is combined with a subset, or leaves no image outside the test split.
    """
    positions = np.arange(len(labels))
    if test_mask is not None:
        if subset_size is not None:
            raise ValueError("a fixed test split takes every image of its part: it can't be combined with a subset")
        test, rest = positions[test_mask], positions[~test_mask]
        if not len(test) or not len(rest):
            raise ValueError(f"the fixed test split holds {len(test)} of {len(labels)} images; both parts need images")
        train, val = train_test_split(
            rest, test_size=round(val_fraction * len(rest)), stratify=labels[rest], random_state=seed
        )
        return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
    if subset_size is not None and subset_size > len(labels):
        raise ValueError(f"data.subset_size is {subset_size}, the dataset has only {len(labels)} images")
    if subset_size is not None and subset_size < len(labels):
        positions, _ = train_test_split(positions, train_size=subset_size, stratify=labels, random_state=seed)
    # Whole counts, so that 0.1 of 40000 is 4000 whatever the float rounding of derived shares.
    test_count = round(test_fraction * len(positions))
    val_count = round(val_fraction * len(positions))
    rest, test = train_test_split(positions, test_size=test_count, stratify=labels[positions], random_state=seed)
    train, val = train_test_split(rest, test_size=val_count, stratify=labels[rest], random_state=seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def cap_training_rows(rows: list[ManifestRow], train_size: int | None, *, seed: int) -> list[ManifestRow]:
    """Keeps `train_size` of the training rows, drawn stratified by label; val and test rows are untouched.

    Why: a small-data task (200 training images) must still be validated and tested on the full splits, and
    capping after the split keeps those the same whatever the cap.

    Args:
        rows: The manifest rows.
        train_size: Training rows to keep; None keeps all.
        seed: Seed of the draw.

    Returns:
        The rows, in their order, without the training rows not drawn.

    Raises:
        ValueError: `train_size` exceeds the training rows, or is smaller than the number of classes in them.
    """
    train = [index for index, row in enumerate(rows) if row.split == "train"]
    if train_size is None or train_size == len(train):
        return rows
    if train_size > len(train):
        raise ValueError(f"data.train_size is {train_size}, but the split leaves {len(train)} training images")
    labels = np.array([rows[index].label for index in train])
    if train_size < len(np.unique(labels)):
        raise ValueError(
            f"data.train_size is {train_size}, fewer than the {len(np.unique(labels))} classes it must hold"
        )
    kept, _ = train_test_split(np.array(train), train_size=train_size, stratify=labels, random_state=seed)
    dropped = set(train) - {int(index) for index in kept}
    return [row for index, row in enumerate(rows) if index not in dropped]


def manifest_rows(source: ImageSource, split: dict[str, np.ndarray]) -> list[ManifestRow]:
    """Turns a split of positions into manifest rows, train first, each split in source order."""
    return [
        ManifestRow(
            part=str(source.parts[position]),
            index=int(source.indices[position]),
            label=int(source.labels[position]),
            split=name,
        )
        for name in SPLITS
        for position in split[name]
    ]


def write_manifest(rows: list[ManifestRow], path: Path) -> None:
    """Writes the manifest as CSV, atomically (`pipeline.runtime.atomic`): a killed run leaves the old one."""
    with atomic.atomic_path(path) as temporary, temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows((row.part, row.index, row.label, row.split) for row in rows)


def read_manifest(path: Path) -> list[ManifestRow]:
    """Reads a manifest written by `write_manifest`.

    Raises:
        ValueError: The header is not the manifest's.
    """
    with Path(path).open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = tuple(next(reader, ()))
        if header != MANIFEST_COLUMNS:
            raise ValueError(f"{path} is not a manifest: header {header}, expected {MANIFEST_COLUMNS}")
        return [
            ManifestRow(part=part, index=int(index), label=int(label), split=split)
            for part, index, label, split in reader
        ]


def select(source: ImageSource, rows: list[ManifestRow], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Gathers the images and labels of one split from the source.

    Raises:
        ValueError: A row points outside the source, or its label differs from the source's (the
            manifest was written for other files).
    """
    lookup = {
        (str(part), int(index)): position
        for position, (part, index) in enumerate(zip(source.parts, source.indices, strict=True))
    }
    positions = []
    for row in rows:
        if row.split != split:
            continue
        position = lookup.get((row.part, row.index))
        if position is None or int(source.labels[position]) != row.label:
            raise ValueError(f"manifest row {row} does not match the source images: rerun the prepare stage")
        positions.append(position)
    chosen = np.asarray(positions, dtype=np.int64)
    if chosen.size and np.array_equal(chosen, np.arange(chosen[0], chosen[0] + chosen.size)):
        # A contiguous block (each split of an image cache is one) stays a view: a memmap is not read.
        return source.images[chosen[0] : chosen[0] + chosen.size], source.labels[chosen]
    return source.images[chosen], source.labels[chosen]


def class_counts(rows: list[ManifestRow], class_names: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Counts images per class in each split, for the data report."""
    counts = {split: dict.fromkeys(class_names, 0) for split in SPLITS}
    for row in rows:
        counts[row.split][class_names[row.label]] += 1
    return counts


def split_scanned(
    files: list[ImageFile],
    labels: np.ndarray,
    class_names: tuple[str, ...],
    *,
    user_splits: bool,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    subset_size: int | None,
) -> dict[str, np.ndarray]:
    """Positions into `files` per split: the split the folders gave, or the stratified one.

    Args:
        files: The decoded, de-duplicated images, in cache order.
        labels: Their labels (indices into `class_names`).
        class_names: The classes.
        user_splits: Whether the folder came as train/, val/ and test/ folders (each file's `split`).
        val_fraction: Share for validation when the split is not given.
        test_fraction: Share for testing when the split is not given.
        seed: Seed of the stratified split.
        subset_size: Stratified subsample; None keeps all.

    Returns:
        Split name -> positions into `files`.

    Raises:
        DatasetFormatError: A class lacks training images (given split), or has too few images to split.
    """
    if user_splits:
        split = {name: np.array([p for p, f in enumerate(files) if f.split == name], dtype=np.int64) for name in SPLITS}
        train_classes = set(labels[split["train"]].tolist())
        lacking = [class_names[label] for label in range(len(class_names)) if label not in train_classes]
        if lacking:
            raise DatasetFormatError(
                f"class {', '.join(lacking)} has no training image: every class of val/ and test/ needs "
                "images in train/"
            )
        return split
    counts = Counter(labels.tolist())
    # scikit-learn's stratified split needs each class at least twice at each of its two cuts.
    needed = 3
    small = [f"{class_names[label]} ({count})" for label, count in sorted(counts.items()) if count < needed]
    if small:
        raise DatasetFormatError(
            f"class {', '.join(small)} has fewer than {needed} usable images, the least the stratified "
            "train/val/test split needs: add images, remove the class folder, or give train/, val/, test/ folders"
        )
    try:
        return stratified_split(
            labels, subset_size=subset_size, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
        )
    except ValueError as error:
        raise DatasetFormatError(
            f"cannot split {len(labels)} images of {len(class_names)} classes with data.val_fraction "
            f"{val_fraction} and data.test_fraction {test_fraction}: {error}"
        ) from None
