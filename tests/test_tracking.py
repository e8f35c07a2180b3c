"""MLflow tracking: run lifecycle, one epoch axis across fits, params, registry and champion gate."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline import tracking

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _tiny_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="pixels")
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))


def _open(store: str, tmp_path: Path, **kwargs):
    return tracking.tracked_run(tracking_uri=store, experiment="tests", artifact_dir=tmp_path / "artifacts", **kwargs)


def test_successful_run_ends_finished(store: str, tmp_path: Path) -> None:
    with _open(store, tmp_path, run_name="ok") as run:
        run.log_params({f"p{index}": str(index) for index in range(250)})
        run.set_tags({"device.kind": "cpu"})
    finished = MlflowClient(store).get_run(run.run_id)
    assert finished.info.status == "FINISHED"
    assert len(finished.data.params) == 250
    assert finished.data.params["p249"] == "249"
    assert finished.data.tags["device.kind"] == "cpu"
    assert finished.info.run_name == "ok"


def test_failing_run_ends_failed_with_its_reason_and_reraises(store: str, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), _open(store, tmp_path) as run:
        raise RuntimeError("boom\nsecond line of detail")
    failed = MlflowClient(store).get_run(run.run_id)
    assert failed.info.status == "FAILED"
    assert failed.data.tags[tracking.ERROR_TAG] == "RuntimeError: boom"


def test_ctrl_c_ends_the_run_killed(store: str, tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), _open(store, tmp_path) as run:
        raise KeyboardInterrupt
    killed = MlflowClient(store).get_run(run.run_id)
    assert killed.info.status == "KILLED"
    assert killed.data.tags[tracking.END_REASON_TAG] == "interrupted (Ctrl-C)"


def test_a_run_stays_running_while_fluent_calls_borrow_it(store: str, tmp_path: Path) -> None:
    client = MlflowClient(store)
    with _open(store, tmp_path) as run:
        row = {"path": "a.png", "label": 0, "split": "train"}
        run.log_dataset(rows=[row], name="d", source="/d", context="training")
        assert client.get_run(run.run_id).info.status == "RUNNING"
        run.log_keras_model(_tiny_model(), name="model", pip_requirements=["keras"])
        assert client.get_run(run.run_id).info.status == "RUNNING"
        assert client.get_run(run.run_id).data.tags[tracking.PID_TAG] == str(os.getpid())
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_a_run_whose_process_died_is_closed_killed_by_the_next(store: str, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from pipeline import tracking
        with tracking.tracked_run(tracking_uri={store!r}, experiment="tests",
                                  artifact_dir=Path({str(tmp_path)!r})) as run:
            print(run.run_id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == -signal.SIGKILL
    orphan_id = result.stdout.split()[0]
    client = MlflowClient(store)
    assert client.get_run(orphan_id).info.status == "RUNNING"
    with _open(store, tmp_path) as run:
        pass
    orphan = client.get_run(orphan_id)
    assert orphan.info.status == "KILLED"
    assert orphan.data.tags[tracking.END_REASON_TAG].startswith("process ")
    assert "died without ending the run (SIGKILL or out of memory)" in orphan.data.tags[tracking.END_REASON_TAG]
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_resumed_run_failing_ends_failed(store: str, tmp_path: Path) -> None:
    with _open(store, tmp_path) as run:
        reference = tracking.run_reference(run, store)
    with pytest.raises(KeyError), tracking.tracked_run(tracking_uri=store, resume=reference):
        raise KeyError("missing")
    assert MlflowClient(store).get_run(reference.run_id).info.status == "FAILED"


def test_sigterm_ends_the_run_killed(store: str, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal, time
        from pathlib import Path
        from pipeline import tracking
        with tracking.tracked_run(tracking_uri={store!r}, experiment="tests",
                                  artifact_dir=Path({str(tmp_path)!r})) as run:
            print(run.run_id, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode != 0
    run_id = result.stdout.split()[0]
    terminated = MlflowClient(store).get_run(run_id)
    assert terminated.info.status == "KILLED"
    assert terminated.data.tags[tracking.END_REASON_TAG] == "terminated by signal 15"


def test_epochs_of_several_fits_share_one_step_axis(store: str, tmp_path: Path) -> None:
    model = _tiny_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    features, labels = np.ones((8, 4), np.float32), np.zeros(8, np.int64)
    with _open(store, tmp_path) as run:
        model.fit(features, labels, epochs=2, verbose=0, callbacks=[run.epoch_logger()])
        model.fit(features, labels, initial_epoch=2, epochs=5, verbose=0, callbacks=[run.epoch_logger()])
    steps = [metric.step for metric in MlflowClient(store).get_metric_history(run.run_id, "loss")]
    assert steps == [0, 1, 2, 3, 4]


def test_run_reference_round_trip(tmp_path: Path) -> None:
    reference = tracking.RunReference(run_id="abc", experiment_id="1", tracking_uri="sqlite:///x.db")
    reference.write(tmp_path / "build" / "run.json")
    assert tracking.RunReference.read(tmp_path / "build" / "run.json") == reference


def test_champion_gate_and_loading_the_champion(store: str, tmp_path: Path) -> None:
    model = _tiny_model()
    registrations = []
    for accuracy in (0.8, 0.7, 0.9):
        with _open(store, tmp_path) as run:
            uri = run.log_keras_model(model, name="model", pip_requirements=["keras"])
            registrations.append(
                tracking.register_model(run, model_uri=uri, name="clf", metric="accuracy", value=accuracy)
            )
    assert [(item.version, item.is_champion, item.champion_version) for item in registrations] == [
        ("1", True, "1"),
        ("2", False, "1"),
        ("3", True, "3"),
    ]
    assert registrations[2].previous_champion_value == 0.8
    client = MlflowClient(store)
    assert str(client.get_model_version_by_alias("clf", "champion").version) == "3"
    assert client.get_model_version("clf", "2").tags["test_accuracy"] == "0.7"

    mlflow.set_tracking_uri(store)
    loaded = mlflow.tensorflow.load_model("models:/clf@champion")
    sample = np.random.default_rng(0).uniform(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(sample, verbose=0), model.predict(sample, verbose=0), rtol=1e-6)
    signature = mlflow.models.get_model_info("models:/clf@champion").signature
    assert signature.inputs.to_dict() == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 4)}, "name": "pixels"}
    ]


class _FakeGpuMonitor:
    def __init__(self, count: int) -> None:
        self.gpu_handles = [f"handle-{index}" for index in range(count)]
        self.num_gpus = count


def test_gpu_sampling_is_narrowed_to_the_selected_gpus() -> None:
    cpu_monitor, gpu_monitor = object(), _FakeGpuMonitor(4)
    monitors = [cpu_monitor, gpu_monitor]
    tracking.narrow_gpu_monitors(monitors, gpu_indices=[3, 1], gpu_monitor_type=_FakeGpuMonitor)
    assert monitors == [cpu_monitor, gpu_monitor]
    assert (gpu_monitor.gpu_handles, gpu_monitor.num_gpus) == (["handle-3", "handle-1"], 2)
    tracking.narrow_gpu_monitors(monitors, gpu_indices=[], gpu_monitor_type=_FakeGpuMonitor)
    assert monitors == [cpu_monitor]


def test_system_metrics_are_sampled_on_the_run(store: str, tmp_path: Path) -> None:
    import time

    with _open(store, tmp_path) as run, run.system_metrics(sampling_interval=0.2):
        time.sleep(1.0)
    metrics = MlflowClient(store).get_run(run.run_id).data.metrics
    assert metrics["system/cpu_utilization_percentage"] >= 0.0
    assert metrics["system/system_memory_usage_megabytes"] > 0.0


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
    with _open(store, tmp_path) as run:
        run.log_dataset(rows=rows, name=identity.name, source=identity.source, context="training")

    (logged,) = MlflowClient(store).get_run(run.run_id).inputs.dataset_inputs
    assert logged.dataset.name == name
    assert logged.dataset.source_type == "local"
    assert logged.dataset.source == f'{{"uri": "{(tmp_path / relative).resolve()}"}}'
    assert logged.dataset.digest == mlflow.data.from_pandas(pandas.DataFrame(rows)).digest
    assert [(tag.key, tag.value) for tag in logged.tags] == [("mlflow.data.context", "training")]


def test_dataset_of_the_default_idx_folder_is_fashion_mnist() -> None:
    from pipeline.data.sources import DatasetIdentity, dataset_identity

    assert dataset_identity("/usr/share/datasets/fashion-mnist") == DatasetIdentity(
        name="fashion-mnist", source="/usr/share/datasets/fashion-mnist"
    )
    assert dataset_identity("/") == DatasetIdentity(name="/", source="/")


def test_experiment_runs_newest_first_with_params_and_latest_metrics(store: str) -> None:
    client = MlflowClient(store)
    experiment_id = client.create_experiment("listed")
    older = client.create_run(experiment_id, start_time=1_000, run_name="older").info.run_id
    client.log_param(older, "train.seed", "1")
    client.log_metric(older, "val_accuracy", 0.5, step=0)
    client.log_metric(older, "val_accuracy", 0.75, step=1)
    client.set_terminated(older, status="FINISHED", end_time=61_000)
    newer = client.create_run(experiment_id, start_time=2_000, run_name="newer").info.run_id
    assert tracking.experiment_runs(store, "listed") == [
        tracking.RunSummary(newer, "newer", "RUNNING", 2_000, None, {}, {}),
        tracking.RunSummary(older, "older", "FINISHED", 1_000, 61_000, {"train.seed": "1"}, {"val_accuracy": 0.75}),
    ]
    with pytest.raises(tracking.TrackingLookupError, match="no experiment 'nope' in .*; experiments there: .*listed"):
        tracking.experiment_runs(store, "nope")


def test_a_logged_model_loads_with_its_metadata_version_and_run(store: str, tmp_path: Path) -> None:
    model = _tiny_model()
    with _open(store, tmp_path) as run:
        uri = run.log_keras_model(model, name="model", pip_requirements=["keras"], metadata={"model_card": {"a": 1}})
        tracking.register_model(run, model_uri=uri, name="clf", metric="accuracy", value=0.5)
        (tmp_path / "report.json").write_text('{"class_names": ["x", "y", "z"]}')
        run.log_artifact(tmp_path / "report.json", "evaluation")
    loaded = tracking.load_logged_model("models:/clf@champion", tracking_uri=store)
    assert (loaded.uri, loaded.version, loaded.run_id) == ("models:/clf@champion", "1", run.run_id)
    assert loaded.metadata == {"model_card": {"a": 1}}
    sample = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(loaded.model.predict(sample, verbose=0), model.predict(sample, verbose=0), rtol=1e-6)
    assert tracking.load_logged_model(f"runs:/{run.run_id}/model", tracking_uri=store).version is None
    assert tracking.load_logged_model("models:/clf/1", tracking_uri=store).version == "1"
    with pytest.raises(tracking.TrackingLookupError, match=r"cannot load models:/clf@nope from sqlite:///"):
        tracking.load_logged_model("models:/clf@nope", tracking_uri=store)
    assert tracking.run_artifact_json(store, run.run_id, "evaluation/report.json") == {"class_names": ["x", "y", "z"]}
    assert tracking.run_artifact_json(store, run.run_id, "evaluation/missing.json") is None
