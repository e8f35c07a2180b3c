"""The team set-up end to end: `mlflow server` on a PostgreSQL backend store, the pipeline logging to it.

A throw-away PostgreSQL cluster (initdb and pg_ctl in a temporary folder, a free port on 127.0.0.1)
and a real `mlflow server` on another free port; in a copy of the session's tiny run (tests/conftest.py),
with one training epoch, `dvc repro` runs every stage that talks to the tracking store with
MLFLOW_TRACKING_URI pointing at the server; the run and the registered version are read back through
MlflowClient. Both servers are stopped by their PIDs when the module ends, also when a test failed.

PostgreSQL is installed by `make test` (Debian's `postgresql` package); this test installs nothing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.tracking.store import TrackingStoreError, check_tracking_store
from tests.tiny_project import copy_project, dvc, edit_params, ran_stages

# They read or copy the session's one tiny dvc repro (tests/conftest.py): under `pytest -n` they share a worker,
# so the run is made once.
pytestmark = pytest.mark.xdist_group("tiny_run")


PASSWORD = "team-secret"
EXPERIMENT = "e2e-server"
MODEL = "e2e-server-model"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _postgres_bin() -> Path:
    """The folder of initdb and pg_ctl: Debian keeps them off PATH, in /usr/lib/postgresql/<version>/bin."""
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda path: int(path.parts[-3]))
    found = installed[-1] if installed else shutil.which("pg_ctl")
    if found is None:
        pytest.fail(
            "PostgreSQL is not installed (no pg_ctl in /usr/lib/postgresql/*/bin or on PATH): run `make test`, "
            "which installs Debian's postgresql package, or apt-get install postgresql"
        )
    return Path(found).parent


def _cluster_owner() -> str | None:
    """Who runs PostgreSQL: initdb refuses root, so as root the cluster belongs to `postgres` (or `nobody`)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    pytest.fail("running as root, and neither a `postgres` nor a `nobody` user exists to own the PostgreSQL cluster")


def _run_as(owner: str | None, command: list[str], cwd: Path, log: Path | None = None) -> None:
    # subprocess switches user itself (setuid/setgid, no extra groups): no sudo or runuser needed.
    identity = {} if owner is None else {"user": owner, "group": pwd.getpwnam(owner).pw_gid, "extra_groups": []}
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False, **identity)
    if result.returncode != 0:
        server_log = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
        pytest.fail(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}{server_log}")


def _stop_postmaster(data: Path) -> None:
    """PostgreSQL's fast shutdown (SIGINT to the postmaster's PID); it removes postmaster.pid when done."""
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
    deadline = time.monotonic() + 30
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


@contextlib.contextmanager
def _postgres_cluster(base: Path) -> Iterator[str]:
    """A cluster in `base`/data on a free port of 127.0.0.1 with a database `mlflow`; yields its URI."""
    import psycopg

    bin_dir = _postgres_bin()
    owner = _cluster_owner()
    (base / "password").write_text(PASSWORD)
    if owner is not None:
        account = pwd.getpwnam(owner)
        for path in (base, base / "password"):
            os.chown(path, account.pw_uid, account.pw_gid)
    data = base / "data"
    _run_as(
        owner,
        [str(bin_dir / "initdb"), "-D", str(data), "-U", "mlflow", "--pwfile", str(base / "password"),
         "--auth", "scram-sha-256", "-E", "UTF8", "--locale", "C", "--no-sync"],
        base,
    )  # fmt: skip
    port = _free_port()
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    try:
        _run_as(
            owner,
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "postgres.log"), "-o", options, "-w", "start"],
            base,
            log=base / "postgres.log",
        )
        connection = psycopg.connect(host="127.0.0.1", port=port, user="mlflow", password=PASSWORD, dbname="postgres")
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE mlflow")
        connection.close()
        yield f"postgresql://mlflow:{PASSWORD}@127.0.0.1:{port}/mlflow"
    finally:
        _stop_postmaster(data)


