"""Tests of pipeline/data/files.py: scanning folders and CSV files each test makes (bad entries too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.data.files import scan_csv, scan_folder
from pipeline.data.sources import DatasetFormatError, DatasetNotFoundError
from tests.data.conftest import class_folder, save_image


def test_scan_folder_skips_non_images_hidden_and_symlinked_folders(tmp_path: Path) -> None:
    root = class_folder(tmp_path / "set", {"cat": 2, "dog": 1})
    save_image(root / "dog" / "nested" / "deeper" / "pup é 1.png", 90)
    (root / "cat" / "notes.txt").write_text("hello")
    (root / "cat" / ".DS_Store").write_bytes(b"\0")
    (root / "cat" / "Thumbs.db").write_bytes(b"\0")
    save_image(root / "cat" / ".hidden.png", 5)
    (root / "empty").mkdir()
    (root / "dog" / "loop").symlink_to(root, target_is_directory=True)
    (root / "dog" / "link.png").symlink_to(root / "cat" / "0.png")
    (root / "dog" / "dangling.png").symlink_to(root / "nowhere.png")

    scan = scan_folder(root)

    assert [(f.path.relative_to(root).as_posix(), f.label) for f in scan.files] == [
        ("cat/0.png", "cat"),
        ("cat/1.png", "cat"),
        ("dog/0.png", "dog"),
        ("dog/link.png", "dog"),
        ("dog/nested/deeper/pup é 1.png", "dog"),
    ]
    reasons = {Path(file).name: reason for file, reason in scan.skipped}
    assert reasons["notes.txt"].startswith("not an image extension")
    assert reasons["Thumbs.db"].startswith("not an image extension")
    assert reasons[".DS_Store"] == "hidden file"
    assert reasons[".hidden.png"] == "hidden file"
    assert reasons["loop"] == "symlinked folder (not followed)"
    assert reasons["dangling.png"] == "broken symlink"
    assert scan.empty_classes == ["empty"]
    assert not scan.user_splits


def test_scan_of_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"data.path .*nowhere is not a folder"):
        scan_folder(tmp_path / "nowhere")


def test_user_split_needs_all_three_folders(tmp_path: Path) -> None:
    class_folder(tmp_path / "set" / "train", {"a": 1})
    (tmp_path / "set" / "test").mkdir()

    with pytest.raises(DatasetFormatError, match=r"has a train folder but no val folder"):
        scan_folder(tmp_path / "set")


def test_scan_csv_skips_bad_rows(tmp_path: Path) -> None:
    save_image(tmp_path / "img" / "a b.png", 10)
    save_image(tmp_path / "img" / "ü.png", 20)
    (tmp_path / "img" / "doc.txt").write_text("x")
    table = tmp_path / "labels.csv"
    table.write_text(
        "path,label\nimg/a b.png,cat\nimg/ü.png,dog\nimg/gone.png,dog\nimg/a b.png,\nimg/doc.txt,cat\n,cat\n",
        encoding="utf-8",
    )

    scan = scan_csv(table)

    assert [(f.path.name, f.label) for f in scan.files] == [("a b.png", "cat"), ("ü.png", "dog")]
    assert scan.skipped == [
        (f"{table}:4 img/gone.png", "file not found"),
        (f"{table}:5 img/a b.png", "empty label"),
        (f"{table}:6 img/doc.txt", "not an image extension"),
        (f"{table}:7", "empty path"),
    ]


def test_csv_with_a_missing_column(tmp_path: Path) -> None:
    table = tmp_path / "labels.csv"
    table.write_text("file,label\na.png,cat\n", encoding="utf-8")

    with pytest.raises(DatasetFormatError, match=r"has no 'path' column: its header is \['file', 'label'\]"):
        scan_csv(table)


def test_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"labels.csv is not a file"):
        scan_csv(tmp_path / "labels.csv")
