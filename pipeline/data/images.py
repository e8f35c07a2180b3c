"""Image-file sources (a folder of class subfolders, or a CSV of `path,label`) and their memmap cache.

Why: user datasets come as files in any format Pillow decodes, some of them broken. Each file is decoded
once, by the prepare stage, into a fixed-size uint8 array memory-mapped from disk, so the later stages
read pixels without decoding and without holding the whole dataset in RAM. Every file that cannot be
used is skipped with a reason the data report lists; what makes the whole dataset unusable is refused
with one message (a `DatasetFormatError` or `DatasetNotFoundError`, which the stages print in one line).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from pipeline.data.sources import DatasetFormatError, DatasetNotFoundError, ImageSource

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
USER_SPLITS: tuple[str, ...] = ("train", "val", "test")
CACHE_IMAGES = "images.u8"
CACHE_INFO = "info.json"
CACHE_LABELS = "labels.npy"
CACHE_PART = "cache"
CSV_COLUMNS: tuple[str, str] = ("path", "label")
Color = Literal["rgb", "grey"]


@dataclass(frozen=True)
class ImageFile:
    """One candidate image: its file, its class and, for user-provided splits, its split."""

    path: Path
    label: str
    split: str | None = None


@dataclass
class Scan:
    """What a scan of a folder or CSV found.

    Attributes:
        files: The candidate images, in a stable (sorted) order.
        skipped: (file, reason) of each entry that is not a candidate image.
        empty_classes: Class folders without a single candidate image.
        user_splits: Whether the folder came split into train/val/test.
    """

    files: list[ImageFile] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    user_splits: bool = False


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk_class(folder: Path, label: str, split: str | None, scan: Scan) -> int:
    """Adds every image file under a class folder (nested folders too); returns how many."""
    found = 0
    # Symlinked folders are not followed: a link to a parent would loop, and one to elsewhere would
    # silently pull in files the user did not put in the dataset.
    for root, dirs, files in os.walk(folder, followlinks=False):
        root_path = Path(root)
        for name in sorted(dirs):
            if _is_hidden(name):
                scan.skipped.append((str(root_path / name), "hidden folder"))
            elif (root_path / name).is_symlink():
                scan.skipped.append((str(root_path / name), "symlinked folder (not followed)"))
        dirs[:] = sorted(name for name in dirs if not _is_hidden(name) and not (root_path / name).is_symlink())
        for name in sorted(files):
            path = root_path / name
            if _is_hidden(name):
                scan.skipped.append((str(path), "hidden file"))
            elif path.suffix.lower() not in IMAGE_EXTENSIONS:
                scan.skipped.append((str(path), f"not an image extension ({', '.join(sorted(IMAGE_EXTENSIONS))})"))
            elif not path.exists():
                scan.skipped.append((str(path), "broken symlink"))
            else:
                scan.files.append(ImageFile(path=path, label=label, split=split))
                found += 1
    return found


def _class_folders(folder: Path, scan: Scan) -> list[Path]:
    classes = []
    for entry in sorted(folder.iterdir()):
        if _is_hidden(entry.name):
            scan.skipped.append((str(entry), "hidden file" if entry.is_file() else "hidden folder"))
        elif entry.is_dir():
            classes.append(entry)
        else:
            scan.skipped.append((str(entry), "file outside any class folder"))
    return classes


def scan_folder(folder: str | Path) -> Scan:
    """Lists the images of a folder of class subfolders, or of train/val/test folders of class subfolders.

    Args:
        folder: The dataset folder. When it holds a `train` folder, its `train`, `val` and `test`
            folders are the splits as given; otherwise each subfolder is a class.

    Returns:
        The candidate images and what was skipped, with the reason.

    Raises:
        DatasetNotFoundError: The folder does not exist.
        DatasetFormatError: A user split lacks `val` or `test`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetNotFoundError(f"data.path {folder} is not a folder")
    scan = Scan()
    if (folder / "train").is_dir():
        missing = [name for name in USER_SPLITS if not (folder / name).is_dir()]
        if missing:
            raise DatasetFormatError(
                f"{folder} has a train folder but no {' or '.join(missing)} folder: give all of "
                "train/, val/, test/ (used as given), or only class folders (split by data.val_fraction "
                "and data.test_fraction)"
            )
        scan.user_splits = True
        for split in USER_SPLITS:
            for class_folder in _class_folders(folder / split, scan):
                if _walk_class(class_folder, class_folder.name, split, scan) == 0:
                    scan.empty_classes.append(f"{split}/{class_folder.name}")
        return scan
    for class_folder in _class_folders(folder, scan):
        if _walk_class(class_folder, class_folder.name, None, scan) == 0:
            scan.empty_classes.append(class_folder.name)
    return scan


