"""stages/_checkpoint.py: what keys the train stage's checkpoint, and when a start resumes from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.params import parse
from pipeline.training.checkpoint import CheckpointKey, TrainingState, write_checkpoint
from stages._checkpoint import TRAIN_CHECKPOINT, TRAIN_PARAMS, resume_point

REPO = Path(__file__).resolve().parents[2]
KEY = CheckpointKey(params={"head.dropout": "0.2"}, data={"data.fingerprint": "f"}, code={"pipeline/x.py": "1"})


def _write(key: CheckpointKey, run_id: str) -> None:
    state = TrainingState(
        key=key.as_dict(),
        run_id=run_id,
        phase_index=0,
        epochs_done=2,
        rows=[{"epoch": 0}, {"epoch": 1}],
    )
    write_checkpoint(TRAIN_CHECKPOINT, state, {})


def test_the_key_covers_the_params_train_reads_in_dvc_yaml() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert tuple(stages["train"]["params"]) == TRAIN_PARAMS


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A project folder as the working directory, its store holding one finished run, and a checkpoint naming it.

    Returns:
        The store's URI.
    """
    from pipeline.tracking.lifecycle import tracked_run

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracked_run(tracking_uri=store, experiment="e", artifact_dir=tmp_path / "artifacts") as run:
        pass
    _write(KEY, run.run_id)
    return store


def test_a_checkpoint_of_the_same_training_is_resumed(project: str) -> None:
    checkpoint, reference = resume_point(parse({}), KEY, tracking_uri=project)
    assert (checkpoint.state.epochs_done, reference.run_id, reference.tracking_uri) == (
        2,
        checkpoint.state.run_id,
        project,
    )


def test_a_checkpoint_of_other_params_is_not_used_and_one_line_says_why(project: str, capsys) -> None:
    changed = CheckpointKey(params={"head.dropout": "0.3"}, data=dict(KEY.data), code=dict(KEY.code))
    assert resume_point(parse({}), changed, tracking_uri=project) == (None, None)
    assert capsys.readouterr().out == (
        "not resuming from build/checkpoint/train.npz: params changed since the interrupted run: head.dropout; "
        "training from the start\n"
    )
    assert not TRAIN_CHECKPOINT.exists()


def test_a_checkpoint_whose_run_is_gone_or_that_is_damaged_is_not_used(project: str, capsys) -> None:
    _write(KEY, run_id="0123456789abcdef0123456789abcdef")
    assert resume_point(parse({}), KEY, tracking_uri=project) == (None, None)
    assert f"its run 0123456789abcdef0123456789abcdef is no longer in the tracking store {project}" in (
        capsys.readouterr().out
    )
    TRAIN_CHECKPOINT.write_bytes(b"PK\x03\x04 cut short")
    assert resume_point(parse({}), KEY, tracking_uri=project) == (None, None)
    assert "it cannot be read" in capsys.readouterr().out


def test_resume_false_ignores_the_checkpoint(project: str, capsys) -> None:
    assert resume_point(parse({"train": {"resume": False}}), KEY, tracking_uri=project) == (None, None)
    assert capsys.readouterr().out == ""