def _stop_group(server: subprocess.Popen[bytes]) -> None:
    """Stops `mlflow server` and its workers, which share its process group (its PID)."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):  # the group is already gone
            os.killpg(server.pid, sig)
        try:
            server.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def _mlflow_server(backend_uri: str, artifacts: Path, log_path: Path) -> Iterator[str]:
    """`mlflow server` on a free port of 127.0.0.1, once it answers /health; yields its URI."""
    port = _free_port()
    environment = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # one process instead of ~14, starts in seconds
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=log_path.parent, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        uri = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.read() == b"OK":
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log_text = log_path.read_text(errors="replace")[-4000:]
                pytest.fail(f"mlflow server did not come up (exit code {server.poll()}):\n{log_text}")
            time.sleep(0.25)
        yield uri
    finally:
        _stop_group(server)


@dataclass(frozen=True)
class Servers:
    tracking_uri: str
    backend_uri: str
    artifacts: Path
    project: Path


@pytest.fixture(scope="module")
def servers(shared_tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    # Under /tmp, not pytest's tmp_path: that is private to the user running pytest (mode 700).
    base = Path(tempfile.mkdtemp(prefix="mlflow-postgres-"))
    artifacts = base / "artifacts"
    try:
        with (
            _postgres_cluster(base) as backend_uri,
            _mlflow_server(backend_uri, artifacts, base / "mlflow-server.log") as tracking_uri,
        ):
            project = copy_project(shared_tiny_run, tmp_path_factory.mktemp("served") / "project")
            # The server is the store now: without the copy's local one, a stage that wrote there would show.
            (project / "mlflow.db").unlink()
            shutil.rmtree(project / "mlartifacts")
            edit_params(project, "train", "frozen_epochs", 1)  # one epoch: the server is under test
            edit_params(project, "train", "unfreeze", [])
            edit_params(project, "tracking", "experiment", EXPERIMENT)
            edit_params(project, "tracking", "registered_model", MODEL)
            # One epoch on 40 test images beats the majority class, but not beyond chance (McNemar): the margin's
            # rule alone makes it champion, so the registry's path through the server is exercised.
            edit_params(project, "tracking", "champion_alpha", None)
            result = dvc(project, "repro", tracking_uri=tracking_uri)
            assert result.returncode == 0, result.stdout + result.stderr
            # prepare never opens the tracking store (no pipeline/tracking in its deps): its outputs are the shared
            # run's. lr_find reruns because the unfreezing changed (it computes the activations train needs, at the
            # plan's deepest cut), and does not open the store either. Every stage that does ran against the server.
            assert ran_stages(result) == ["validate", "lr_find", "train", "evaluate", "register"], result.stdout
            yield Servers(tracking_uri, backend_uri, artifacts, project)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_run_and_the_champion_are_read_back_from_the_server(servers: Servers) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(servers.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    # The server chose where artifacts go: a folder on the training machine would be no use to a team.
    assert experiment.artifact_location == f"mlflow-artifacts:/{experiment.experiment_id}"
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["backbone.image_size"] == "32"
    assert run.data.params["train.frozen_epochs"] == "1"
    assert run.data.tags["phases"] == "frozen"
    assert [point.step for point in client.get_metric_history(run.info.run_id, "loss")] == [0]
    assert set(run.data.metrics) >= {"test_accuracy", "test_macro_f1", "base_learning_rate"}
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert str(champion.version) == "1"
    assert champion.run_id == run.info.run_id
    assert champion.tags["test_accuracy"] == str(run.data.metrics["test_accuracy"])
    training = {item.path for item in client.list_artifacts(run.info.run_id, "training")}
    assert "training/history.csv" in training


def test_the_server_keeps_runs_in_postgresql_and_artifacts_in_its_destination(servers: Servers) -> None:
    import psycopg

    with psycopg.connect(servers.backend_uri) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT status FROM runs")
        statuses = cursor.fetchall()
        cursor.execute("SELECT name FROM registered_models")
        models = cursor.fetchall()
    connection.close()
    assert statuses == [("FINISHED",)]
    assert models == [(MODEL,)]
    assert list(servers.artifacts.rglob("history.csv"))
    assert list(servers.artifacts.rglob("MLmodel"))
    assert not (servers.project / "mlartifacts").exists()
    assert not (servers.project / "mlflow.db").exists()


def test_a_wrong_database_password_is_reported_before_anything_runs(servers: Servers) -> None:
    port = urllib.parse.urlsplit(servers.backend_uri).port
    wrong = servers.backend_uri.replace(PASSWORD, "not-the-password")
    with pytest.raises(TrackingStoreError) as caught:
        check_tracking_store(wrong, origin="MLFLOW_TRACKING_URI")
    assert str(caught.value) == (
        f"tracking store postgresql://mlflow:***@127.0.0.1:{port}/mlflow (from MLFLOW_TRACKING_URI) cannot be used: "
        f'connection failed: connection to server at "127.0.0.1", port {port} failed: '
        'FATAL:  password authentication failed for user "mlflow"'
    )
    assert check_tracking_store(servers.tracking_uri, origin="test", experiment=EXPERIMENT) == "MLflow server answered"
