"""pipeline/tracking/epoch_logger.py: one epoch axis across the fits of a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking.epoch_logger import EpochLogger
from pipeline.training.history import PhaseRecord
from tests.tracking.conftest import open_run, tiny_model


def test_epochs_of_several_fits_share_one_step_axis(store: str, tmp_path: Path) -> None:
    model = tiny_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    features, labels = np.ones((8, 4), np.float32), np.zeros(8, np.int64)
    with open_run(store, tmp_path) as run:
        model.fit(features, labels, epochs=2, verbose=0, callbacks=[EpochLogger(run)])
        model.fit(features, labels, initial_epoch=2, epochs=5, verbose=0, callbacks=[EpochLogger(run)])
    steps = [metric.step for metric in MlflowClient(store).get_metric_history(run.run_id, "loss")]
    assert steps == [0, 1, 2, 3, 4]


class _AwayFor:
    """A run whose server does not answer the first `refusals` log calls (as MLflow reports a refused connection)."""

    def __init__(self, refusals: int) -> None:
        self.refusals, self.logged, self.run_id = refusals, [], "r1"
        self.client = type("Client", (), {"tracking_uri": "http://127.0.0.1:5000"})()

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        from mlflow.exceptions import MlflowException

        if self.refusals:
            self.refusals -= 1
            raise MlflowException(
                "API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with exception"
            )
        self.logged.append((step, metrics["loss"]))


def test_epochs_the_server_did_not_take_are_sent_in_order_when_it_answers() -> None:
    run, lines = _AwayFor(refusals=3), []
    logger = EpochLogger(run, print_line=lines.append)
    for epoch in range(4):
        logger.on_epoch_end(epoch, {"loss": float(epoch)})
        if epoch == 1:
            assert (run.logged, logger.pending) == ([], 2)
    assert run.logged == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0)]
    assert logger.pending == 0
    assert lines[0] == (
        "tracking server not answering at epoch 1; training goes on and its epochs are kept to be sent when it answers"
    )
    assert lines[1].startswith("tracking server answering again after ")
    # A resumed run does not log again an epoch the run holds, and catches up the ones it lacks.
    resumed = EpochLogger(run, logged_steps={0, 1, 2, 3}, print_line=lines.append)
    assert resumed.catch_up([{"epoch": 4, "phase": 1.0, "phase_name": "x", "loss": 4.0}]) == 1
    resumed.on_epoch_end(3, {"loss": 9.0})
    assert run.logged[-1] == (4, 4.0)


def test_a_server_still_away_after_the_wait_is_one_error_naming_what_is_not_logged() -> None:
    from pipeline.tracking.runs import TrackingUnavailableError

    logger = EpochLogger(_AwayFor(refusals=100), print_line=lambda line: None)
    logger.on_epoch_end(0, {"loss": 1.0})
    logger.on_epoch_end(1, {"loss": 1.0})
    with pytest.raises(
        TrackingUnavailableError,
        match=r"did not answer for 0.2 s after training ended .* 2 epoch\(s\) of run r1 are not logged yet",
    ):
        logger.finish(wait_seconds=0.2, retry_every=0.05)


def test_other_errors_of_the_store_are_not_waited_out() -> None:
    class Refusing(_AwayFor):
        def log_metrics(self, metrics, *, step):
            from mlflow.exceptions import MlflowException

            raise MlflowException("Invalid value nan for metric 'loss'")

    with pytest.raises(Exception, match="Invalid value nan"):
        EpochLogger(Refusing(0)).on_epoch_end(0, {"loss": 1.0})


class _Tagged:
    """A run that keeps its tags, and refuses the first `refusals` tag calls as an away server does."""

    def __init__(self, refusals: int = 0) -> None:
        self.tags: dict[str, str] = {}
        self.refusals = refusals

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.exceptions import MlflowException

        if self.refusals:
            self.refusals -= 1
            raise MlflowException(
                "API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/set-tag failed with exception x"
            )
        self.tags.update(tags)

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        pass


def _record(index: int, name: str, *, xla: bool | None, reason: str = "") -> PhaseRecord:
    return PhaseRecord(
        index=index,
        name=name,
        trainable_blocks=index,
        learning_rate=0.1,
        first_epoch=index,
        end_epoch=index + 1,
        cached_features=False,
        xla=xla,
        xla_reason=reason,
        precision="mixed_float16",
        replicas=2,
    )


def test_each_phase_tags_what_its_compiled_model_runs_with() -> None:
    run = _Tagged()
    logger = EpochLogger(run, print_line=lambda line: None)
    logger.begin_phase(_record(0, "frozen", xla=False, reason="auto: off"))
    assert run.tags == {
        "device.xla": "false",
        "device.xla_reason": "auto: off",
        "device.precision": "mixed_float16",
        "device.replicas": "2",
    }
    logger.begin_phase(_record(1, "unfreeze_top_2", xla=False, reason="auto: off"))
    assert run.tags["device.xla"] == "false"
    logger.begin_phase(_record(2, "unfreeze_all", xla=True, reason="device.jit_compile is true"))
    assert run.tags["device.xla"] == "frozen: false; unfreeze_top_2: false; unfreeze_all: true"
    assert run.tags["device.xla_reason"] == (
        "frozen: auto: off; unfreeze_top_2: auto: off; unfreeze_all: device.jit_compile is true"
    )


def test_phase_tags_wait_for_an_away_server_and_a_record_without_them_tags_nothing() -> None:
    run = _Tagged(refusals=1)
    logger = EpochLogger(run, print_line=lambda line: None)
    logger.begin_phase(_record(0, "frozen", xla=None))
    assert run.tags == {}
    logger.begin_phase(_record(1, "unfreeze_all", xla=True, reason="device.jit_compile is true"))
    assert run.tags == {}
    logger.on_epoch_end(1, {"loss": 1.0})
    assert run.tags["device.xla"] == "true"
