"""Tests of pipeline/data/cache.py: the memmap cache, its split and its report, on tiny image files each test
makes (bad data too)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.cache import CACHE_IMAGES, CACHE_INFO, CACHE_LABELS, build_cache, open_cache
from pipeline.data.files import scan_csv, scan_folder
from pipeline.data.sources import DatasetFormatError, DatasetNotFoundError
from pipeline.data.split import manifest_rows, select
from tests.data.conftest import SIZE, class_folder, save_image


def _build(scan: object, tmp_path: Path, **options: object) -> object:
    settings = {
        "size": SIZE,
        "color": "rgb",
        "max_pixels": 1_000_000,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "seed": 0,
    }
    settings.update(options)
    return build_cache(scan, tmp_path / "cache", **settings)


def _reasons(report: dict) -> dict[str, str]:
    return {Path(entry["file"].split(" ")[-1]).name: entry["reason"] for entry in report["skipped"]}


def test_cache_layout_split_order_and_contiguous_views(tmp_path: Path) -> None:
    scan = scan_folder(class_folder(tmp_path / "set", {"a": 5, "b": 5}))

    cached = _build(scan, tmp_path)

    cache = tmp_path / "cache"
    assert sorted(path.name for path in cache.iterdir()) == sorted([CACHE_IMAGES, CACHE_INFO, CACHE_LABELS])
    contents = sorted(
        f"{path.parent.name}\t{hashlib.sha256(path.read_bytes()).hexdigest()}\n"
        for path in (tmp_path / "set").glob("*/*")
    )
    assert json.loads((cache / CACHE_INFO).read_text()) == {
        "shape": [10, SIZE, SIZE, 3],
        "dtype": "uint8",
        "class_names": ["a", "b"],
        "source_sha256": hashlib.sha256("".join(contents).encode()).hexdigest(),
    }
    assert {name: len(rows) for name, rows in cached.split.items()} == {"train": 6, "val": 2, "test": 2}
    assert cached.split["train"].tolist() == [0, 1, 2, 3, 4, 5]
    source = open_cache(cache)
    assert isinstance(source.images, np.memmap)
    rows = manifest_rows(source, cached.split)
    images, labels = select(source, rows, "test")
    # A split is one block of the memmap: selecting it maps, it does not copy.
    assert isinstance(images, np.memmap)
    assert images.shape == (2, SIZE, SIZE, 3)
    assert sorted(labels.tolist()) == [0, 1]
    assert cached.report["class_counts"] == {
        "train": {"a": 3, "b": 3},
        "val": {"a": 1, "b": 1},
        "test": {"a": 1, "b": 1},
    }
    assert cached.report["original_modes"] == {"RGB": 10}
    assert cached.report["original_width"] == {"min": 12, "max": 12, "mean": 12}


def test_open_cache_before_prepare(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"no image cache in .*: run the prepare stage first"):
        open_cache(tmp_path)


def test_messy_folder_report(tmp_path: Path) -> None:
    root = class_folder(tmp_path / "set", {"a": 4, "b": 4})
    (root / "a" / "zero.jpg").write_bytes(b"")
    (root / "b" / "junk.png").write_bytes(b"garbage")
    save_image(root / "a" / "grey.png", 1, mode="L")
    save_image(root / "b" / "alpha.png", 2, mode="RGBA")
    (root / "a" / "readme.txt").write_text("x")
    (root / "empty").mkdir()

    report = _build(scan_folder(root), tmp_path).report

    assert report["files_found"] == 12
    assert report["images_decoded"] == 10
    assert report["images_used"] == 10
    assert report["original_modes"] == {"L": 1, "RGB": 8, "RGBA": 1}
    assert report["empty_classes"] == ["empty"]
    reasons = _reasons(report)
    assert reasons["zero.jpg"] == "empty file (0 bytes)"
    assert reasons["junk.png"] == "not an image Pillow can read (corrupt or unknown format)"
    assert reasons["readme.txt"].startswith("not an image extension")


def test_only_one_class_is_refused(tmp_path: Path) -> None:
    root = class_folder(tmp_path / "set", {"a": 5})

    (root / "b").mkdir()
    (root / "b" / "x.png").write_bytes(b"")
    (root / "b" / "y.png").write_bytes(b"")

    with pytest.raises(
        DatasetFormatError,
        match=r"^only 1 class with usable images \(a\): classification needs at least 2; "
        r"2 files skipped: 2 empty file \(0 bytes\)$",
    ):
        _build(scan_folder(root), tmp_path)
    assert list((tmp_path / "cache").iterdir()) == []


def test_class_too_small_for_the_split_is_refused(tmp_path: Path) -> None:
    root = class_folder(tmp_path / "set", {"a": 5, "b": 2})

    with pytest.raises(DatasetFormatError, match=r"^class b \(2\) has fewer than 3 usable images"):
        _build(scan_folder(root), tmp_path)


def test_duplicates_are_kept_once_before_the_stratified_split(tmp_path: Path) -> None:
    root = class_folder(tmp_path / "set", {"a": 5, "b": 5})
    (root / "b" / "copy.png").write_bytes((root / "b" / "0.png").read_bytes())

    report = _build(scan_folder(root), tmp_path).report

    assert report["images_used"] == 10
    assert len(report["duplicates"]) == 1
    assert report["duplicates"][0]["dropped"] == [str(root / "b" / "copy.png")]


def test_given_split_is_used_and_test_copies_of_train_images_are_dropped(tmp_path: Path) -> None:
    root = tmp_path / "set"
    class_folder(root / "train", {"a": 2, "b": 2})
    save_image(root / "val" / "a" / "v.png", 200)
    save_image(root / "val" / "b" / "v.png", 201)
    save_image(root / "test" / "a" / "t.png", 202)
    (root / "test" / "b").mkdir(parents=True)
    (root / "test" / "b" / "leak.png").write_bytes((root / "train" / "b" / "0.png").read_bytes())

    cached = _build(scan_folder(root), tmp_path)

    assert cached.report["user_splits"] is True
    assert cached.report["split_sizes"] == {"train": 4, "val": 2, "test": 1}
    assert cached.report["duplicates"][0]["action"] == "removed from test"
    assert cached.report["duplicates"][0]["dropped"] == [str(root / "test" / "b" / "leak.png")]


def test_given_split_with_a_class_missing_from_train(tmp_path: Path) -> None:
    root = tmp_path / "set"
    class_folder(root / "train", {"a": 2, "b": 2})
    save_image(root / "val" / "c" / "v.png", 200)
    (root / "test").mkdir()

    with pytest.raises(DatasetFormatError, match=r"^class c has no training image"):
        _build(scan_folder(root), tmp_path)


def test_grey_cache_from_csv(tmp_path: Path) -> None:
    for values in ((10, 20, 30), (40, 50, 60)):
        for value in values:
            save_image(tmp_path / "img" / f"{value}.bmp", value, fmt="BMP")
    lines = [
        f"img/{value}.bmp,{label}"
        for label, values in {"x": (10, 20, 30), "y": (40, 50, 60)}.items()
        for value in values
    ]
    table = tmp_path / "labels.csv"
    table.write_text("path,label\n" + "\n".join(lines) + "\n", encoding="utf-8")

    cached = _build(scan_csv(table), tmp_path, color="grey", val_fraction=0.34, test_fraction=0.34)

    source = cached.source
    assert source.images.shape == (6, SIZE, SIZE)
    assert source.class_names == ("x", "y")
    # Each stored image is its flat grey level, under the label of its row.
    assert sorted(
        (int(image[0, 0]), int(label)) for image, label in zip(source.images, source.labels, strict=True)
    ) == [
        (10, 0),
        (20, 0),
        (30, 0),
        (40, 1),
        (50, 1),
        (60, 1),
    ]


def test_symlinked_file_is_read_through(tmp_path: Path) -> None:
    root = class_folder(tmp_path / "set", {"a": 4, "b": 5})
    outside = save_image(tmp_path / "outside.png", 250)
    os.symlink(outside, root / "a" / "linked.png")

    report = _build(scan_folder(root), tmp_path).report

    assert sum(report["class_counts"][name]["a"] for name in ("train", "val", "test")) == 5
    assert report["skipped"] == []


def test_mixed_modes_in_one_folder_share_one_stored_shape(tmp_path: Path) -> None:
    root = class_folder(tmp_path / "set", {"a": 3, "b": 3})
    save_image(root / "a" / "grey.png", 40, mode="L")
    save_image(root / "a" / "alpha.png", 50, mode="RGBA")
    save_image(root / "b" / "palette.gif", 60, mode="P")
    Image.fromarray(np.full((5, 7), 30000, dtype=np.uint16)).save(root / "b" / "deep.png")

    cached = _build(scan_folder(root), tmp_path)

    assert cached.source.images.shape == (10, SIZE, SIZE, 3)
    assert cached.report["original_modes"] == {"I;16": 1, "L": 1, "P": 1, "RGB": 6, "RGBA": 1}
    assert cached.report["original_width"] == {"min": 7, "max": 12, "mean": 12}
    assert cached.report["skipped"] == []
