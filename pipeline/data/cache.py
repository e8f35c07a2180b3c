"""The prepare stage's memmap cache of a user's image files: decoded once, de-duplicated, split, reported.

Why: user datasets come as files in any format Pillow decodes, some of them broken. Each file is decoded
once, by the prepare stage, into a fixed-size uint8 array memory-mapped from disk, so the later stages
read pixels without decoding and without holding the whole dataset in RAM. Every file that cannot be
used is skipped with a reason the data report lists; what makes the whole dataset unusable is refused
with one message (a `DatasetFormatError` or `DatasetNotFoundError`, which the stages print in one line).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.decode import Color, decode_image
from pipeline.data.files import USER_SPLITS, ImageFile, Scan
from pipeline.data.sources import DatasetFormatError, DatasetNotFoundError, ImageSource
from pipeline.data.split import split_scanned

CACHE_IMAGES = "images.u8"
CACHE_INFO = "info.json"
CACHE_LABELS = "labels.npy"
CACHE_PART = "cache"


@dataclass(frozen=True)
class CachedDataset:
    """A prepared image-file dataset: its cache, the split of every cached image and the report."""

    source: ImageSource
    split: dict[str, np.ndarray]
    report: dict[str, object]


def _stats(values: list[int]) -> dict[str, int]:
    return {"min": min(values), "max": max(values), "mean": round(sum(values) / len(values))} if values else {}


def build_cache(
    scan: Scan,
    cache_dir: str | Path,
    *,
    size: int,
    color: Color,
    max_pixels: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    subset_size: int | None = None,
) -> CachedDataset:
    """Decodes every scanned image once into a memmap, splits it, and reports what happened.

    Why: the cache is written one image at a time and in split order (train, val, test), so each split is
    one contiguous block that later stages map without copying. Files with the same bytes are kept
    once: with a given split, a copy in train or val removes the one in test; otherwise only the first
    copy takes part in the split, so no image can sit in both train and test.

    Args:
        scan: What `scan_folder` or `scan_csv` found.
        cache_dir: Folder for `images.u8` (uint8, C order, shape in `info.json`) and `info.json`.
        size: Side of the stored square images.
        color: "rgb" or "grey".
        max_pixels: Largest image decoded at full scale.
        val_fraction: Share for validation when the split is not given.
        test_fraction: Share for testing when the split is not given.
        seed: Seed of the stratified split.
        subset_size: Stratified subsample of the usable images; None keeps all.

    Returns:
        The cache as an `ImageSource` (part "cache", index = row of the memmap), the split and the report.

    Raises:
        DatasetFormatError: Fewer than two classes remain, or a class has too few images for the split.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if color == "rgb" else (size, size)
    skipped = list(scan.skipped)
    row_bytes = int(np.prod(shape))
    staging_path = cache_dir / (CACHE_IMAGES + ".staging")
    # Plain file writes, not a writable memmap: the pages of a mapped file count in the process's RSS,
    # which would then grow with the dataset.
    staging = staging_path.open("w+b")
    kept: list[ImageFile] = []
    hashes: list[str] = []
    widths: list[int] = []
    heights: list[int] = []
    modes: Counter[str] = Counter()
    for item in scan.files:
        decoded = decode_image(item.path, size=size, color=color, max_pixels=max_pixels)
        if decoded.pixels is None:
            skipped.append((str(item.path), decoded.reason or "unreadable"))
            continue
        staging.write(decoded.pixels.tobytes())
        kept.append(item)
        hashes.append(hashlib.sha256(item.path.read_bytes()).hexdigest())
        widths.append(decoded.original_size[0])
        heights.append(decoded.original_size[1])
        modes[decoded.original_mode or "?"] += 1

    duplicates, usable = _deduplicate(kept, hashes, user_splits=scan.user_splits)
    class_names = tuple(sorted({kept[position].label for position in usable}))
    label_of = {name: index for index, name in enumerate(class_names)}
    try:
        if len(class_names) < 2:
            raise DatasetFormatError(
                f"only {len(class_names)} class with usable images ({', '.join(class_names) or 'none'}): "
                f"classification needs at least 2; {_skip_summary(skipped)}"
            )
        labels = np.array([label_of[kept[position].label] for position in usable], dtype=np.int64)
        positions = split_scanned(
            [kept[position] for position in usable],
            labels,
            class_names,
            user_splits=scan.user_splits,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            subset_size=subset_size,
        )
    except DatasetFormatError:
        # A refused dataset leaves no half-written cache behind.
        staging.close()
        staging_path.unlink()
        raise

    order = [usable[position] for name in USER_SPLITS for position in positions[name]]
    images_path = cache_dir / CACHE_IMAGES
    with images_path.open("wb") as cache:
        for position in order:
            staging.seek(position * row_bytes)
            cache.write(staging.read(row_bytes))
    staging.close()
    staging_path.unlink()
    ordered_labels = np.array([label_of[kept[position].label] for position in order], dtype=np.int64)
    split: dict[str, np.ndarray] = {}
    start = 0
    for name in USER_SPLITS:
        split[name] = np.arange(start, start + len(positions[name]))
        start += len(positions[name])
    np.save(cache_dir / CACHE_LABELS, ordered_labels)
    # The digest of what was used: each file's class and content hash, sorted. Renaming or moving a file
    # keeps it; changing a pixel, a class or the set of files changes it (which split holds which image
    # is the manifest's digest).
    source_digest = hashlib.sha256()
    for line in sorted(f"{kept[position].label}\t{hashes[position]}\n" for position in order):
        source_digest.update(line.encode())
    info = {
        "shape": [len(order), *shape],
        "dtype": "uint8",
        "class_names": list(class_names),
        "source_sha256": source_digest.hexdigest(),
    }
    (cache_dir / CACHE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    source = open_cache(cache_dir)
    counts = {
        name: {
            class_names[label]: int((ordered_labels[split[name]] == label).sum()) for label in range(len(class_names))
        }
        for name in USER_SPLITS
    }
    report: dict[str, object] = {
        "user_splits": scan.user_splits,
        "files_found": len(scan.files),
        "images_decoded": len(kept),
        "images_used": len(order),
        "stored_shape": list(shape),
        "class_names": list(class_names),
        "split_sizes": {name: len(split[name]) for name in USER_SPLITS},
        "class_counts": counts,
        "empty_classes": scan.empty_classes,
        "original_width": _stats(widths),
        "original_height": _stats(heights),
        "original_modes": dict(sorted(modes.items())),
        "skipped": [{"file": file, "reason": reason} for file, reason in skipped],
        "duplicates": duplicates,
    }
    return CachedDataset(source=source, split=split, report=report)


def _skip_summary(skipped: list[tuple[str, str]]) -> str:
    """The skip reasons and their counts in one phrase, since a refused dataset writes no report."""
    if not skipped:
        return "no file was skipped"
    reasons = Counter(reason for _, reason in skipped)
    return f"{len(skipped)} files skipped: " + ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())


