from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path

import numpy as np

from pipeline.tracking import provenance


def test_files_are_hashed_in_order_with_their_sizes(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"abc")
    second.write_bytes(b"de")
    expected = hashlib.sha256(b"3:abc2:de").hexdigest()
    assert provenance.sha256_of_files([first, second]) == expected
    # Moving a byte across the boundary changes the digest.
    first.write_bytes(b"ab")
    second.write_bytes(b"cde")
    assert provenance.sha256_of_files([first, second]) != expected


def test_data_fingerprint_combines_manifest_and_source(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("part,index,label,split\ntrain,0,1,train\n")
    manifest_sha256 = hashlib.sha256(f"{manifest.stat().st_size}:".encode() + manifest.read_bytes()).hexdigest()
    assert provenance.data_fingerprint(manifest=manifest, source_sha256="f" * 64) == {
        "data.manifest_sha256": manifest_sha256,
        "data.source_sha256": "f" * 64,
        "data.fingerprint": hashlib.sha256(f"{manifest_sha256}:{'f' * 64}".encode()).hexdigest(),
    }


def test_class_counts_per_split_name_every_class() -> None:
    counts = provenance.class_counts(
        {"train": np.array([0, 2, 2, 2]), "test": np.array([], dtype=np.int64)}, ("cat", "dog", "owl")
    )
    assert counts == {"data.class_counts.train": "cat 1, dog 0, owl 3", "data.class_counts.test": "cat 0, dog 0, owl 0"}


def _git(directory: Path, *arguments: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *arguments],
        cwd=directory,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_git_state_names_the_commit_and_a_dirty_tree(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "commit", "-qm", "first")
    commit = _git(tmp_path, "rev-parse", "HEAD")
    assert provenance.git_state(tmp_path) == {
        "mlflow.source.git.commit": commit,
        "git.commit": commit,
        "git.dirty": "false",
    }
    (tmp_path / "code.py").write_text("x = 2\n")
    assert provenance.git_state(tmp_path)["git.dirty"] == "true"
    assert provenance.git_state(tmp_path, paths=["reports"])["git.dirty"] == "false"
    (tmp_path / "untracked.txt").write_text("untracked files are not the commit's code\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    assert provenance.git_state(tmp_path)["git.dirty"] == "false"


def test_git_state_outside_a_repository(tmp_path: Path) -> None:
    assert provenance.git_state(tmp_path) == {"git.commit": "none"}


def test_dvc_context_from_the_environment() -> None:
    assert provenance.dvc_context({}) == {"dvc.stage": "none"}
    environment = {"DVC_STAGE": "train", "DVC_EXP_NAME": "sunny-owl", "DVC_EXP_BASELINE_REV": "abc123", "PATH": "/"}
    assert provenance.dvc_context(environment) == {
        "dvc.stage": "train",
        "dvc.experiment": "sunny-owl",
        "dvc.baseline_rev": "abc123",
    }


def test_runs_are_named_after_the_dvc_experiment() -> None:
    model = "efficientnet_lite0-64px"
    assert provenance.run_name(model, {"DVC_EXP_NAME": "raked-doek", "DVC_STAGE": "train"}) == (
        "raked-doek \u00b7 efficientnet_lite0-64px"
    )
    # `dvc repro` and a stage run by hand set no experiment name.
    assert provenance.run_name(model, {"DVC_STAGE": "train"}) == model
    assert provenance.run_name(model, {"DVC_EXP_NAME": " "}) == model


def test_library_versions_are_the_installed_ones() -> None:
    versions = provenance.library_versions()
    assert versions["versions.python"] == platform.python_version()
    assert versions["versions.tensorflow"] == importlib.metadata.version("tensorflow")
    assert versions["versions.scikit-learn"] == importlib.metadata.version("scikit-learn")
    assert set(versions) == {"versions.python", *(f"versions.{name}" for name in provenance.TRACKED_LIBRARIES)}
