"""Image-file datasets as the user brings them: a folder of class subfolders (optionally already split into
train/val/test folders), or a CSV of `path,label`.

Why a scan apart from decoding: what counts as a candidate image (extension, hidden files, symlinks) is
decided from names alone, in seconds; every entry that is not a candidate is kept with its reason for the
data report (`pipeline.data.cache` decodes the candidates).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data.sources import DatasetFormatError, DatasetNotFoundError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# The folders of a dataset that comes split, named as the manifest names its splits.
USER_SPLITS: tuple[str, ...] = ("train", "val", "test")
CSV_COLUMNS: tuple[str, str] = ("path", "label")


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
