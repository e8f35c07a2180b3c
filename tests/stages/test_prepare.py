"""Tests of stages/prepare.py on image folders and CSVs: the cache, manifest and report it writes, and
the one-line refusals of unusable datasets."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from pipeline.data.split import read_manifest, select
from pipeline.params import parse

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run_prepare(directory: Path, data: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """Writes params.yaml with this `data` section in `directory` and runs the prepare stage there."""
    (directory / "params.yaml").write_text(yaml.safe_dump({"data": data}), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "stages.prepare"],
        cwd=directory,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _folder(root: Path, counts: dict[str, int]) -> Path:
    level = 3
    for label, count in counts.items():
        (root / label).mkdir(parents=True)
        for item in range(count):
            Image.new("L", (10, 6), level).save(root / label / f"img {item}.png")
            level += 11
    return root


def test_prepare_folder_writes_cache_manifest_and_report(tmp_path: Path, monkeypatch: Any) -> None:
    root = _folder(tmp_path / "photos", {"cat": 5, "dog": 5})
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    (root / "dog" / "notes.txt").write_text("x", encoding="utf-8")
    data = {"kind": "folder", "path": str(root), "stored_size": 16, "val_fraction": 0.2, "test_fraction": 0.2}

    result = _run_prepare(tmp_path, data)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "split {'train': 6, 'val': 2, 'test': 2} of 10 images -> data/manifest.csv (2 files skipped)"
    )
    report = json.loads((tmp_path / "reports" / "data_report.json").read_text(encoding="utf-8"))
    assert report["kind"] == "folder"
    assert report["class_names"] == ["cat", "dog"]
    assert report["stored_shape"] == [16, 16, 3]
    assert report["original_width"] == {"min": 10, "max": 10, "mean": 10}
    assert report["original_modes"] == {"L": 10}
    assert sorted(Path(entry["file"]).name for entry in report["skipped"]) == ["broken.jpg", "notes.txt"]
    # The later stages open the cache through stages/_data.py and select rows through the manifest.
    monkeypatch.chdir(tmp_path)
    from stages._data import load_source

    source = load_source(parse({"data": data}).data)
    rows = read_manifest(tmp_path / "data" / "manifest.csv")
    images, labels = select(source, rows, "train")
    assert images.shape == (6, 16, 16, 3)
    assert np.bincount(labels).tolist() == [3, 3]


def test_the_source_digest_follows_content_and_classes_not_names(tmp_path: Path, monkeypatch: Any) -> None:
    from stages._data import source_sha256

    root = _folder(tmp_path / "photos", {"cat": 3, "dog": 3})
    data = {"kind": "folder", "path": str(root), "stored_size": 8, "val_fraction": 0.34, "test_fraction": 0.34}
    monkeypatch.chdir(tmp_path)

    def digest() -> str:
        result = _run_prepare(tmp_path, data)
        assert result.returncode == 0, result.stderr
        return source_sha256(parse({"data": data}).data)

    first = digest()
    lines = sorted(
        f"{path.parent.name}\t{hashlib.sha256(path.read_bytes()).hexdigest()}\n" for path in root.glob("*/*.png")
    )
    assert first == hashlib.sha256("".join(lines).encode()).hexdigest()
    (root / "cat" / "img 0.png").rename(root / "cat" / "renamed.png")
    assert digest() == first
    Image.new("L", (10, 6), 200).save(root / "cat" / "renamed.png")
    assert digest() != first


def test_prepare_refuses_one_class_in_one_line(tmp_path: Path) -> None:
    root = _folder(tmp_path / "photos", {"cat": 5})

    result = _run_prepare(tmp_path, {"kind": "folder", "path": str(root)})

    assert result.returncode == 2
    assert result.stderr.startswith("error: only 1 class with usable images (cat): classification needs at least 2")
    assert "Traceback" not in result.stderr


def test_prepare_refuses_csv_without_label_column(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("path,kind\na.png,cat\n", encoding="utf-8")

    result = _run_prepare(tmp_path, {"kind": "csv", "path": "labels.csv"})

    assert result.returncode == 2
    assert result.stderr.startswith("error: labels.csv has no 'label' column: its header is ['path', 'kind']")
    assert "Traceback" not in result.stderr


def _idx_dataset(root: Path) -> Path:
    """Fashion-MNIST-shaped IDX files: 60 training and 20 test images, labels cycling through the 10 classes."""
    import gzip

    root.mkdir()
    for part, count in (("train", 60), ("t10k", 20)):
        labels = np.arange(count, dtype=np.uint8) % 10
        images = np.repeat(labels[:, None, None] * 20, 28, axis=1).repeat(28, axis=2).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
            with gzip.open(root / f"{part}-{kind}-ubyte.gz", "wb") as handle:
                handle.write(header + array.tobytes())
    return root


def test_prepare_keeps_two_classes_tests_on_t10k_and_caps_training(tmp_path: Path) -> None:
    idx_path = _idx_dataset(tmp_path / "idx")
    data = {
        "path": str(idx_path),
        "classes": ["Shirt", "Sandal"],
        "test_part": "t10k",
        "val_fraction": 0.25,
        "train_size": 4,
    }

    result = _run_prepare(tmp_path, data)

    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip()
        == "split {'train': 4, 'val': 3, 'test': 4} of 16 images -> data/manifest.csv (0 files skipped)"
    )
    report = json.loads((tmp_path / "reports" / "data_report.json").read_text(encoding="utf-8"))
    assert report["class_names"] == ["Shirt", "Sandal"]
    assert report["class_counts"]["train"] == {"Shirt": 2, "Sandal": 2}
    rows = read_manifest(tmp_path / "data" / "manifest.csv")
    assert sorted((row.part, row.index, row.label) for row in rows if row.split == "test") == [
        ("t10k", 5, 1),
        ("t10k", 6, 0),
        ("t10k", 15, 1),
        ("t10k", 16, 0),
    ]
    assert {row.part for row in rows if row.split != "test"} == {"train"}


def test_prepare_refuses_a_training_cap_above_the_split_in_one_line(tmp_path: Path) -> None:
    data = {"path": str(_idx_dataset(tmp_path / "idx")), "classes": ["Shirt", "Sandal"], "train_size": 50}

    result = _run_prepare(tmp_path, data)

    assert result.returncode == 2
    assert result.stderr == "error: data.train_size is 50, but the split leaves 12 training images\n"
