"""Tests of pipeline/data/files.py, decode.py and cache.py on tiny image files each test makes (bad data too)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.cache import CACHE_IMAGES, CACHE_INFO, CACHE_LABELS, build_cache, open_cache
from pipeline.data.decode import decode_image
from pipeline.data.files import scan_csv, scan_folder
from pipeline.data.sources import DatasetFormatError, DatasetNotFoundError
from pipeline.data.split import manifest_rows, select

SIZE = 8


def _save(path: Path, value: int, *, mode: str = "RGB", fmt: str | None = None, size: int = 12) -> Path:
    """Writes a flat image of `value` in `mode` (8-bit modes) at `path`; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fill: int | tuple[int, ...] = value if mode in ("L", "P") else (value,) * len(mode)
    Image.new(mode, (size, size), fill).save(path, format=fmt)
    return path


def _class_folder(root: Path, counts: dict[str, int], *, suffix: str = ".png") -> Path:
    """Makes root/<class>/<n><suffix>, distinct flat grey levels per file (no duplicates)."""
    level = 10
    for label, count in counts.items():
        for item in range(count):
            _save(root / label / f"{item}{suffix}", level)
            level += 7
    return root


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


# Decoding


@pytest.mark.parametrize(
    ("mode", "fill", "expected"),
    [
        ("L", 100, (100, 100, 100)),
        ("RGB", (10, 20, 30), (10, 20, 30)),
        # Fully transparent pixels are flattened on white; opaque ones keep their colour.
        ("RGBA", (10, 20, 30, 0), (255, 255, 255)),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("P", 0, (0, 0, 0)),
    ],
)
def test_modes_are_converted_to_rgb(tmp_path: Path, mode: str, fill: object, expected: tuple[int, ...]) -> None:
    path = tmp_path / "image.png"
    Image.new(mode, (4, 4), fill).save(path)

    decoded = decode_image(path, size=SIZE, color="rgb", max_pixels=10**6)

    assert decoded.pixels.shape == (SIZE, SIZE, 3)
    assert decoded.pixels.dtype == np.uint8
    assert tuple(decoded.pixels[0, 0]) == expected
    assert decoded.original_mode == mode


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)).save(path)

    decoded = decode_image(path, size=SIZE, color="grey", max_pixels=10**6)

    assert decoded.original_mode.startswith("I")
    assert decoded.pixels.shape == (SIZE, SIZE)
    assert int(decoded.pixels[0, 0]) == 40000 >> 8


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    # 4 wide, 2 high, left half black, right half white; EXIF orientation 6 = rotate 90 clockwise to view.
    pixels = np.zeros((2, 4), dtype=np.uint8)
    pixels[:, 2:] = 255
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.png"
    image.save(path, exif=exif)

    decoded = decode_image(path, size=4, color="grey", max_pixels=10**6)

    # Viewed upright the image is 2 wide and 4 high: the white half is now the bottom.
    assert decoded.pixels[0].tolist() == [0, 0, 0, 0]
    assert decoded.pixels[-1].tolist() == [255, 255, 255, 255]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file (0 bytes)"),
        (b"this is not a picture at all", "not an image Pillow can read (corrupt or unknown format)"),
    ],
)
def test_empty_and_corrupt_files_are_skipped(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)

    decoded = decode_image(path, size=SIZE, color="rgb", max_pixels=10**6)

    assert decoded.pixels is None
    assert decoded.reason == reason


def test_truncated_jpeg_is_skipped(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])

    decoded = decode_image(path, size=SIZE, color="rgb", max_pixels=10**6)

    assert decoded.pixels is None
    assert decoded.reason.startswith("cannot decode: image file is truncated")


