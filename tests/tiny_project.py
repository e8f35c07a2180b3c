"""A temporary copy of the repository with tiny IDX data, for end-to-end `dvc` runs.

Why shared: the end-to-end tests (local store, tracking server, SavedModel backbone) run the same stages on
the same tiny data. One `dvc repro` of the tiny project with every switch on (`build_tiny_run`) is made once
per test session (the `shared_tiny_run` fixture of tests/conftest.py); a test that only reads it shares it,
and a test that changes it, or derives a project of its own from it, works on a `copy_project` of it.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tests.conftest import make_images

REPO = Path(__file__).resolve().parents[1]
STAGES = ("validate", "prepare", "lr_find", "train", "evaluate", "register")
# The experiment and registered model of the shared run.
EXPERIMENT = "e2e"
REGISTERED_MODEL = "e2e-model"
# The experiment and registered model of `build_queue_project`.
QUEUE_EXPERIMENT = "queue"
QUEUE_REGISTERED_MODEL = "queue-model"


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def tiny_params() -> dict[str, Any]:
    """params.yaml of the repository on the tiny data of `build_project`: 32 px, batches of 32."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    # Relative to the project (the stages run there), so a copy of the project is a project of its own.
    params["data"].update(path="idx", subset_size=None, val_fraction=0.2, test_fraction=0.2)
    params["backbone"].update(image_size=32)
    params["train"].update(batch_size=32)
    return params


def build_project(workdir: Path) -> dict[str, Any]:
    """Copies the code and DVC set-up into `workdir`, writes 160 + 40 tiny IDX images, returns `tiny_params()`.

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
    return tiny_params()


def every_switch(params: dict[str, Any]) -> dict[str, Any]:
    """The shared run's params: `params` with switches of every kind on, so each one's wiring runs end to end."""
    params["head"].update(hidden_units=[16], activation="gelu", batch_norm="after", max_norm={"value": 3.0, "axis": 0})
    params["train"].update(
        frozen_epochs=2,
        base_learning_rate="auto",
        label_smoothing=0.1,
        bn_policy="affine",
        lr_decay_per_block=2.0,
        unfreeze=[
            {
                "blocks": 1,
                "epochs": 1,
                "lr_factor": 0.1,
                "optimizer": {"name": "sgd", "momentum": 0.9, "clipnorm": 1.0},
            },
            # 0.01 (Adam at 1.6e-3 on three pretrained blocks) left a model answering one class everywhere,
            # test accuracy 0.1 = the majority baseline, which the champion gate rightly refuses.
            {"blocks": 3, "epochs": 1, "lr_factor": 0.001},
        ],
    )
    params["lr_find"].update(enabled=True, steps=20, images=64, min_lr=1e-5, max_lr=1.0)
    # The classical baselines are scored (and their wiring runs), but the gate's floor is the majority class: on
    # the tiny images (a bright row per class) logistic regression on pixels scores 1.0, which a 4-epoch
    # fine-tuning of a 32 px ImageNet network does not reach; the gate's rule has its own tests.
    params["tracking"].update(
        experiment=EXPERIMENT,
        registered_model=REGISTERED_MODEL,
        system_metrics_interval=0.5,
        gate_baselines=["majority"],
    )
    return params


def build_tiny_run(workdir: Path) -> Path:
    """Builds the tiny project in `workdir` with `every_switch` params and runs `dvc repro` once in it.

    The output of that run (stdout, then stderr) is kept in `workdir`/repro.log.

    Returns:
        `workdir`.

    Raises:
        AssertionError: `dvc repro` failed, or did not run every stage.
    """
    write_params(workdir, every_switch(build_project(workdir)))
    result = dvc(workdir, "repro")
    (workdir / "repro.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ran_stages(result) == list(STAGES), result.stdout
    return workdir


def save_tiny_keras_backbone(path: Path) -> None:
    """A 2-convolution network with a classifier on top, saved as a .keras file for `backbone.name`.

    Why these layers: the pipeline cuts the file's last layer off and trains a new head on the flattened
    map of the two random convolutions (frozen); the flattened map keeps where each image's bright row is,
    so three epochs reach a test accuracy far above the majority class, in seconds.
    """
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    tensor = keras.layers.Rescaling(1 / 255, name="scale")(inputs)
    for index in (1, 2):
        tensor = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name=f"conv{index}")(tensor)
    tensor = keras.layers.Flatten(name="flatten")(tensor)
    outputs = keras.layers.Dense(10, activation="softmax", name="classifier")(tensor)
    keras.Model(inputs, outputs, name="tiny").save(path)


def build_queue_project(workdir: Path) -> Path:
    """The tiny project on `save_tiny_keras_backbone`, committed, for experiments queued with `dvc exp run --queue`.

    Why committed: DVC queues an experiment as a change to the last commit. Each experiment freezes the
    tiny backbone for 3 epochs, scores the majority class as the only baseline and registers to
    `QUEUE_REGISTERED_MODEL` in experiment `QUEUE_EXPERIMENT`, without McNemar's test (40 test images are too
    few to tell three similar models apart): the champion is then the first version with the best test accuracy.

    Returns:
        `workdir`.
    """
    params = build_project(workdir)
    save_tiny_keras_backbone(workdir / "tiny.keras")
    params["backbone"].update(name="tiny.keras")
    params["head"].update(hidden_units=[], batch_norm="none")
    params["train"].update(frozen_epochs=3, unfreeze=[], base_learning_rate=0.01)
    for baseline in ("probe", "pixels"):
        params["evaluate"]["baselines"][baseline]["enabled"] = False
    params["tracking"].update(
        experiment=QUEUE_EXPERIMENT,
        registered_model=QUEUE_REGISTERED_MODEL,
        system_metrics_interval=0,
        gate_baselines=["majority"],
        champion_alpha=None,
    )
    write_params(workdir, params)
    subprocess.run(["git", "add", "-A"], cwd=workdir, check=True)
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", "baseline"],
        cwd=workdir,
        check=True,
    )
    return workdir


def queue_seeds(workdir: Path, seeds: tuple[int, ...]) -> None:
    """Queues one experiment per seed, `dvc exp run --queue --name seed-N -S train.seed=N`, as `make seeds` does.

    The `-S` options of `python -m pipeline.cli.seeds --queue-overrides` point each experiment's temporary copy
    at the project's tracking store, artifact folder and caches.

    Raises:
        AssertionError: A `dvc exp run --queue` failed.
    """
    overrides = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.seeds", "--queue-overrides"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for seed in seeds:
        options = ["--name", f"seed-{seed}", "-S", f"train.seed={seed}", *shlex.split(overrides)]
        queued = dvc(workdir, "exp", "run", "--queue", *options)
        assert queued.returncode == 0, queued.stdout + queued.stderr


def queue_statuses(workdir: Path) -> dict[str, str]:
    """The name and status (Queued, Running, Success, Failed...) of every task `dvc queue status` lists.

    Raises:
        AssertionError: `dvc queue status` failed.
    """
    result = dvc(workdir, "queue", "status")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("Task"))
    statuses = {}
    for line in lines[header + 1 :]:
        if not line.strip():
            break
        fields = line.split()
        statuses[fields[1]] = fields[-1]
    return statuses


def ran_stages(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The stages `dvc repro` (or `dvc exp run`) ran, in pipeline order."""
    return [stage for stage in STAGES if f"Running stage '{stage}'" in result.stdout]


