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

REPO_ROOT = Path(__file__).resolve().parents[1]


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