def test_huge_png_is_skipped_without_reading_its_pixels(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    # Mode "1" keeps the 10000x10000 image at 12.5 MB while the test writes it.
    Image.new("1", (10_000, 10_000)).save(path)

    decoded = decode_image(path, size=SIZE, color="rgb", max_pixels=40_000_000)

    assert decoded.pixels is None
    assert decoded.reason == ("10000x10000 pixels is over data.max_image_pixels (40000000; decompression-bomb guard)")


def test_huge_jpeg_is_decoded_in_draft_mode(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.new("L", (10_000, 10_000), 200).save(path, quality=50)

    # 100 M pixels over the limit, but libjpeg decodes at 1/8 scale: 1250x1250 is under it.
    decoded = decode_image(path, size=SIZE, color="grey", max_pixels=2_000_000)

    assert decoded.original_size == (10_000, 10_000)
    assert decoded.pixels.shape == (SIZE, SIZE)
    assert abs(int(decoded.pixels[0, 0]) - 200) <= 2


@pytest.mark.parametrize("suffix", [".JPG", ".jpeg", ".PNG", ".bmp", ".gif", ".TIFF", ".tif", ".webp"])
def test_every_format_and_upper_case_extension(tmp_path: Path, suffix: str) -> None:
    path = _save(tmp_path / f"image{suffix}", 128, mode="L" if suffix.lower() == ".gif" else "RGB")

    decoded = decode_image(path, size=SIZE, color="grey", max_pixels=10**6)

    assert decoded.pixels.shape == (SIZE, SIZE)
    assert abs(int(decoded.pixels[0, 0]) - 128) <= 2


# Scanning


def test_scan_folder_skips_non_images_hidden_and_symlinked_folders(tmp_path: Path) -> None:
    root = _class_folder(tmp_path / "set", {"cat": 2, "dog": 1})
    _save(root / "dog" / "nested" / "deeper" / "pup é 1.png", 90)
    (root / "cat" / "notes.txt").write_text("hello")
    (root / "cat" / ".DS_Store").write_bytes(b"\0")
    (root / "cat" / "Thumbs.db").write_bytes(b"\0")
    _save(root / "cat" / ".hidden.png", 5)
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
    _class_folder(tmp_path / "set" / "train", {"a": 1})
    (tmp_path / "set" / "test").mkdir()

    with pytest.raises(DatasetFormatError, match=r"has a train folder but no val folder"):
        scan_folder(tmp_path / "set")


def test_scan_csv_skips_bad_rows(tmp_path: Path) -> None:
    _save(tmp_path / "img" / "a b.png", 10)
    _save(tmp_path / "img" / "ü.png", 20)
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


# Cache, split and report


def test_cache_layout_split_order_and_contiguous_views(tmp_path: Path) -> None:
    scan = scan_folder(_class_folder(tmp_path / "set", {"a": 5, "b": 5}))

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
    root = _class_folder(tmp_path / "set", {"a": 4, "b": 4})
    (root / "a" / "zero.jpg").write_bytes(b"")
    (root / "b" / "junk.png").write_bytes(b"garbage")
    _save(root / "a" / "grey.png", 1, mode="L")
    _save(root / "b" / "alpha.png", 2, mode="RGBA")
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
    root = _class_folder(tmp_path / "set", {"a": 5})

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
    root = _class_folder(tmp_path / "set", {"a": 5, "b": 2})

    with pytest.raises(DatasetFormatError, match=r"^class b \(2\) has fewer than 3 usable images"):
        _build(scan_folder(root), tmp_path)


def test_duplicates_are_kept_once_before_the_stratified_split(tmp_path: Path) -> None:
    root = _class_folder(tmp_path / "set", {"a": 5, "b": 5})
    (root / "b" / "copy.png").write_bytes((root / "b" / "0.png").read_bytes())

    report = _build(scan_folder(root), tmp_path).report

    assert report["images_used"] == 10
    assert len(report["duplicates"]) == 1
    assert report["duplicates"][0]["dropped"] == [str(root / "b" / "copy.png")]


def test_given_split_is_used_and_test_copies_of_train_images_are_dropped(tmp_path: Path) -> None:
    root = tmp_path / "set"
    _class_folder(root / "train", {"a": 2, "b": 2})
    _save(root / "val" / "a" / "v.png", 200)
    _save(root / "val" / "b" / "v.png", 201)
    _save(root / "test" / "a" / "t.png", 202)
    (root / "test" / "b").mkdir(parents=True)
    (root / "test" / "b" / "leak.png").write_bytes((root / "train" / "b" / "0.png").read_bytes())

    cached = _build(scan_folder(root), tmp_path)

    assert cached.report["user_splits"] is True
    assert cached.report["split_sizes"] == {"train": 4, "val": 2, "test": 1}
    assert cached.report["duplicates"][0]["action"] == "removed from test"
    assert cached.report["duplicates"][0]["dropped"] == [str(root / "test" / "b" / "leak.png")]


def test_given_split_with_a_class_missing_from_train(tmp_path: Path) -> None:
    root = tmp_path / "set"
    _class_folder(root / "train", {"a": 2, "b": 2})
    _save(root / "val" / "c" / "v.png", 200)
    (root / "test").mkdir()

    with pytest.raises(DatasetFormatError, match=r"^class c has no training image"):
        _build(scan_folder(root), tmp_path)


def test_grey_cache_from_csv(tmp_path: Path) -> None:
    for values in ((10, 20, 30), (40, 50, 60)):
        for value in values:
            _save(tmp_path / "img" / f"{value}.bmp", value, fmt="BMP")
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
    root = _class_folder(tmp_path / "set", {"a": 4, "b": 5})
    outside = _save(tmp_path / "outside.png", 250)
    os.symlink(outside, root / "a" / "linked.png")

    report = _build(scan_folder(root), tmp_path).report

    assert sum(report["class_counts"][name]["a"] for name in ("train", "val", "test")) == 5
    assert report["skipped"] == []


def test_huge_jpeg_decodes_without_a_memory_spike(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.new("L", (10_000, 10_000), 90).save(path, quality=50)
    # A fresh process, so the 100 MB the test needed to write the file do not count; ru_maxrss is in KiB.
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from pipeline.data.decode import decode_image\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "decoded = decode_image(Path(sys.argv[1]), size=8, color='rgb', max_pixels=40_000_000)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(decoded.original_size, decoded.pixels.shape, after - before)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert result.stdout.startswith("(10000, 10000) (8, 8, 3) ")
    # Decoded at full scale the greys alone would take 100 MB (300 MB as RGB); at 1/8 scale about 1.5 MB.
    growth_kib = int(result.stdout.split()[-1])
    assert growth_kib < 20 * 1024, f"decoding grew the peak RSS by {growth_kib} KiB"


def test_mixed_modes_in_one_folder_share_one_stored_shape(tmp_path: Path) -> None:
    root = _class_folder(tmp_path / "set", {"a": 3, "b": 3})
    _save(root / "a" / "grey.png", 40, mode="L")
    _save(root / "a" / "alpha.png", 50, mode="RGBA")
    _save(root / "b" / "palette.gif", 60, mode="P")
    Image.fromarray(np.full((5, 7), 30000, dtype=np.uint16)).save(root / "b" / "deep.png")

    cached = _build(scan_folder(root), tmp_path)

    assert cached.source.images.shape == (10, SIZE, SIZE, 3)
    assert cached.report["original_modes"] == {"I;16": 1, "L": 1, "P": 1, "RGB": 6, "RGBA": 1}
    assert cached.report["original_width"] == {"min": 7, "max": 12, "mean": 12}
    assert cached.report["skipped"] == []
