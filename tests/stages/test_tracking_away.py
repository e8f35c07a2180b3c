"""A tracking server that goes away while `train` trains: training goes on, and no epoch is lost or logged twice.

A real `mlflow server` (SQLite backend) is stopped after the first epoch of a real `dvc repro train`, whose epochs
are slowed to a few seconds each (tests/stages/fault_injection/sitecustomize.py). When the server comes back
before training ends, the kept epochs are sent within the stage and the run ends FINISHED. When it stays away,
the stage ends after `tracking.reconnect_seconds` in one line, keeps its checkpoint, and the next `dvc repro`
(server up again) resumes the run and logs what it lacked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.tiny_project import REPO, edit_params

# Apart from test_pipeline and test_server (group tiny_run): a second worker builds its own shared tiny run, and
# the two halves of the end-to-end tests run side by side instead of one after the other.
pytestmark = pytest.mark.xdist_group("tiny_run_faults")

FAULTS = REPO / "tests" / "stages" / "fault_injection"
CHECKPOINT = Path("build/checkpoint/train.npz")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Server:
    """`mlflow server` on a fixed port, started and stopped at will, its runs kept in one SQLite file."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        store = f"sqlite:///{self.folder / 'runs.db'}"
        with (self.folder / "server.log").open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
                 "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1"],
                cwd=self.folder, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                if answer.read() == b"OK":
                    return
            time.sleep(0.25)
        pytest.fail("mlflow server did not come up: " + (self.folder / "server.log").read_text()[-3000:])

    def stop(self) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=30)
            self._process = None


def _train(project: Path, server: _Server, *, sleep: float) -> subprocess.Popen[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
    environment.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}",
        DVC_NO_ANALYTICS="1",
        MLFLOW_TRACKING_URI=server.uri,
        PYTHONPATH=str(FAULTS),
        TEST_SLEEP_AFTER_EPOCH=str(sleep),
    )
    # Forced: the tracking URI (an environment variable) is no param of DVC's, so train looks up to date.
    command = ["dvc", "repro", "--force", "--single-item", "train"]
    return subprocess.Popen(
        command, cwd=project, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_epochs(project: Path, epochs: int, process: subprocess.Popen[str]) -> None:
    from pipeline.training.checkpoint import read_state

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        state = read_state(project / CHECKPOINT) if (project / CHECKPOINT).exists() else None
        if state is not None and state.epochs_done >= epochs and not state.batches_done:
            return
        time.sleep(0.1)
    pytest.fail(f"train did not reach epoch {epochs}: {process.communicate()}")


def _assert_finished_with_every_epoch_once(project: Path, server: _Server) -> None:
    """The run of build/run.json on the server: FINISHED, no error tag, each of the 4 epochs logged once."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.uri)
    run_id = json.loads((project / "build" / "run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "pipeline.error" not in run.data.tags
    for key in ("loss", "val_loss", "lr"):
        assert sorted(metric.step for metric in client.get_metric_history(run_id, key)) == [0, 1, 2, 3], key


def test_epochs_are_kept_while_the_server_is_away_and_sent_when_it_answers(tiny_run_copy: Path, tmp_path) -> None:
    project = tiny_run_copy
    server = _Server(tmp_path)
    server.start()
    try:
        training = _train(project, server, sleep=3)
        _wait_for_epochs(project, 1, training)
        server.stop()
        _wait_for_epochs(project, 3, training)
        server.start()
        stdout, stderr = training.communicate(timeout=600)
    finally:
        server.stop()
    assert training.returncode == 0, stdout + stderr
    assert "tracking server not answering at epoch 2; training goes on" in stdout
    assert "tracking server answering again after" in stdout
    assert "Traceback" not in stderr
    assert "WARNING" not in stderr and "Retrying" not in stderr, stderr

    server.start()
    try:
        _assert_finished_with_every_epoch_once(project, server)
    finally:
        server.stop()


def test_a_server_that_never_comes_back_ends_train_in_one_line_and_the_next_run_resumes(
    tiny_run_copy: Path, tmp_path
) -> None:
    project = tiny_run_copy
    edit_params(project, "tracking", "reconnect_seconds", 3)
    server = _Server(tmp_path)
    server.start()
    try:
        training = _train(project, server, sleep=2)
        _wait_for_epochs(project, 1, training)
        server.stop()
        started = time.monotonic()
        stdout, stderr = training.communicate(timeout=600)
        waited = time.monotonic() - started
        assert training.returncode != 0
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "did not answer for 3 s after training ended" in errors[0], stderr
        assert "3 epoch(s) of run" in errors[0]
        assert "Traceback" not in stderr, stderr
        assert waited < 120, waited  # bounded: 3 epochs of 2 s, a few seconds per failed send, 3 s of waiting
        assert (project / CHECKPOINT).exists()

        server.start()
        rerun = _train(project, server, sleep=0)
        stdout, stderr = rerun.communicate(timeout=600)
        assert rerun.returncode == 0, stdout + stderr
        assert "resuming MLflow run" in stdout and "3 epoch(s) the run lacked logged from the checkpoint" in stdout
        _assert_finished_with_every_epoch_once(project, server)
    finally:
        server.stop()