def copy_project(source: Path, destination: Path) -> Path:
    """Copies a tiny project to `destination`, a project of its own that shares nothing with `source`.

    Why more than a copy: MLflow keeps absolute paths in its store (each experiment's artifact root, each
    run's and logged model's artifact folder, the dataset's source), so a plain copy of mlflow.db would
    log the copy's artifacts into `source`'s mlartifacts/. Those paths are moved into `destination`, in
    the store and in the MLmodel files, as if the project had been built there.

    Returns:
        `destination`.
    """
    shutil.copytree(source, destination, symlinks=True)
    old, new = f"{source}{os.sep}", f"{destination}{os.sep}"
    store = destination / "mlflow.db"
    if store.exists():
        with sqlite3.connect(store) as connection:
            tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for column in connection.execute(f'PRAGMA table_info("{table}")').fetchall():
                    name, declared = column[1], column[2].upper()
                    if "CHAR" in declared or "TEXT" in declared:
                        connection.execute(
                            f'UPDATE "{table}" SET "{name}" = replace("{name}", ?, ?) WHERE instr("{name}", ?) > 0',
                            (old, new, old),
                        )
        connection.execute("VACUUM")  # so that no free page keeps an old path either
        connection.close()
    for mlmodel in (destination / "mlartifacts").rglob("MLmodel"):
        mlmodel.write_text(mlmodel.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    return destination


def file_states(project: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file and link under `project`, by relative path."""
    states = {}
    for folder, folders, files in os.walk(project):
        for name in files + [name for name in folders if os.path.islink(os.path.join(folder, name))]:
            path = os.path.join(folder, name)
            status = os.lstat(path)
            states[os.path.relpath(path, project)] = (status.st_size, status.st_mtime_ns)
    return states


@contextlib.contextmanager
def unchanged(project: Path) -> Iterator[Path]:
    """Yields `project`, then fails if anything under it was written, added or removed meanwhile.

    Why: a project shared between tests must stay as its fixture left it, whatever order the tests run
    in; this catches a test that wrote into one instead of a copy. Read-only permissions could not: CI
    runs the suite as root, who writes through them.

    Raises:
        AssertionError: Naming the changed paths.
    """
    before = file_states(project)
    yield project
    after = file_states(project)
    changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    assert changed == [], f"a test changed the shared project {project} (copy it with copy_project): {changed}"


def write_params(workdir: Path, params: dict[str, Any]) -> None:
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def edit_params(workdir: Path, section: str, key: str, value: object) -> None:
    path = workdir / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def dvc_environment(tracking_uri: str | None = None) -> dict[str, str]:
    """The environment `dvc` runs in: this venv first on PATH, no analytics, MLflow at `tracking_uri` if given."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    environment["DVC_NO_ANALYTICS"] = "1"
    if tracking_uri is not None:
        environment["MLFLOW_TRACKING_URI"] = tracking_uri
    return environment


def dvc(workdir: Path, *arguments: str, tracking_uri: str | None = None) -> subprocess.CompletedProcess[str]:
    """Runs dvc in `workdir`; MLflow logs to params.yaml's store unless `tracking_uri` is given."""
    return subprocess.run(
        ["dvc", *arguments],
        cwd=workdir,
        env=dvc_environment(tracking_uri),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
