"""Tests of pipeline/data/export_png.py on tiny IDX files the tests write (never the real dataset)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.export_png import class_folder_name, export_png, main
from pipeline.data.files import scan_folder
from pipeline.data.sources import load_idx_dataset

# Labels 0 ("T-shirt/top"), 9 ("Ankle boot") and 3 ("Dress") of Fashion-MNIST's names.
TRAIN_LABELS = np.array([0, 9, 0, 0, 9, 3, 0], dtype=np.uint8)
T10K_LABELS = np.array([9, 0, 0], dtype=np.uint8)


def _images(count: int, first_value: int) -> np.ndarray:
    """`count` 3x2 images; image i holds first_value + 10 i + (0..5), so each pixel says which image it is."""
    return (first_value + 10 * np.arange(count)[:, None, None] + np.arange(6).reshape(1, 3, 2)).astype(np.uint8)


TRAIN_IMAGES = _images(len(TRAIN_LABELS), 0)
T10K_IMAGES = _images(len(T10K_LABELS), 100)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    path.write_bytes(header + array.tobytes())


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "idx"
    folder.mkdir()
    _write_idx(folder / "train-images-idx3-ubyte", TRAIN_IMAGES)
    _write_idx(folder / "train-labels-idx1-ubyte", TRAIN_LABELS)
    _write_idx(folder / "t10k-images-idx3-ubyte", T10K_IMAGES)
    _write_idx(folder / "t10k-labels-idx1-ubyte", T10K_LABELS)
    return folder


def _files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


def test_class_names_become_single_folder_names() -> None:
    assert class_folder_name("T-shirt/top") == "T-shirt_top"
    assert class_folder_name("Ankle boot") == "Ankle boot"


def test_every_image_in_its_class_folder_named_by_its_position(idx_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "png"
    counts = export_png(load_idx_dataset(idx_dir), out)
    assert counts == {"": {"T-shirt_top": 6, "Dress": 1, "Ankle boot": 3}}
    assert _files(out) == [
        "Ankle boot/1.png",
        "Ankle boot/4.png",
        "Ankle boot/7.png",
        "Dress/5.png",
        "T-shirt_top/0.png",
        "T-shirt_top/2.png",
        "T-shirt_top/3.png",
        "T-shirt_top/6.png",
        "T-shirt_top/8.png",
        "T-shirt_top/9.png",
    ]
    np.testing.assert_array_equal(_pixels(out / "Dress/5.png"), [[50, 51], [52, 53], [54, 55]])
    # Position 7 is the t10k file's first image.
    np.testing.assert_array_equal(_pixels(out / "Ankle boot/7.png"), [[100, 101], [102, 103], [104, 105]])


def test_per_class_keeps_the_first_images_of_each_class(idx_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "png"
    assert main([str(out), "--source-dir", str(idx_dir), "--per-class", "2"]) == 0
    assert _files(out) == [
        "Ankle boot/1.png",
        "Ankle boot/4.png",
        "Dress/5.png",
        "T-shirt_top/0.png",
        "T-shirt_top/2.png",
    ]
    np.testing.assert_array_equal(_pixels(out / "T-shirt_top/2.png"), [[20, 21], [22, 23], [24, 25]])


def test_splits_write_train_val_from_train_and_test_from_t10k(idx_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "png"
    assert main([str(out), "--source-dir", str(idx_dir), "--splits", "--per-class", "3", "--val-fraction", "0.4"]) == 0
    # T-shirt/top's first 3 train images are 0, 2, 3: ceil(3 x 0.4) = 2 go to val. Indices are per IDX file.
    assert _files(out) == [
        "test/Ankle boot/0.png",
        "test/T-shirt_top/1.png",
        "test/T-shirt_top/2.png",
        "train/Ankle boot/1.png",
        "train/T-shirt_top/0.png",
        "val/Ankle boot/4.png",
        "val/Dress/5.png",
        "val/T-shirt_top/2.png",
        "val/T-shirt_top/3.png",
    ]
    np.testing.assert_array_equal(_pixels(out / "test/T-shirt_top/2.png"), [[120, 121], [122, 123], [124, 125]])
    np.testing.assert_array_equal(_pixels(out / "val/T-shirt_top/3.png"), [[30, 31], [32, 33], [34, 35]])
    # The folder source reads it as the given split.
    scan = scan_folder(out)
    assert scan.user_splits
    assert [(file.split, file.label, file.path.name) for file in scan.files][:3] == [
        ("train", "Ankle boot", "1.png"),
        ("train", "T-shirt_top", "0.png"),
        ("val", "Ankle boot", "4.png"),
    ]


def test_an_earlier_export_is_never_mixed_in(idx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "png"
    (out / "old").mkdir(parents=True)
    assert main([str(out), "--source-dir", str(idx_dir)]) == 2
    assert capsys.readouterr().err == f"error: {out} already exists and is not an empty folder: choose a new one\n"
    assert _files(out) == []


def test_missing_idx_files_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "png"), "--source-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: dataset files missing in {tmp_path}: ")
    assert not (tmp_path / "png").exists()


def test_help_names_the_options(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps at the terminal's width
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage: idx-to-png [-h] [--source-dir SOURCE_DIR] [--per-class N] [--splits]")
    assert "--val-fraction VAL_FRACTION" in usage