def _deduplicate(
    kept: list[ImageFile], hashes: list[str], *, user_splits: bool
) -> tuple[list[dict[str, object]], list[int]]:
    """Groups files by content hash; returns the groups found and the positions that stay usable."""
    groups: dict[str, list[int]] = {}
    for position, digest in enumerate(hashes):
        groups.setdefault(digest, []).append(position)
    dropped: set[int] = set()
    duplicates: list[dict[str, object]] = []
    for digest, members in groups.items():
        if len(members) < 2:
            continue
        if user_splits:
            # Test must be unseen: a test copy of a train or val image is dropped from test only.
            seen_outside_test = any(kept[position].split != "test" for position in members)
            removed = [p for p in members if seen_outside_test and kept[p].split == "test"]
            action = "removed from test" if removed else "kept (all in test)"
        else:
            removed = members[1:]
            action = "kept once (the first) before splitting"
        dropped.update(removed)
        duplicates.append(
            {
                "sha256": digest,
                "files": [str(kept[p].path) for p in members],
                "splits": [kept[p].split for p in members] if user_splits else None,
                "action": action,
                "dropped": [str(kept[p].path) for p in removed],
            }
        )
    return duplicates, [position for position in range(len(kept)) if position not in dropped]


def open_cache(cache_dir: str | Path) -> ImageSource:
    """Maps the cache the prepare stage wrote, read-only, as an `ImageSource` without loading pixels.

    Args:
        cache_dir: The folder holding `images.u8` and `info.json`.

    Returns:
        Images as a read-only memmap (part "cache", index = row), with labels and class names.

    Raises:
        DatasetNotFoundError: The cache is missing (the prepare stage has not run).
    """
    cache_dir = Path(cache_dir)
    info_path, images_path = cache_dir / CACHE_INFO, cache_dir / CACHE_IMAGES
    if not all(path.is_file() for path in (info_path, images_path, cache_dir / CACHE_LABELS)):
        raise DatasetNotFoundError(f"no image cache in {cache_dir}: run the prepare stage first")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    shape = tuple(info["shape"])
    images = np.memmap(images_path, mode="r", dtype=np.uint8, shape=(max(shape[0], 1), *shape[1:]))[: shape[0]]
    labels = np.load(cache_dir / CACHE_LABELS)
    return ImageSource(
        images=images,
        labels=labels,
        parts=np.full(shape[0], CACHE_PART),
        indices=np.arange(shape[0]),
        class_names=tuple(info["class_names"]),
    )
