"""A real `python -m stages.train`, killed with SIGKILL by `dvc repro` four times, resumes to the uninterrupted run.

The kills (tests/stages/fault_injection/sitecustomize.py, on PYTHONPATH) come at exact moments: during the
one-time pass that fills the frozen-activation cache, in the frozen phase, between phases, and mid-epoch in an
unfreeze phase (`train.checkpoint_every_steps`). Each restart is a plain `dvc repro`, which deletes the stage's
declared outputs first: the checkpoint lives outside them. The last restart must end with the weights and the
history of the shared tiny run (trained without interruption, same params), and MLflow must hold one run for it,
FINISHED, with each epoch logged once.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.tiny_project import REPO, dvc, ran_stages

# Apart from test_pipeline and test_server (group tiny_run): a second worker builds its own shared tiny run, and
# the two halves of the end-to-end tests run side by side instead of one after the other.
pytestmark = pytest.mark.xdist_group("tiny_run_faults")

FAULTS = REPO / "tests" / "stages" / "fault_injection"
CHECKPOINT = Path("build/checkpoint/train.npz")


def _weights(path: Path) -> list[np.ndarray]:
    import keras

    return [np.asarray(weight) for weight in keras.saving.load_model(path, compile=False).get_weights()]


def _repro_killed_at(project: Path, moment: str) -> str:
    environment_before = dict(os.environ)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAULTS), os.environ.get("PYTHONPATH")]))
    os.environ["TEST_KILL_AT"] = moment
    try:
        result = dvc(project, "repro", "train")
    finally:
        os.environ.clear()
        os.environ.update(environment_before)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Running stage 'train'" in result.stdout
    return result.stdout


def test_train_killed_four_times_resumes_to_the_uninterrupted_run(tiny_run_copy: Path) -> None:
    project = tiny_run_copy
    expected_weights = _weights(project / "build" / "model.keras")
    expected_rows = json.loads((project / "reports" / "history.json").read_text())["epochs"]
    reference_run = json.loads((project / "build" / "run.json").read_text())["run_id"]
    # The pass must run again (the shared run stored its activations), and mid-epoch checkpoints are on.
    shutil.rmtree(project / ".cache" / "activations")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["checkpoint_every_steps"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    outputs = []
    # 120 training images in batches of 32: 4 steps an epoch; frozen 2 epochs, then 1 and 1 (see every_switch).
    for moment in ("pass:1", "checkpoint:0:1:0", "checkpoint:0:2:0", "checkpoint:1:2:2"):
        outputs.append(_repro_killed_at(project, moment))
        assert (project / CHECKPOINT).exists(), moment
    final = dvc(project, "repro", "train")
    assert final.returncode == 0, final.stdout + final.stderr
    assert ran_stages(final) == ["train"]

    # Each restart said where it went on, from the checkpoint the kill left.
    resumed_lines = [line for text in [*outputs[1:], final.stdout] for line in text.splitlines() if "resuming" in line]
    assert [line.split(": ", 1)[1].split("), ")[0] for line in resumed_lines] == [
        "epoch 1 (phase 1, frozen",  # killed in the pass: only the run is continued, training starts anew
        "epoch 2 (phase 1, frozen",
        "epoch 3 (phase 2, unfreeze_top_1",  # the frozen phase's last checkpoint: the next phase goes on
        "epoch 3, after batch 2 (phase 2, unfreeze_top_1",
    ]
    assert not (project / CHECKPOINT).exists()
    for got, want in zip(_weights(project / "build" / "model.keras"), expected_weights, strict=True):
        np.testing.assert_array_equal(got, want)
    rows = json.loads((project / "reports" / "history.json").read_text())["epochs"]
    assert rows == expected_rows

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run_id = json.loads((project / "build" / "run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    experiment_runs = client.search_runs([run.info.experiment_id])
    assert {other.info.run_id for other in experiment_runs} == {reference_run, run_id}
    assert run.info.status == "FINISHED"
    assert (run.data.tags["resume.count"], run.data.tags["resume.from_epoch"]) == ("4", "3")
    assert "pipeline.end_reason" not in run.data.tags
    # System metrics go on after the last step of the killed processes (MLflow's resume_logging): none twice.
    memory_steps = [metric.step for metric in client.get_metric_history(run_id, "system/system_memory_usage_megabytes")]
    assert memory_steps and len(memory_steps) == len(set(memory_steps))
    for key in ("loss", "val_accuracy", "lr", "phase"):
        steps = [metric.step for metric in client.get_metric_history(run_id, key)]
        assert sorted(steps) == [0, 1, 2, 3], key
        values = [metric.value for metric in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
        assert values == [row[key] for row in expected_rows], key
