"""Two training workers on 127.0.0.1 (MultiWorkerMirroredStrategy, TF_CONFIG), as on two machines.

The chief and the other worker each run `python -m stages.train` in a project of their own (a copy of the shared
tiny run: its prepared data and converted backbone), a frozen phase and one unfreeze phase, each compiled fresh.
The test checks that both end with bit-identical weights, that the chief's losses equal those of a single process
training on the global batch, that only the chief's MLflow run exists (FINISHED, every epoch once), and that the
other worker wrote nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.multi_worker_fit import free_ports
from tests.tiny_project import EXPERIMENT, copy_project, file_states

pytestmark = pytest.mark.xdist_group("tiny_run")

DIGEST = re.compile(r"weights sha256 ([0-9a-f]{64})")


def _two_phases(project: Path, **train: object) -> None:
    """A frozen phase of 2 epochs and one unfreeze phase of 1, at a fixed LR (auto reads the chief's lr_find).

    The head has no BatchNorm and no dropout: in training mode BatchNorm would normalise each worker's share of
    the batch, not the global batch, and each replica draws dropout masks of its own, so the losses could not
    equal a single process's (the backbone's BN is in inference mode).
    """
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["head"].update(batch_norm="none", dropout=0.0, hidden_dropout=0.0)
    params["train"].update(
        base_learning_rate=0.01,
        frozen_epochs=2,
        unfreeze=[{"blocks": 1, "epochs": 1, "lr_factor": 0.1}],
        **train,
    )
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _train(project: Path, tf_config: dict[str, object] | None) -> subprocess.Popen[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_TRACKING", "TF_"))}
    environment.update(CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="2")
    if tf_config is not None:
        environment["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen(
        [sys.executable, "-m", "stages.train"],
        cwd=project,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


def _tracked_files(project: Path) -> dict[str, tuple[int, int]]:
    # Python's bytecode caches are the interpreter's, not the pipeline's outputs.
    return {path: state for path, state in file_states(project).items() if "__pycache__" not in path}


def test_two_workers_train_in_step_and_only_the_chief_writes(tiny_run_copy: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    chief, worker = tiny_run_copy, copy_project(tiny_run_copy, tmp_path / "worker")
    single = copy_project(tiny_run_copy, tmp_path / "single")
    for project in (chief, worker):
        _two_phases(project)
    # The workers cannot cache the frozen activations (pipeline/training/features.py): neither does the reference.
    _two_phases(single, feature_cache_mb=0)
    client = MlflowClient(f"sqlite:///{chief / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs_before = {run.info.run_id for run in client.search_runs([experiment_id])}
    worker_before = _tracked_files(worker)

    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    started = time.perf_counter()
    processes = [
        _train(project, {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})
        for index, project in enumerate((chief, worker))
    ]
    chief_output, worker_output = (_finish(process) for process in processes)
    two_workers_seconds = time.perf_counter() - started
    started = time.perf_counter()
    single_output = _finish(_train(single, None))
    single_seconds = time.perf_counter() - started

    assert "training as the chief of 2 workers (127.0.0.1:" in chief_output
    assert "2 workers: frozen activations are not cached" in chief_output
    (chief_digest,) = DIGEST.findall(chief_output)
    (worker_digest,) = DIGEST.findall(worker_output)
    assert worker_digest == chief_digest, worker_output
    assert "worker 1: trained 3 epochs in step with the chief" in worker_output

    history = json.loads((chief / "reports" / "history.json").read_text())["epochs"]
    reference = json.loads((single / "reports" / "history.json").read_text())["epochs"]
    assert [row["epoch"] for row in history] == [0, 1, 2]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [row[key] for row in history] == pytest.approx([row[key] for row in reference], rel=1e-5, abs=1e-6)

    (run,) = [run for run in client.search_runs([experiment_id]) if run.info.run_id not in runs_before]
    assert run.info.status == "FINISHED"
    assert run.data.tags["cluster.workers"] == "2"
    assert run.data.tags["device.strategy"] == "MultiWorkerMirroredStrategy"
    assert run.data.tags["device.replicas"] == "2"
    assert run.data.tags["cluster.weights_sha256"] == chief_digest
    assert [metric.step for metric in client.get_metric_history(run.info.run_id, "loss")] == [0, 1, 2]
    # The other worker's project: nothing written, no MLflow run of its own.
    assert _tracked_files(worker) == worker_before
    print(
        f"two workers {two_workers_seconds:.0f} s, single process {single_seconds:.0f} s; losses "
        f"{[round(row['loss'], 6) for row in history]} vs {[round(row['loss'], 6) for row in reference]}; "
        f"single output tail: {single_output.splitlines()[-1]}"
    )