def scan_csv(csv_path: str | Path) -> Scan:
    """Lists the images of a CSV with a header holding `path` and `label` (paths relative to the CSV).

    Args:
        csv_path: The CSV file.

    Returns:
        The candidate images, and each row skipped (empty label, missing file, not an image) with why.

    Raises:
        DatasetNotFoundError: The CSV does not exist.
        DatasetFormatError: The header lacks `path` or `label`.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetNotFoundError(f"data.path {csv_path} is not a file")
    scan = Scan()
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in CSV_COLUMNS if name not in columns]
        if missing:
            raise DatasetFormatError(
                f"{csv_path} has no {' and no '.join(repr(name) for name in missing)} column: its header is "
                f"{columns}, it needs the columns path,label"
            )
        reader.fieldnames = columns
        # Line 1 is the header.
        for line, row in enumerate(reader, start=2):
            where = f"{csv_path}:{line}"
            relative, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            if not relative:
                scan.skipped.append((where, "empty path"))
                continue
            path = csv_path.parent / relative
            if not label:
                scan.skipped.append((f"{where} {relative}", "empty label"))
            elif not path.is_file():
                scan.skipped.append((f"{where} {relative}", "file not found"))
            elif path.suffix.lower() not in IMAGE_EXTENSIONS:
                scan.skipped.append((f"{where} {relative}", "not an image extension"))
            else:
                scan.files.append(ImageFile(path=path, label=label))
    return scan


@dataclass(frozen=True)
class Decoded:
    """One decoded image, or why it could not be decoded."""

    pixels: np.ndarray | None
    original_size: tuple[int, int] | None = None
    original_mode: str | None = None
    reason: str | None = None


def decode_image(path: Path, *, size: int, color: Color, max_pixels: int) -> Decoded:
    """Decodes one file into a (size, size[, 3]) uint8 array, EXIF rotation applied.

    Why: a dataset mixes modes (grey, RGB, RGBA, palette, 16-bit) and orientations; each is brought to one
    layout here so the cache holds one array shape. JPEGs are decoded at a reduced scale (draft mode)
    when they are much larger than `size`, and other images above `max_pixels` are refused before their
    pixels are read, so a huge file cannot make memory spike.

    Args:
        path: The image file.
        size: Side of the stored square image.
        color: "rgb" (3 channels) or "grey" (no channel axis).
        max_pixels: Largest width x height decoded at full scale.

    Returns:
        The pixels with the original size and mode, or the reason it was skipped.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            return Decoded(None, reason="empty file (0 bytes)")
        with warnings.catch_warnings():
            # Our own pixel limit below decides; Pillow's warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                original_size, original_mode = image.size, image.mode
                target_mode = "RGB" if color == "rgb" else "L"
                if image.format == "JPEG":
                    # Lets libjpeg decode at 1/2, 1/4 or 1/8 scale: the full-size pixels never exist.
                    image.draft(target_mode, (size, size))
                if image.size[0] * image.size[1] > max_pixels:
                    return Decoded(
                        None,
                        original_size,
                        original_mode,
                        reason=f"{original_size[0]}x{original_size[1]} pixels is over data.max_image_pixels "
                        f"({max_pixels}; decompression-bomb guard)",
                    )
                image.load()
                image = ImageOps.exif_transpose(image)
                image = _to_mode(image, target_mode)
                image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
                return Decoded(np.asarray(image, dtype=np.uint8), original_size, original_mode)
    except Image.DecompressionBombError as error:
        return Decoded(None, reason=f"decompression bomb: {error}")
    except UnidentifiedImageError:
        return Decoded(None, reason="not an image Pillow can read (corrupt or unknown format)")
    except (OSError, SyntaxError, ValueError) as error:
        # Truncated or damaged data surfaces as OSError ("image file is truncated") or a decoder error.
        return Decoded(None, reason=f"cannot decode: {error}")


def _to_mode(image: Image.Image, target_mode: str) -> Image.Image:
    """Converts any Pillow mode to "RGB" or "L"; 16-bit is scaled down, transparency flattened on white."""
    from PIL import Image

    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's own conversion clips 16-bit values at 255; scaling keeps the picture.
        values = np.asarray(image, dtype=np.uint32)
        shift = 8 if mode != "I" or values.max(initial=0) > 255 else 0
        image = Image.fromarray((values >> shift).clip(0, 255).astype(np.uint8), mode="L")
        mode = "L"
    if mode == "P" or mode == "PA" or mode == "LA" or mode == "RGBA" or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(target_mode)


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
        positions = _split(
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


def _split(
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
    """Positions into `files` per split: the given split, or the stratified one."""
    if user_splits:
        split = {
            name: np.array([p for p, f in enumerate(files) if f.split == name], dtype=np.int64) for name in USER_SPLITS
        }
        train_classes = set(labels[split["train"]].tolist())
        lacking = [class_names[label] for label in range(len(class_names)) if label not in train_classes]
        if lacking:
            raise DatasetFormatError(
                f"class {', '.join(lacking)} has no training image: every class of val/ and test/ needs "
                "images in train/"
            )
        return split
    from pipeline.data.split import stratified_split

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
