"""MLflow: the run of a pipeline execution, its params, metrics, artifacts, model and registry entry.

Why: this is the only module that imports mlflow, so the rest of the pipeline can be tested without a
tracking store, and MLflow's quirks on this stack are handled in one place:
- MLflow's TensorFlow autologging crashes `fit` on this stack, and MLflow's Keras callback restarts its step at 0
  on every `fit`, so phases would overwrite each other: `EpochLogger` (pipeline/epoch_logger.py) logs the
  global epoch instead. It lives apart so that this module imports neither Keras nor TensorFlow: the
  console commands that only query runs (`tl-compare`) start in seconds, without TensorFlow's start-up.
- `log_model(..., input_example=...)` fails on Keras 3 (upstream #16183): the signature is built
  from shapes instead, and pip requirements are given, since inferring them costs seconds. The model's
  class names travel in its metadata, so the gate can tell whether a champion answers the same question.
- The registry's champion is looked up by the alias of the registered model, and only "no such
  model" or "no such alias" means "no champion": any other error (a server down) is raised, so that
  it is never mistaken for an empty registry, which a model would enter unopposed.
- A run's status tells the truth: RUNNING while a stage works on it (a fluent-API call borrows the
  run and `mlflow.end_run()` would mark it FINISHED, so `_active` puts RUNNING back); FAILED on an
  exception, with its one-line reason in tag `pipeline.error`; KILLED on Ctrl-C or SIGTERM (which
  `dvc` sends when interrupted); and a run whose process died without a word (SIGKILL, out of memory)
  is closed as KILLED by the next run of the same experiment (`close_orphaned_runs`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

if TYPE_CHECKING:
    import keras

    from pipeline.gate import GateDecision

CHAMPION_ALIAS = "champion"
# Key of the class names in a logged model's metadata (MLmodel's `metadata`).
CLASS_NAMES_KEY = "class_names"
# MLflow's log_batch limits: at most 1000 metrics or 100 params or 100 tags per call.
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000


@dataclass(frozen=True)
class RunReference:
    """What later stages need to reopen the run: written by train, read by evaluate and register."""

    run_id: str
    experiment_id: str
    tracking_uri: str

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.__dict__, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> RunReference:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


class TrackedRun:
    """One open MLflow run; use `tracked_run` to get one."""

    def __init__(self, run_id: str, client: MlflowClient) -> None:
        self.run_id = run_id
        self.client = client

    def log_params(self, params: dict[str, str]) -> None:
        """Logs parameters in batches (one call per 100 instead of one per parameter)."""
        items = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + _PARAMS_PER_BATCH])

    def set_tags(self, tags: dict[str, str]) -> None:
        """Sets run tags."""
        items = [RunTag(key, str(value)) for key, value in tags.items()]
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=items[start : start + _PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], *, step: int = 0) -> None:
        """Logs numeric metrics at one step in a single call."""
        timestamp = _now_ms()
        items = [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        for start in range(0, len(items), _METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=items[start : start + _METRICS_PER_BATCH])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Copies a file into the run's artifacts."""
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Stores `text` as the artifact `artifact_file` (e.g. `model/summary.txt`)."""
        self.client.log_text(self.run_id, text, artifact_file)

    @contextlib.contextmanager
    def system_metrics(self, *, gpu_indices: Sequence[int] = (), sampling_interval: float = 10.0) -> Iterator[None]:
        """Samples CPU, memory, disk and network (and the selected GPUs) into `system/*` metrics meanwhile.

        Why MLflow's monitor and not our own: it is the one whose metrics the MLflow UI charts on the
        run's "System metrics" tab. Its GPU part (present when `pynvml` finds NVIDIA GPUs) watches every
        GPU of the machine; it is narrowed to the GPUs this run selected.

        Args:
            gpu_indices: Physical indices of the GPUs the run uses; GPUs are not sampled when empty.
            sampling_interval: Seconds between samples; 0 samples nothing.
        """
        if sampling_interval <= 0:
            yield
            return
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # Its start, stop and "no GPU" notices are INFO lines on every stage; the metrics say it all.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=sampling_interval)
        narrow_gpu_monitors(monitor.monitors, gpu_indices=gpu_indices, gpu_monitor_type=GPUMonitor)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def log_dataset(self, *, rows: list[dict[str, Any]], name: str, source: str, context: str) -> None:
        """Records the data a run used (shown in the UI's Datasets column), digest included."""
        import pandas

        # MLflow warns that a local path matches its local-artifact source twice (the same class
        # registered twice) and that integer columns cannot hold NaN; neither applies to a manifest.
        with warnings.catch_warnings(), _active(self.run_id):
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(pandas.DataFrame(rows), source=source, name=name)
            mlflow.log_input(dataset, context=context)

    def epoch_logger(self) -> keras.callbacks.Callback:
        """A Keras callback logging each epoch's logs at the global epoch (see `EpochLogger`)."""
        from pipeline.epoch_logger import EpochLogger

        return EpochLogger(self)

    def log_keras_model(
        self,
        model: keras.Model,
        *,
        name: str,
        pip_requirements: list[str],
        class_names: Sequence[str],
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Logs a Keras model with a tensor signature built from its shapes and its class names as metadata.

        The logged model loads through `mlflow.pyfunc` (its `predict` takes a float32 array of 0..255
        pixels and returns class probabilities) and serves with `mlflow models serve`.

        Args:
            model: Model with one image input and one probability output.
            name: Artifact name of the model in the run.
            pip_requirements: What the model needs to load.
            class_names: Label index -> class name, one per output.
            metadata: More JSON-friendly facts for the model's MLmodel file (the model card: class names,
                stored image shape), read back by `load_logged_model`.

        Returns:
            The model URI (`runs:/<id>/<name>`).

        Raises:
            ValueError: The number of class names is not the model's number of outputs.
        """
        if len(class_names) != model.output_shape[-1]:
            raise ValueError(f"{len(class_names)} class names for a model with {model.output_shape[-1]} outputs")
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype("float32"), (-1, *model.input_shape[1:]), "pixels")]),
            outputs=Schema([TensorSpec(np.dtype("float32"), (-1, *model.output_shape[1:]), "probabilities")]),
        )
        with _active(self.run_id):
            info = mlflow.tensorflow.log_model(
                model,
                name=name,
                signature=signature,
                pip_requirements=pip_requirements,
                metadata={CLASS_NAMES_KEY: list(class_names), **(metadata or {})},
            )
        return info.model_uri


def narrow_gpu_monitors(monitors: list[Any], *, gpu_indices: Sequence[int], gpu_monitor_type: type) -> None:
    """Keeps only the selected GPUs in MLflow's GPU monitor, or drops it when none is selected.

    Why: MLflow samples every GPU of the machine; a run on GPU 1 of a shared 8-GPU box would chart the
    other users' GPUs too. `gpu_handles` is the monitor's list of NVML handles, by physical index.

    Args:
        monitors: The `SystemMetricsMonitor.monitors` list, changed in place.
        gpu_indices: Physical indices of the GPUs to keep.
        gpu_monitor_type: MLflow's GPU monitor class.
    """
    for monitor in list(monitors):
        if not isinstance(monitor, gpu_monitor_type):
            continue
        if not gpu_indices:
            monitors.remove(monitor)
            continue
        monitor.gpu_handles = [monitor.gpu_handles[index] for index in gpu_indices if index < len(monitor.gpu_handles)]
        monitor.num_gpus = len(monitor.gpu_handles)


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextlib.contextmanager
def _active(run_id: str) -> Iterator[None]:
    """Makes `run_id` the active run for fluent-API calls, and leaves it RUNNING afterwards.

    Why the status is put back: `mlflow.end_run()` is the only public way to release the fluent run,
    and it marks the run FINISHED while the stage is still working on it.
    """
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    mlflow.start_run(run_id=run_id)
    try:
        yield
    finally:
        mlflow.end_run()
        MlflowClient().update_run(run_id, status="RUNNING")


def _experiment_id(client: MlflowClient, name: str, artifact_dir: Path, tracking_uri: str) -> str:
    """The experiment's id; a new one keeps artifacts in `artifact_dir`, or where a tracking server says.

    Why a server decides: a folder on this machine would be unreadable to the rest of the team, while
    a server started with `--artifacts-destination` proxies artifacts to where it keeps them.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if tracking_uri.lower().startswith(("http://", "https://")):
        return client.create_experiment(name)
    return client.create_experiment(name, artifact_location=artifact_dir.resolve().as_uri())


class _TerminatedError(Exception):
    """Raised from the SIGTERM handler so that the run ends KILLED and outputs stay untouched."""


# Tags of the process working on a run, so that the next run can tell a run whose process died.
PID_TAG = "pipeline.pid"
HOST_TAG = "pipeline.host"
ERROR_TAG = "pipeline.error"
END_REASON_TAG = "pipeline.end_reason"
_TAG_VALUE_LIMIT = 5000


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


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
        if tags.get(HOST_TAG) != host or pid is None or not pid.isdigit() or _process_alive(int(pid)):
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

    Before opening, runs of the experiment left RUNNING by a process that died are closed as KILLED.

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
    """
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    if resume is not None:
        run_id = resume.run_id
        experiment_id = resume.experiment_id
    elif experiment is not None:
        experiment_id = _experiment_id(client, experiment, artifact_dir or Path("mlartifacts"), tracking_uri)
    else:
        raise ValueError("tracked_run needs an experiment for a new run or a run to resume")
    close_orphaned_runs(client, experiment_id)
    if resume is None:
        run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
    else:
        client.update_run(run_id, status="RUNNING")
    client.log_batch(run_id, tags=[RunTag(PID_TAG, str(os.getpid())), RunTag(HOST_TAG, socket.gethostname())])

    def on_sigterm(signum: int, frame: object) -> None:
        raise _TerminatedError(f"terminated by signal {signum}")

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield TrackedRun(run_id, client)
    except (KeyboardInterrupt, _TerminatedError) as error:
        reason = "interrupted (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else str(error)
        client.set_tag(run_id, END_REASON_TAG, reason)
        client.set_terminated(run_id, status="KILLED")
        raise
    except BaseException as error:
        client.set_tag(run_id, ERROR_TAG, _one_line(error))
        client.set_terminated(run_id, status="FAILED")
        raise
    else:
        client.set_terminated(run_id, status="FINISHED")
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def run_reference(run: TrackedRun, tracking_uri: str) -> RunReference:
    """The reference a later stage needs to reopen `run`."""
    info = run.client.get_run(run.run_id).info
    return RunReference(run_id=run.run_id, experiment_id=info.experiment_id, tracking_uri=tracking_uri)


def champion_version(run: TrackedRun, name: str) -> str | None:
    """The version `@champion` of the registered model `name` points at.

    Args:
        run: An open run (its client reaches the registry).
        name: Registered model name.

    Returns:
        The version, or None when the registered model or its `champion` alias does not exist.

    Raises:
        MlflowException: Any other registry error (e.g. the server cannot be reached).
    """
    try:
        registered = run.client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = registered.aliases.get(CHAMPION_ALIAS)
    return None if version is None else str(version)


def load_model_version(run: TrackedRun, name: str, version: str) -> tuple[keras.Model, tuple[str, ...] | None]:
    """Loads a registered model version as Keras, with the class names it was logged with.

    Args:
        run: An open run (it set the tracking URI the registry lives under).
        name: Registered model name.
        version: Version number.

    Returns:
        The model and its class names, or None for the names when it was logged without them.
    """
    uri = f"models:/{name}/{version}"
    class_names = (mlflow.models.get_model_info(uri).metadata or {}).get(CLASS_NAMES_KEY)
    model = load_keras_model(uri)
    return model, None if class_names is None else tuple(str(item) for item in class_names)


# Keras' refusal of a TFSMLayer in safe mode; a Lambda layer's refusal reads differently and stays refused.
_SAVED_MODEL_LAYER_REFUSAL = "Requested the deserialization of a `TFSMLayer`"


def load_keras_model(uri: str) -> keras.Model:
    """Loads a logged Keras model, lifting Keras' safe mode only for a model on a TF Hub or SavedModel backbone.

    Why: such a model holds a `TFSMLayer` (the SavedModel's path, see `pipeline.export`), which Keras
    refuses in safe mode although it runs no Python code from the file; a Lambda layer, which would run
    code, is still refused.

    Args:
        uri: `models:/...`, `runs:/...` or any model URI MLflow resolves.

    Returns:
        The uncompiled Keras model.
    """
    try:
        return mlflow.tensorflow.load_model(uri, keras_model_kwargs={"compile": False})
    except ValueError as error:
        if _SAVED_MODEL_LAYER_REFUSAL not in str(error):
            raise
    return mlflow.tensorflow.load_model(uri, keras_model_kwargs={"compile": False, "safe_mode": False})


@dataclass(frozen=True)
class Registration:
    """Outcome of registering a model version: the version, whether it is champion now, and the gate's decision."""

    name: str
    version: str
    is_champion: bool
    champion_version: str | None
    decision: GateDecision


def register_model(run: TrackedRun, *, model_uri: str, name: str, decision: GateDecision) -> Registration:
    """Adds a version to the registered model, tags it with the gate's decision, and moves `@champion` if it says so.

    Why the decision is made elsewhere (`pipeline.gate.decide`): it rests on the champion scored on
    the challenger's own test split, which the evaluate stage measured; here it is only recorded,
    on the version (both numbers, the baseline's, the margin and the reason) and on the run.

    Args:
        run: The run that logged the model.
        model_uri: The logged model's URI.
        name: Registered model name.
        decision: The gate's decision for this model.

    Returns:
        The new version, whether it is champion, the champion's version after this (None when the
        registry has none), and the decision.
    """
    version = str(mlflow.register_model(model_uri, name).version)
    tags = {"run_id": run.run_id, f"test_{decision.metric}": str(decision.challenger), **decision.tags()}
    for key, value in tags.items():
        run.client.set_model_version_tag(name, version, key, value)
    run.set_tags({"gate.decision": tags["gate.decision"], "gate.reason": decision.reason})
    if decision.promote:
        run.client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return Registration(
        name=name,
        version=version,
        is_champion=decision.promote,
        champion_version=version if decision.promote else champion_version(run, name),
        decision=decision,
    )


# Queries of the console commands (`pipeline.cli`): runs of an experiment, and logged models.


class TrackingLookupError(LookupError):
    """Raised when an experiment, run, model or artifact asked for is not in the tracking store."""


@dataclass(frozen=True)
class RunSummary:
    """One run as the `compare` command shows it, free of MLflow types.

    Attributes:
        run_id: The full run id.
        name: The run name.
        status: RUNNING, FINISHED, FAILED, KILLED or SCHEDULED.
        start_ms: Start time, milliseconds since the epoch.
        end_ms: End time in milliseconds, None while the run has not ended.
        params: Every logged parameter (flattened keys such as `train.base_learning_rate`).
        metrics: The latest value of every metric (the last epoch's `val_accuracy`).
    """

    run_id: str
    name: str
    status: str
    start_ms: int
    end_ms: int | None
    params: dict[str, str]
    metrics: dict[str, float]


def experiment_runs(tracking_uri: str, experiment: str) -> list[RunSummary]:
    """Every active (not deleted) run of an experiment, newest first.

    Args:
        tracking_uri: The tracking store.
        experiment: The experiment's name.

    Returns:
        The runs, each with its params and latest metrics.

    Raises:
        TrackingLookupError: No experiment of that name; the message lists those that exist.
    """
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(item.name for item in client.search_experiments())
        raise TrackingLookupError(
            f"no experiment {experiment!r} in {tracking_uri}; experiments there: {', '.join(names) or 'none'}"
        )
    runs, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return [
        RunSummary(
            run_id=run.info.run_id,
            name=run.info.run_name or "",
            status=run.info.status,
            start_ms=int(run.info.start_time),
            end_ms=int(run.info.end_time) if run.info.end_time else None,
            params=dict(run.data.params),
            metrics={key: float(value) for key, value in run.data.metrics.items()},
        )
        for run in runs
    ]


@dataclass(frozen=True)
class LoggedModel:
    """A model loaded from the tracking store, with what MLflow knows about it.

    Attributes:
        model: The Keras model.
        uri: The URI it was loaded from.
        run_id: The run that logged it.
        version: The registered version, for a `models:/` URI.
        metadata: The metadata logged with it ({} when none).
    """

    model: keras.Model
    uri: str
    run_id: str | None
    version: str | None
    metadata: dict[str, Any]


def load_logged_model(uri: str, *, tracking_uri: str) -> LoggedModel:
    """Loads a Keras model logged in MLflow: `models:/NAME@ALIAS`, `models:/NAME/VERSION` or `runs:/ID/PATH`.

    Args:
        uri: The model URI.
        tracking_uri: The tracking store (and registry) to resolve it in.

    Returns:
        The model with its run, registered version and metadata.

    Raises:
        TrackingLookupError: The model, alias, version or run does not exist.
    """
    mlflow.set_tracking_uri(tracking_uri)
    try:
        info = mlflow.models.get_model_info(uri)
        version = _registered_version(MlflowClient(tracking_uri), uri)
        model = load_keras_model(uri)
    except (mlflow.exceptions.MlflowException, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrackingLookupError(f"cannot load {uri} from {tracking_uri}: {reason}") from None
    return LoggedModel(model=model, uri=uri, run_id=info.run_id, version=version, metadata=dict(info.metadata or {}))


def _registered_version(client: MlflowClient, uri: str) -> str | None:
    if not uri.startswith("models:/"):
        return None
    reference = uri.removeprefix("models:/").rstrip("/")
    if "@" in reference:
        name, alias = reference.rsplit("@", 1)
        return str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = reference.rpartition("/")
    return version if name and version.isdigit() else None


def run_artifact_json(tracking_uri: str, run_id: str, path: str) -> Any | None:
    """Reads a JSON artifact of a run; None when the run has no such artifact.

    Args:
        tracking_uri: The tracking store.
        run_id: The run.
        path: The artifact's path in the run (`evaluation/classification_report.json`).

    Returns:
        The parsed JSON, or None.
    """
    mlflow.set_tracking_uri(tracking_uri)
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/{path}")
    except (mlflow.exceptions.MlflowException, OSError):
        return None
    return json.loads(text)
