"""A temporary copy of the repository with tiny IDX data, for end-to-end `dvc` runs.

Why shared: the end-to-end tests (local store, tracking server) run the same stages on the same tiny
data; each sets its own params on top of `tiny_params`.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tests.conftest import make_images

REPO = Path(__file__).resolve().parents[1]
STAGES = ("validate", "prepare", "lr_find", "train", "evaluate", "register")


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def build_project(workdir: Path) -> dict[str, Any]:
    """Copies the code and DVC set-up into `workdir`, writes 160 + 40 tiny IDX images, returns tiny params.

    The params are not written yet: the caller changes what it needs, then calls `write_params`.
    """
    for name in ("pipeline", "stages"):
        shutil.copytree(REPO / name, workdir / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, workdir / name)
    (workdir / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", workdir / ".dvc" / "config")
    subprocess.run(["git", "init", "-q"], cwd=workdir, check=True)

    source = workdir / "idx"
    source.mkdir()
    for part, count, seed in (("train", 160, 1), ("t10k", 40, 2)):
        images, labels = make_images(count, 10, seed=seed, size=28)
        _write_idx(source / f"{part}-images-idx3-ubyte.gz", images)
        _write_idx(source / f"{part}-labels-idx1-ubyte.gz", labels)

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    # Relative to the project (the stages run there), so a copy of the project is a project of its own.
    params["data"].update(path=source.name, subset_size=None, val_fraction=0.2, test_fraction=0.2)
    params["backbone"].update(image_size=32)
    params["train"].update(batch_size=32)
    return params


def write_params(workdir: Path, params: dict[str, Any]) -> None:
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def edit_params(workdir: Path, section: str, key: str, value: object) -> None:
    path = workdir / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def dvc(workdir: Path, *arguments: str, tracking_uri: str | None = None) -> subprocess.CompletedProcess[str]:
    """Runs dvc in `workdir`; MLflow logs to params.yaml's store unless `tracking_uri` is given."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    environment["DVC_NO_ANALYTICS"] = "1"
    if tracking_uri is not None:
        environment["MLFLOW_TRACKING_URI"] = tracking_uri
    return subprocess.run(
        ["dvc", *arguments], cwd=workdir, env=environment, capture_output=True, text=True, timeout=900, check=False
    )
