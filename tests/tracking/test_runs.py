"""pipeline/tracking/runs.py: the tracked run's logging (fluent calls, datasets, system metrics) and its
reference file."""

from __future__ import annotations

import os
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking import lifecycle, models, runs
from tests.tracking.conftest import open_run, tiny_model


def test_a_run_stays_running_while_fluent_calls_borrow_it(store: str, tmp_path: Path) -> None:
    client = MlflowClient(store)
    with open_run(store, tmp_path) as run:
        row = {"path": "a.png", "label": 0, "split": "train"}
        run.log_dataset(rows=[row], name="d", source="/d", context="training")
        assert client.get_run(run.run_id).info.status == "RUNNING"
        models.log_keras_model(run, tiny_model(), name="model", pip_requirements=["keras"], class_names=["a", "b", "c"])
        assert client.get_run(run.run_id).info.status == "RUNNING"
        assert client.get_run(run.run_id).data.tags[lifecycle.PID_TAG] == str(os.getpid())
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_run_reference_round_trip(tmp_path: Path) -> None:
    reference = runs.RunReference(run_id="abc", experiment_id="1", tracking_uri="sqlite:///x.db")
    reference.write(tmp_path / "build" / "run.json")
    assert runs.RunReference.read(tmp_path / "build" / "run.json") == reference


class _FakeGpuMonitor:
    """MLflow's GPU monitor as far as narrowing sees it: metrics named by the handle's position in its list."""

    def __init__(self, count: int) -> None:
        self.gpu_handles = [f"handle-{index}" for index in range(count)]
        self.num_gpus = count

    def aggregate_metrics(self) -> dict[str, float]:
        return {
            **{f"gpu_{position}_utilization_percentage": float(handle[-1]) for position, handle in
               enumerate(self.gpu_handles)},
            "gpu_count_note": 1.0,
        }


def test_gpu_sampling_is_narrowed_to_the_selected_gpus() -> None:
    cpu_monitor, gpu_monitor = object(), _FakeGpuMonitor(4)
    monitors = [cpu_monitor, gpu_monitor]
    runs.narrow_gpu_monitors(monitors, gpu_indices=[3, 1], gpu_monitor_type=_FakeGpuMonitor)
    assert monitors == [cpu_monitor, gpu_monitor]
    assert (gpu_monitor.gpu_handles, gpu_monitor.num_gpus) == (["handle-3", "handle-1"], 2)
    # Named by the physical index (nvidia-smi's), not by the position among the GPUs kept.
    assert gpu_monitor.aggregate_metrics() == {
        "gpu_3_utilization_percentage": 3.0,
        "gpu_1_utilization_percentage": 1.0,
        "gpu_count_note": 1.0,
    }
    runs.narrow_gpu_monitors(monitors, gpu_indices=[], gpu_monitor_type=_FakeGpuMonitor)
    assert monitors == [cpu_monitor]


def test_system_metrics_are_sampled_on_the_run(store: str, tmp_path: Path) -> None:
    import psutil

    client = MlflowClient(store)
    with open_run(store, tmp_path) as run, run.system_metrics(sampling_interval=0.2):
        # Until two samples are logged (4 in a second on an idle machine; a loaded one, running the suite on
        # every core, took more than a second for the second), with a deadline that only a hang reaches.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if len(client.get_metric_history(run.run_id, "system/cpu_utilization_percentage")) >= 2:
                break
    metrics = client.get_run(run.run_id).data.metrics
    # CPU, memory, disk and network; no GPU metric on any machine, since the run selected no GPU.
    assert sorted(metrics) == [
        "system/cpu_utilization_percentage",
        "system/disk_available_megabytes",
        "system/disk_usage_megabytes",
        "system/disk_usage_percentage",
        "system/network_receive_megabytes",
        "system/network_transmit_megabytes",
        "system/system_memory_usage_megabytes",
        "system/system_memory_usage_percentage",
    ]
    # Sampled every 0.2 s, on one step axis from 0.
    steps = [metric.step for metric in client.get_metric_history(run.run_id, "system/cpu_utilization_percentage")]
    assert len(steps) >= 2
    assert steps == list(range(len(steps)))
    assert 0.0 <= metrics["system/cpu_utilization_percentage"] <= 100.0
    # The machine's memory in use: at most all of it, and the two memory metrics describe the same sample.
    total_megabytes = psutil.virtual_memory().total / 1e6
    used_megabytes = metrics["system/system_memory_usage_megabytes"]
    assert 0.0 < used_megabytes <= total_megabytes
    # Each is rounded to 0.1: the percentage to 0.05 of its value, the megabytes to 0.05 MB.
    assert metrics["system/system_memory_usage_percentage"] == pytest.approx(
        used_megabytes / total_megabytes * 100, abs=0.06
    )


@pytest.mark.parametrize(("relative", "name"), [("my-photos", "my-photos"), ("labels/flowers.csv", "flowers.csv")])
def test_dataset_of_a_folder_or_csv_is_named_after_it(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: str, name: str
) -> None:
    import pandas

    from pipeline.data.sources import dataset_identity

    monkeypatch.chdir(tmp_path)
    rows = [
        {"part": "cache", "index": 0, "label": 1, "split": "train"},
        {"part": "cache", "index": 1, "label": 0, "split": "val"},
    ]
    identity = dataset_identity(relative)
    with open_run(store, tmp_path) as run:
        run.log_dataset(rows=rows, name=identity.name, source=identity.source, context="training")

    (logged,) = MlflowClient(store).get_run(run.run_id).inputs.dataset_inputs
    assert logged.dataset.name == name
    assert logged.dataset.source_type == "local"
    assert logged.dataset.source == f'{{"uri": "{(tmp_path / relative).resolve()}"}}'
    assert logged.dataset.digest == mlflow.data.from_pandas(pandas.DataFrame(rows)).digest
    assert [(tag.key, tag.value) for tag in logged.tags] == [("mlflow.data.context", "training")]
