"""The open MLflow run of a pipeline execution: params, tags, metrics, artifacts, datasets, system metrics.

Why one class: every stage logs through the same few calls, batched to MLflow's limits (one `log_batch`
of 50 metrics costs 0.02 s, 50 `log_metric` calls 0.2 s), and the fluent API that some of MLflow's
calls need (`log_input`, `log_model`) is borrowed for one call at a time without changing the run's
status (`fluent_run`). Opening and ending runs is `pipeline.tracking.lifecycle`'s; models and the
registry are `pipeline.tracking.models` and `pipeline.tracking.registry`; `tl-compare`'s queries are
`pipeline.tracking.queries`. This package is the only one that imports mlflow.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pipeline.errors import OutputWriteError, PipelineError

# MLflow's log_batch limits: at most 1000 metrics or 100 params or 100 tags per call.
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
# MLflow's GPU monitor names its metrics gpu_<position in its list of GPUs>_<what>.
_GPU_METRIC = re.compile(r"gpu_(?P<position>\d+)_(?P<rest>.+)")


class TrackingLookupError(PipelineError, LookupError):
    """Raised when an experiment, run, model or artifact asked for is not in the tracking store."""


class TrackingUnavailableError(PipelineError, ConnectionError):
    """Raised when the tracking server stopped answering and did not come back within the wait allowed."""


# What makes one request to a tracking server give up: MLflow's default (7 retries with a backoff factor of 2,
# 120 s per try) waits minutes on a server that is down. A stage that trains keeps its epochs while the
# server is away (`pipeline.tracking.epoch_logger`), so one request needs to fail quickly rather than block
# training. A value the user set in the environment is kept.
BOUNDED_HTTP_REQUESTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def bound_http_requests(environment: dict[str, str]) -> None:
    """Sets MLflow's HTTP retry and timeout variables to `BOUNDED_HTTP_REQUESTS`, where they are not set."""
    for name, value in BOUNDED_HTTP_REQUESTS.items():
        environment.setdefault(name, value)


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` says the tracking server did not answer (down, restarting, unreachable).

    Why by message: MLflow raises one `MlflowException` type for every failure; a request that never got an
    answer reads "API request to ... failed with exception ...", and a proxy or a restarting server answers 502,
    503 or 504. Anything else (a refused metric, a missing run) is a real error and is not waited out.
    """
    from mlflow.exceptions import MlflowException

    if isinstance(error, ConnectionError | TimeoutError):  # TrackingUnavailableError included
        return True
    if not isinstance(error, MlflowException):
        return False
    text = str(error)
    return "failed with exception" in text or any(f"response code {code}" in text.lower() for code in (502, 503, 504))


@dataclass(frozen=True)
class RunReference:
    """What later stages need to reopen the run: written by train, read by evaluate and register."""

    run_id: str
    experiment_id: str
    tracking_uri: str

    def write(self, path: Path) -> None:
        """Writes the reference atomically: a temporary sibling, fsync, rename (a killed train leaves the old one).

        Why not `pipeline.runtime.atomic`: this adapter imports `pipeline.errors` alone (tests/test_architecture.py).

        Raises:
            OutputWriteError: The file could not be written; the previous one is kept.
        """
        path = Path(path)
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with temporary.open("w", encoding="utf-8") as handle:
                handle.write(json.dumps(self.__dict__, indent=2) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except OSError as error:
            reason = error.strerror or error
            raise OutputWriteError(f"cannot write {path}: {reason}; the previous one is kept") from None
        finally:
            temporary.unlink(missing_ok=True)

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
            self._call(self.client.log_batch, self.run_id, params=items[start : start + _PARAMS_PER_BATCH])

    def set_tags(self, tags: dict[str, str]) -> None:
        """Sets run tags."""
        items = [RunTag(key, str(value)) for key, value in tags.items()]
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            self._call(self.client.log_batch, self.run_id, tags=items[start : start + _PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], *, step: int = 0) -> None:
        """Logs numeric metrics at one step in a single call."""
        timestamp = _now_ms()
        items = [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        for start in range(0, len(items), _METRICS_PER_BATCH):
            self._call(self.client.log_batch, self.run_id, metrics=items[start : start + _METRICS_PER_BATCH])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Copies a file into the run's artifacts."""
        self._call(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Stores `text` as the artifact `artifact_file` (e.g. `model/summary.txt`)."""
        self._call(self.client.log_text, self.run_id, text, artifact_file)

    def _call(self, method: Any, *arguments: Any, **options: Any) -> Any:
        """Calls the client, turning "the server did not answer" into `TrackingUnavailableError` (one line)."""
        try:
            return method(*arguments, **options)
        except Exception as error:
            if not is_unavailable(error):
                raise
            raise TrackingUnavailableError(
                f"the tracking server {self.client.tracking_uri} did not answer ({_first_line(error)}); the run "
                f"{self.run_id} stays RUNNING: rerun once it answers, and train resumes it from its checkpoint"
            ) from None

    def logged_steps(self, key: str) -> set[int]:
        """The steps at which metric `key` was logged to this run (a resumed run's epochs already sent)."""
        return {metric.step for metric in self.client.get_metric_history(self.run_id, key)}

    @contextlib.contextmanager
    def system_metrics(
        self, *, gpu_indices: Sequence[int] = (), sampling_interval: float = 10.0, resume: bool = False
    ) -> Iterator[None]:
        """Samples CPU, memory, disk and network (and the selected GPUs) into `system/*` metrics meanwhile.

        Why MLflow's monitor and not our own: it is the one whose metrics the MLflow UI charts on the
        run's "System metrics" tab. Its GPU part (present when `pynvml` finds NVIDIA GPUs) watches every
        GPU of the machine; it is narrowed to the GPUs this run selected.

        Args:
            gpu_indices: Physical indices of the GPUs the run uses; GPUs are not sampled when empty.
            sampling_interval: Seconds between samples; 0 samples nothing.
            resume: The run was reopened (a resumed train): samples go on after its last `system/*` step
                instead of starting again at step 0, which would log each of those steps twice.
        """
        if sampling_interval <= 0:
            yield
            return
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # Its start, stop and "no GPU" notices are INFO lines on every stage; the metrics say it all. Its warning
        # when a tracking server goes away (it then stops sampling) would repeat what the epoch logger's line says.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=sampling_interval, resume_logging=resume)
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
        with warnings.catch_warnings(), fluent_run(self.run_id):
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(pandas.DataFrame(rows), source=source, name=name)
            mlflow.log_input(dataset, context=context)


def narrow_gpu_monitors(monitors: list[Any], *, gpu_indices: Sequence[int], gpu_monitor_type: type) -> None:
    """Keeps only the selected GPUs in MLflow's GPU monitor, named by their physical index, or drops it for none.

    Why: MLflow samples every GPU of the machine; a run on GPU 1 of a shared 8-GPU box would chart the
    other users' GPUs too. `gpu_handles` is the monitor's list of NVML handles, by physical index. MLflow
    names each metric by the handle's position in that list (`gpu_0_utilization_percentage`), so once it is
    narrowed to GPUs 2 and 5 they would read as GPUs 0 and 1: the aggregated metrics are renamed to the
    physical index, the one nvidia-smi and the `device.gpu_indices` tag show.

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
        kept = [index for index in gpu_indices if index < len(monitor.gpu_handles)]
        monitor.gpu_handles = [monitor.gpu_handles[index] for index in kept]
        monitor.num_gpus = len(monitor.gpu_handles)
        monitor.aggregate_metrics = functools.partial(
            _physically_named, monitor.aggregate_metrics, physical_indices=kept
        )


def _physically_named(aggregate: Callable[[], dict[str, float]], *, physical_indices: list[int]) -> dict[str, float]:
    """MLflow's aggregated GPU metrics with `gpu_<position>_` renamed `gpu_<physical index>_`."""
    renamed = {}
    for name, value in aggregate().items():
        match = _GPU_METRIC.fullmatch(name)
        if match is not None and int(match["position"]) < len(physical_indices):
            name = f"gpu_{physical_indices[int(match['position'])]}_{match['rest']}"
        renamed[name] = value
    return renamed


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextlib.contextmanager
def fluent_run(run_id: str) -> Iterator[None]:
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
