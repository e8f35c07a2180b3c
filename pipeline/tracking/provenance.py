"""Where a run came from: data fingerprints and class counts, the git commit, the DVC stage, library versions.

Why: a run in the MLflow UI must say what it was trained on and with what, so that two runs can be
compared (same data? same code? same TensorFlow?) and an old result reproduced. Everything here is
plain Python (no TensorFlow, no MLflow): it returns dictionaries that the stages log as params and tags.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# The libraries whose versions decide a run's numbers or how it is stored.
TRACKED_LIBRARIES = ("tensorflow", "keras", "mlflow", "dvc", "scikit-learn", "numpy", "pillow")
_CHUNK = 1 << 20


def sha256_of_files(paths: Sequence[Path]) -> str:
    """One SHA-256 over the contents of `paths`, in the order given, each prefixed by its size.

    Why the size prefix: without it, moving bytes from the end of one file to the start of the next
    would keep the digest.

    Args:
        paths: Files to hash.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{Path(path).stat().st_size}:".encode())
        with Path(path).open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def data_fingerprint(*, manifest: Path, source_sha256: str) -> dict[str, str]:
    """The params that identify the data: the split manifest's digest and the source's.

    Args:
        manifest: The split manifest (which image is in which split).
        source_sha256: Digest of the data source (see `sha256_of_files`, or the image cache's
            `source_sha256`, which covers every file it was decoded from).

    Returns:
        `data.manifest_sha256`, `data.source_sha256` and `data.fingerprint` (both together).
    """
    manifest_sha256 = sha256_of_files([manifest])
    combined = hashlib.sha256(f"{manifest_sha256}:{source_sha256}".encode()).hexdigest()
    return {"data.manifest_sha256": manifest_sha256, "data.source_sha256": source_sha256, "data.fingerprint": combined}


def class_counts(labels_by_split: Mapping[str, np.ndarray], class_names: Sequence[str]) -> dict[str, str]:
    """Images per class of each split, one param per split (`data.class_counts.train: "Trouser 5600, ..."`).

    Args:
        labels_by_split: Split name -> label indices.
        class_names: Label index -> name.

    Returns:
        One entry per split; classes in label order, zero counts included.
    """
    counts = {}
    for split, labels in labels_by_split.items():
        per_class = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
        counts[f"data.class_counts.{split}"] = ", ".join(
            f"{name} {int(count)}" for name, count in zip(class_names, per_class, strict=True)
        )
    return counts


def git_state(directory: Path, paths: Sequence[str] = ()) -> dict[str, str]:
    """The commit the code is at and whether `paths` had uncommitted changes.

    The commit goes under MLflow's own tag (`mlflow.source.git.commit`), which its UI shows on the run page.
    Why only some paths: `dvc repro` rewrites tracked outputs (dvc.lock, reports/) as it goes, so the
    whole tree is always dirty by the time the train stage runs; what matters is the code and params.

    Args:
        directory: Any folder inside the repository.
        paths: Git pathspecs whose uncommitted changes make the tree dirty; empty means every tracked file.

    Returns:
        The tags; `git.commit: none` when `directory` is not in a git repository or git is missing.
    """
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *paths],
            cwd=directory,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "none"}
    return {"mlflow.source.git.commit": commit, "git.commit": commit, "git.dirty": str(bool(status.strip())).lower()}


def dvc_context(environment: Mapping[str, str]) -> dict[str, str]:
    """The DVC stage running now and, under `dvc exp run`, the experiment's name and baseline commit.

    Why from the environment: DVC sets `DVC_STAGE` for every stage command and `DVC_EXP_NAME` and
    `DVC_EXP_BASELINE_REV` for experiments; a stage run by hand has none of them.

    Args:
        environment: The process environment.

    Returns:
        `dvc.stage` (`none` outside DVC), and `dvc.experiment` / `dvc.baseline_rev` when set.
    """
    tags = {"dvc.stage": environment.get("DVC_STAGE", "none")}
    for variable, tag in (("DVC_EXP_NAME", "dvc.experiment"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev")):
        if environment.get(variable):
            tags[tag] = environment[variable]
    return tags


def run_name(model: str, environment: Mapping[str, str]) -> str:
    """The run's name in MLflow: the model it trains, after the DVC experiment's name under `dvc exp run`.

    Why: runs of one experiment on one dataset share the model's name (`efficientnet_lite0-64px`), so the
    UI's compare view could not tell three `dvc exp run`s apart; DVC's name for each (`DVC_EXP_NAME`, set
    in every stage's environment by `dvc exp run`, also what `dvc exp show` lists) does.

    Args:
        model: What the run trains, e.g. `efficientnet_lite0-64px`.
        environment: The process environment.

    Returns:
        `<experiment> · <model>` under `dvc exp run` (`raked-doek · efficientnet_lite0-64px`), else `model`.
    """
    experiment = environment.get("DVC_EXP_NAME", "").strip()
    return f"{experiment} \u00b7 {model}" if experiment else model


def library_versions() -> dict[str, str]:
    """The Python version and each tracked library's installed version (`not installed` when absent)."""
    versions = {"versions.python": platform.python_version()}
    for library in TRACKED_LIBRARIES:
        try:
            versions[f"versions.{library}"] = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            versions[f"versions.{library}"] = "not installed"
    return versions
