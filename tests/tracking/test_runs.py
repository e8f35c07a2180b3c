"""MLflow tracking: run lifecycle, one epoch axis across fits, params, registry, champion gate, pyfunc and serving."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

from pipeline.evaluation import gate
from pipeline.evaluation.metrics import evaluate_classifier, majority_baseline, score_champion
from pipeline.tracking import lifecycle, models, queries, registry, runs
from pipeline.tracking.epoch_logger import EpochLogger
from tests.conftest import brightness_classifier, brightness_images, register_champion

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _tiny_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="pixels")
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))


def _open(store: str, tmp_path: Path, **kwargs):
    return lifecycle.tracked_run(tracking_uri=store, experiment="tests", artifact_dir=tmp_path / "artifacts", **kwargs)


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
    assert failed.data.tags[lifecycle.ERROR_TAG] == "RuntimeError: boom"


def test_ctrl_c_ends_the_run_killed(store: str, tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), _open(store, tmp_path) as run:
        raise KeyboardInterrupt
    killed = MlflowClient(store).get_run(run.run_id)
    assert killed.info.status == "KILLED"
    assert killed.data.tags[lifecycle.END_REASON_TAG] == "interrupted (Ctrl-C)"


def test_a_run_stays_running_while_fluent_calls_borrow_it(store: str, tmp_path: Path) -> None:
    client = MlflowClient(store)
    with _open(store, tmp_path) as run:
        row = {"path": "a.png", "label": 0, "split": "train"}
        run.log_dataset(rows=[row], name="d", source="/d", context="training")
        assert client.get_run(run.run_id).info.status == "RUNNING"
        models.log_keras_model(
            run, _tiny_model(), name="model", pip_requirements=["keras"], class_names=["a", "b", "c"]
        )
        assert client.get_run(run.run_id).info.status == "RUNNING"
        assert client.get_run(run.run_id).data.tags[lifecycle.PID_TAG] == str(os.getpid())
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_a_run_whose_process_died_is_closed_killed_by_the_next(store: str, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from pipeline.tracking import lifecycle, models, queries, registry, runs
        with lifecycle.tracked_run(tracking_uri={store!r}, experiment="tests",
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
    assert orphan.data.tags[lifecycle.END_REASON_TAG].startswith("process ")
    assert "died without ending the run (SIGKILL or out of memory)" in orphan.data.tags[lifecycle.END_REASON_TAG]
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_resumed_run_failing_ends_failed(store: str, tmp_path: Path) -> None:
    with _open(store, tmp_path) as run:
        reference = lifecycle.run_reference(run, store)
    with pytest.raises(KeyError), lifecycle.tracked_run(tracking_uri=store, resume=reference):
        raise KeyError("missing")
    assert MlflowClient(store).get_run(reference.run_id).info.status == "FAILED"


def test_sigterm_ends_the_run_killed(store: str, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal, time
        from pathlib import Path
        from pipeline.tracking import lifecycle, models, queries, registry, runs
        with lifecycle.tracked_run(tracking_uri={store!r}, experiment="tests",
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
    assert terminated.data.tags[lifecycle.END_REASON_TAG] == "terminated by signal 15"


def test_epochs_of_several_fits_share_one_step_axis(store: str, tmp_path: Path) -> None:
    model = _tiny_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    features, labels = np.ones((8, 4), np.float32), np.zeros(8, np.int64)
    with _open(store, tmp_path) as run:
        model.fit(features, labels, epochs=2, verbose=0, callbacks=[EpochLogger(run)])
        model.fit(features, labels, initial_epoch=2, epochs=5, verbose=0, callbacks=[EpochLogger(run)])
    steps = [metric.step for metric in MlflowClient(store).get_metric_history(run.run_id, "loss")]
    assert steps == [0, 1, 2, 3, 4]


def test_run_reference_round_trip(tmp_path: Path) -> None:
    reference = runs.RunReference(run_id="abc", experiment_id="1", tracking_uri="sqlite:///x.db")
    reference.write(tmp_path / "build" / "run.json")
    assert runs.RunReference.read(tmp_path / "build" / "run.json") == reference


CLASSES = ("a", "b", "c")


@dataclass(frozen=True)
class GateRound:
    """One model through the gate: its registration and the decision it was registered with."""

    registration: registry.Registration
    decision: gate.GateDecision

    @property
    def version(self) -> str:
        return self.registration.version

    @property
    def is_champion(self) -> bool:
        return self.registration.is_champion

    @property
    def champion_version(self) -> str | None:
        return self.registration.champion_version


def _gate_round(store: str, tmp_path: Path, mapping: list[int], labels: list[int], *, margin: float = 0.0) -> GateRound:
    """What the evaluate and register stages do for one new model: score both on one split, decide, register."""
    model = brightness_classifier(mapping)
    images, truth = brightness_images(labels)
    with _open(store, tmp_path) as run:
        result = evaluate_classifier(model, images, truth, class_names=CLASSES, image_size=8, batch_size=16)
        baseline = majority_baseline(truth, class_names=CLASSES)
        scored = registry.champion_version(run, "clf")
        champion = None
        if scored is not None:
            champion = score_champion(
                scored,
                lambda: models.load_model_version(run, "clf", scored),
                images,
                truth,
                class_names=CLASSES,
                batch_size=16,
            )
        comparison = gate.Comparison(list(CLASSES), result.summary(), baseline.summary(), baseline.class_name, champion)
        uri = models.log_keras_model(run, model, name="model", pip_requirements=["keras"], class_names=CLASSES)
        decision = gate.decide(
            comparison, metric="accuracy", margin=margin, current_champion=registry.champion_version(run, "clf")
        )
        registration = registry.register_model(
            run,
            model_uri=uri,
            name="clf",
            promote=decision.promote,
            version_tags=decision.version_tags(),
            run_tags=decision.run_tags(),
        )
        return GateRound(registration, decision)


# Half the images of class a: the majority-class baseline scores 0.5.
SPLIT = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]


def test_useless_then_good_then_worse_then_better(store: str, tmp_path: Path) -> None:
    rounds = [
        _gate_round(store, tmp_path, [0, 0, 0], SPLIT),  # always a: the baseline itself, 0.5
        _gate_round(store, tmp_path, [0, 1, 1], SPLIT),  # 0.8
        _gate_round(store, tmp_path, [0, 0, 2], SPLIT),  # 0.7
        _gate_round(store, tmp_path, [0, 1, 2], SPLIT),  # 1.0
    ]
    assert [(item.version, item.is_champion, item.champion_version) for item in rounds] == [
        ("1", False, None),
        ("2", True, "2"),
        ("3", False, "2"),
        ("4", True, "4"),
    ]
    client = MlflowClient(store)
    assert str(client.get_model_version_by_alias("clf", "champion").version) == "4"
    useless, worse = client.get_model_version("clf", "1").tags, client.get_model_version("clf", "3").tags
    assert useless["gate.decision"] == "not champion"
    assert useless["gate.reason"] == (
        "accuracy 0.5000 does not beat the majority-class baseline (a) 0.5000 by more than the margin 0"
    )
    assert (useless["gate.champion_version"], useless["gate.champion_accuracy"]) == ("none", "none")
    assert worse["gate.decision"] == "not champion"
    assert (worse["gate.challenger_accuracy"], worse["gate.champion_accuracy"]) == ("0.7", "0.8")
    assert (worse["gate.baseline_accuracy"], worse["gate.champion_version"], worse["gate.margin"]) == (
        "0.5",
        "2",
        "0.0",
    )
    assert worse["gate.reason"] == (
        "accuracy 0.7000 does not beat @champion v2 0.8000 on the same test split by more than the margin 0"
    )
    assert client.get_model_version("clf", "4").tags["gate.reason"] == (
        "accuracy 1.0000 beats @champion v2 0.8000 on the same test split and the majority-class baseline (a) "
        "0.5000 by more than the margin 0"
    )
    run = client.get_run(client.get_model_version("clf", "3").run_id)
    assert run.data.tags["gate.decision"] == "not champion"
    assert rounds[2].decision.champion == 0.8

    # The champion loads through pyfunc and predicts class probabilities.
    mlflow.set_tracking_uri(store)
    images, _ = brightness_images([0, 1, 2, 2])
    pixels = images.astype(np.float32)
    probabilities = mlflow.pyfunc.load_model("models:/clf@champion").predict(pixels)
    np.testing.assert_allclose(probabilities, brightness_classifier([0, 1, 2]).predict(pixels, verbose=0), atol=1e-6)
    assert probabilities.argmax(axis=1).tolist() == [0, 1, 2, 2]
    info = mlflow.models.get_model_info("models:/clf@champion")
    assert info.metadata == {"class_names": ["a", "b", "c"]}
    assert info.signature.inputs.to_dict() == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 8, 8, 3)}, "name": "pixels"}
    ]


def test_the_champion_is_scored_on_the_new_split_not_by_its_stored_number(store: str, tmp_path: Path) -> None:
    first = _gate_round(store, tmp_path, [0, 1, 1], SPLIT)  # 0.8 on the first split
    # Another split (as after changing data.seed): class c is 6 in 10, and the champion scores 0.4 on it.
    second = _gate_round(store, tmp_path, [2, 1, 2], [0, 0, 0, 1, 2, 2, 2, 2, 2, 2])  # 0.7 < 0.8 stored
    assert (first.is_champion, second.is_champion) == (True, True)
    assert (second.decision.challenger, second.decision.champion, second.decision.baseline) == (0.7, 0.4, 0.6)
    assert MlflowClient(store).get_model_version("clf", "1").tags["gate.challenger_accuracy"] == "0.8"


def test_champion_margin_is_respected(store: str, tmp_path: Path) -> None:
    _gate_round(store, tmp_path, [0, 1, 1], SPLIT)  # 0.8
    held_back = _gate_round(store, tmp_path, [0, 1, 2], SPLIT, margin=0.25)  # 1.0 - 0.8 is not > 0.25
    assert (held_back.is_champion, held_back.champion_version) == (False, "1")
    assert held_back.decision.reason.endswith("by more than the margin 0.25")


def test_champion_version_is_none_only_when_there_is_none(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _open(store, tmp_path) as run:
        assert registry.champion_version(run, "never-registered") is None
        uri = models.log_keras_model(run, _tiny_model(), name="model", pip_requirements=["keras"], class_names=CLASSES)
        mlflow.register_model(uri, "clf")
        assert registry.champion_version(run, "clf") is None  # a version, but no alias yet
        run.client.set_registered_model_alias("clf", "champion", "1")
        assert registry.champion_version(run, "clf") == "1"

        def unreachable(name: str) -> None:
            raise mlflow.exceptions.MlflowException("API request failed", error_code=TEMPORARILY_UNAVAILABLE)

        monkeypatch.setattr(run.client, "get_registered_model", unreachable)
        with pytest.raises(mlflow.exceptions.MlflowException, match="API request failed"):
            registry.champion_version(run, "clf")


def test_class_names_must_match_the_outputs(store: str, tmp_path: Path) -> None:
    with _open(store, tmp_path) as run, pytest.raises(ValueError, match="2 class names for a model with 3 outputs"):
        models.log_keras_model(run, _tiny_model(), name="model", pip_requirements=["keras"], class_names=["a", "b"])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_mlflow_models_serve_answers_with_the_keras_models_classes(store: str, tmp_path: Path) -> None:
    model = brightness_classifier([0, 1, 2], image_size=16)
    with _open(store, tmp_path) as run:
        uri = models.log_keras_model(run, model, name="model", pip_requirements=["keras"], class_names=CLASSES)
        version = mlflow.register_model(uri, "served")
        run.client.set_registered_model_alias("served", "champion", version.version)

    port = _free_port()
    environment = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store,
        # uvicorn, which `mlflow models serve` starts, is a script of this environment.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/served@champion"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            command, env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the server did not answer /ping in 180 s\n" + log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                time.sleep(0.25)
        images, _ = brightness_images([2, 0, 1, 1], size=16)
        pixels = np.concatenate([images, np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3))]).astype(np.float32)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": pixels.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            served = np.array(json.loads(response.read())["predictions"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    expected = model.predict(pixels, verbose=0)
    assert served.argmax(axis=1).tolist() == expected.argmax(axis=1).tolist()
    assert served.argmax(axis=1).tolist()[:4] == [2, 0, 1, 1]
    np.testing.assert_allclose(served, expected, atol=1e-6)


class _FakeGpuMonitor:
    def __init__(self, count: int) -> None:
        self.gpu_handles = [f"handle-{index}" for index in range(count)]
        self.num_gpus = count


def test_gpu_sampling_is_narrowed_to_the_selected_gpus() -> None:
    cpu_monitor, gpu_monitor = object(), _FakeGpuMonitor(4)
    monitors = [cpu_monitor, gpu_monitor]
    runs.narrow_gpu_monitors(monitors, gpu_indices=[3, 1], gpu_monitor_type=_FakeGpuMonitor)
    assert monitors == [cpu_monitor, gpu_monitor]
    assert (gpu_monitor.gpu_handles, gpu_monitor.num_gpus) == (["handle-3", "handle-1"], 2)
    runs.narrow_gpu_monitors(monitors, gpu_indices=[], gpu_monitor_type=_FakeGpuMonitor)
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
    assert queries.experiment_runs(store, "listed") == [
        queries.RunSummary(newer, "newer", "RUNNING", 2_000, None, {}, {}),
        queries.RunSummary(older, "older", "FINISHED", 1_000, 61_000, {"train.seed": "1"}, {"val_accuracy": 0.75}),
    ]
    with pytest.raises(runs.TrackingLookupError, match="no experiment 'nope' in .*; experiments there: .*listed"):
        queries.experiment_runs(store, "nope")


def test_a_logged_model_loads_with_its_metadata_version_and_run(store: str, tmp_path: Path) -> None:
    model = _tiny_model()
    with _open(store, tmp_path) as run:
        uri = models.log_keras_model(
            run,
            model,
            name="model",
            pip_requirements=["keras"],
            class_names=["x", "y", "z"],
            metadata={"model_card": {"a": 1}},
        )
        register_champion(run, model_uri=uri, name="clf", value=0.5)
        (tmp_path / "report.json").write_text('{"class_names": ["x", "y", "z"]}')
        run.log_artifact(tmp_path / "report.json", "evaluation")
    loaded = models.load_logged_model("models:/clf@champion", tracking_uri=store)
    assert (loaded.uri, loaded.version, loaded.run_id) == ("models:/clf@champion", "1", run.run_id)
    assert loaded.metadata == {"class_names": ["x", "y", "z"], "model_card": {"a": 1}}
    sample = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(loaded.model.predict(sample, verbose=0), model.predict(sample, verbose=0), rtol=1e-6)
    assert models.load_logged_model(f"runs:/{run.run_id}/model", tracking_uri=store).version is None
    assert models.load_logged_model("models:/clf/1", tracking_uri=store).version == "1"
    with pytest.raises(runs.TrackingLookupError, match=r"cannot load models:/clf@nope from sqlite:///"):
        models.load_logged_model("models:/clf@nope", tracking_uri=store)
    assert queries.run_artifact_json(store, run.run_id, "evaluation/report.json") == {"class_names": ["x", "y", "z"]}
    assert queries.run_artifact_json(store, run.run_id, "evaluation/missing.json") is None
