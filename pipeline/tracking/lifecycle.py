"""Opening and ending runs so that a run's status tells the truth.

Why: RUNNING while a stage works on it; FAILED on an exception, with its one-line reason in tag
`pipeline.error`; KILLED on Ctrl-C or SIGTERM (which `dvc` sends when interrupted). A process killed
with SIGKILL or by the out-of-memory killer cannot end its own run: the run shows RUNNING until the
next run of the same experiment on this host finds its process gone and closes it as KILLED
(`close_orphaned_runs`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.runtime.processes import process_alive
from pipeline.tracking import store as tracking_store
from pipeline.tracking.runs import RunReference, TrackedRun, TrackingLookupError, is_unavailable

# The experiment tag MLflow's UI (3.x) reads to choose an experiment's page, and the value of the page with the
# runs table, metrics and model versions. Without it the UI guesses, and for an experiment without traces it
# may open the GenAI overview (traces, latency, token usage: all empty for a training pipeline).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT_KIND = "custom_model_development"


def _experiment_id(client: MlflowClient, name: str, artifact_dir: Path, tracking_uri: str) -> str:
    """The experiment's id; a new one keeps artifacts in `artifact_dir`, or where a tracking server says.

    Why a server decides: a folder on this machine would be unreadable to the rest of the team, while
    a server started with `--artifacts-destination` proxies artifacts to where it keeps them.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    kind = {EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT_KIND}
    try:
        if tracking_uri.lower().startswith(("http://", "https://")):
            return client.create_experiment(name, tags=kind)
        return client.create_experiment(name, artifact_location=artifact_dir.resolve().as_uri(), tags=kind)
    except MlflowException as error:
        # Another pipeline created it since the lookup (queued experiments starting together on a new store).
        if error.error_code != "RESOURCE_ALREADY_EXISTS" or (experiment := client.get_experiment_by_name(name)) is None:
            raise
        return experiment.experiment_id


def open_client(tracking_uri: str) -> MlflowClient:
    """A client of the store at `tracking_uri`; a new SQLite store gets its tables from one process at a time.

    Why: MLflow creates the tables of a new SQLite database (all of its schema migrations) in the first
    process that opens it, without a lock. Two stages that open a new store at the same moment (queued DVC
    experiments run by `dvc queue start -j 2`) both migrate it, and one fails ("table ... already exists",
    "duplicate column name"). Opening the store under an exclusive lock on the database's folder lets one
    process create the tables while the others wait, then find them. The folder, not a file, is locked so
    that nothing is left beside the database; where the filesystem cannot lock it, the store opens unlocked.

    Args:
        tracking_uri: The resolved tracking URI.

    Returns:
        The client.
    """
    database = tracking_store.sqlite_database(tracking_uri)
    if database is None:
        return MlflowClient(tracking_uri)
    database.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(database.parent):
        return MlflowClient(tracking_uri)  # opens the store, creating the tables of a new one


@contextlib.contextmanager
def _exclusive_lock(folder: Path) -> Iterator[None]:
    """Holds an exclusive `flock` on `folder` (released when the descriptor closes, or the process dies)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # NFS and some others do not lock folders: no lock then
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def mark_training_experiment(client: MlflowClient, experiment_id: str) -> None:
    """Tags the experiment as model training, so that MLflow's UI opens it on the runs table.

    Why on every use, not only at creation: experiments made before this tag existed, or tagged by the UI's
    own guess (`genai_development_inferred`, ...), would keep opening on the GenAI overview.

    Args:
        client: The tracking client.
        experiment_id: The experiment.
    """
    if client.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG) != TRAINING_EXPERIMENT_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND)


class _TerminatedError(Exception):
    """Raised from the SIGTERM handler so that the run ends KILLED and outputs stay untouched."""


# Tags of the process working on a run, so that the next run can tell a run whose process died.
PID_TAG = "pipeline.pid"
HOST_TAG = "pipeline.host"
ERROR_TAG = "pipeline.error"
END_REASON_TAG = "pipeline.end_reason"
_TAG_VALUE_LIMIT = 5000


def close_orphaned_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Ends as KILLED the RUNNING runs of this host whose process is gone.

    Why: a process killed by SIGKILL or the out-of-memory killer cannot end its own run, which would
    show RUNNING forever (or FINISHED, holding half a history, before this module kept status honest).

    Args:
        client: The tracking client.
        experiment_id: Experiment to sweep.

    Returns:
        The ids of the runs closed.
    """
    host = socket.gethostname()
    closed = []
    for orphan in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = orphan.data.tags
        pid = tags.get(PID_TAG)
        if tags.get(HOST_TAG) != host or pid is None or not pid.isdigit() or process_alive(int(pid)):
            continue
        client.set_tag(
            orphan.info.run_id,
            END_REASON_TAG,
            f"process {pid} on {host} died without ending the run (SIGKILL or out of memory); "
            "closed by the next pipeline run",
        )
        client.set_terminated(orphan.info.run_id, status="KILLED")
        closed.append(orphan.info.run_id)
    return closed


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    reason = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    return reason[:_TAG_VALUE_LIMIT]


@contextlib.contextmanager
def tracked_run(
    *,
    tracking_uri: str,
    experiment: str | None = None,
    artifact_dir: Path | None = None,
    run_name: str | None = None,
    resume: RunReference | None = None,
) -> Iterator[TrackedRun]:
    """Opens a new run, or reopens one, and ends it FINISHED; FAILED on an error, KILLED when interrupted.

    Before opening, runs of the experiment left RUNNING by a process that died are closed as KILLED, and the
    experiment is tagged as model training (`mark_training_experiment`).

    Args:
        tracking_uri: Where MLflow stores runs (already resolved with `tracking_store.resolve_tracking_uri`).
        experiment: Experiment of a new run; created with its artifacts under `artifact_dir`.
        artifact_dir: Artifact root of a newly created experiment on a local store (a tracking server
            keeps artifacts where it was told to).
        run_name: Name of a new run.
        resume: Reopen this run instead of creating one.

    Yields:
        The open run.

    Raises:
        ValueError: Neither `experiment` nor `resume` is given.
        TrackingLookupError: The run to reopen is not in the store (or deleted).
    """
    mlflow.set_tracking_uri(tracking_uri)
    # A new SQLite store announces its tables at INFO ("Creating initial MLflow database tables..."): a
    # library's lines amid the stage's own, about something the user did not ask about.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    client = open_client(tracking_uri)
    if resume is not None:
        # A store deleted or replaced since train wrote the reference (rm mlflow.db, another tracking.uri) would
        # otherwise surface as MLflow's traceback about a missing experiment id.
        if find_run(tracking_uri, resume.run_id) is None:
            raise TrackingLookupError(
                f"MLflow run {resume.run_id}, which train logged this model to (build/run.json), is not in "
                f"{tracking_uri} (deleted, or another store since); train again: dvc repro -f -s train, then dvc repro"
            )
        run_id = resume.run_id
        experiment_id = resume.experiment_id
    elif experiment is not None:
        experiment_id = _experiment_id(client, experiment, artifact_dir or Path("mlartifacts"), tracking_uri)
    else:
        raise ValueError("tracked_run needs an experiment for a new run or a run to resume")
    mark_training_experiment(client, experiment_id)
    close_orphaned_runs(client, experiment_id)
    if resume is None:
        run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
    else:
        client.update_run(run_id, status="RUNNING")
        # A run reopened after it failed or was killed (a resumed train, a stage run again) is no longer either:
        # the reason of its earlier end would contradict its status.
        earlier = client.get_run(run_id).data.tags
        for tag in (ERROR_TAG, END_REASON_TAG):
            if tag in earlier:
                client.delete_tag(run_id, tag)
    client.log_batch(run_id, tags=[RunTag(PID_TAG, str(os.getpid())), RunTag(HOST_TAG, socket.gethostname())])

    def on_sigterm(signum: int, frame: object) -> None:
        raise _TerminatedError(f"terminated by signal {signum}")

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield TrackedRun(run_id, client)
    except (KeyboardInterrupt, _TerminatedError) as error:
        reason = "interrupted (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else str(error)
        _end(client, run_id, "KILLED", {END_REASON_TAG: reason})
        raise
    except BaseException as error:
        _end(client, run_id, "FAILED", {ERROR_TAG: _one_line(error)})
        raise
    else:
        client.set_terminated(run_id, status="FINISHED")
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def _end(client: MlflowClient, run_id: str, status: str, tags: dict[str, str]) -> None:
    """Ends the run with `status` and its reason, unless the tracking server is the one that is gone.

    Why not raise then: the stage is already failing for a reason its one line says (often that very
    server); a second error while reporting it would bury that line under a traceback. The run stays
    RUNNING, and the next start of the stage resumes it or closes it (`close_orphaned_runs`).
    """
    try:
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        client.set_terminated(run_id, status=status)
    except Exception as error:
        if not is_unavailable(error):
            raise


def find_run(tracking_uri: str, run_id: str) -> RunReference | None:
    """The reference of run `run_id` in the store at `tracking_uri`; None when it is not there (or deleted).

    Why: a checkpoint names the run its epochs went to; a resume continues that run only if the store
    still holds it (the user may have deleted it, or pointed `tracking.uri` elsewhere since).
    """
    try:
        info = open_client(tracking_uri).get_run(run_id).info
    except MlflowException:
        return None
    if info.lifecycle_stage != "active":
        return None
    return RunReference(run_id=run_id, experiment_id=info.experiment_id, tracking_uri=tracking_uri)


def run_reference(run: TrackedRun, tracking_uri: str) -> RunReference:
    """The reference a later stage needs to reopen `run`."""
    info = run.client.get_run(run.run_id).info
    return RunReference(run_id=run.run_id, experiment_id=info.experiment_id, tracking_uri=tracking_uri)
