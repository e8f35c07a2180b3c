"""End to end: `dvc repro` on tiny params in a temporary copy of the repository, on a registered backbone and
on a SavedModel directory.

The run on the registered backbone is the session's shared one (`shared_tiny_run` in tests/conftest.py):
tests that read it take `tiny_run`, tests that change it take `tiny_run_copy`, so their order does not matter.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from pipeline.params.runtime import DeviceParams
from pipeline.runtime.devices import GPU_DETERMINISM_OFF, available_gpus, select_devices
from tests.conftest import export_tiny_saved_model
from tests.tiny_project import STAGES, copy_project, ran_stages, tiny_params, write_params
from tests.tiny_project import dvc as _dvc
from tests.tiny_project import edit_params as _edit_params

# They read or copy the session's one tiny dvc repro (tests/conftest.py): under `pytest -n` they share a worker,
# so the run is made once.
pytestmark = pytest.mark.xdist_group("tiny_run")


def _test_split_accuracy(project: Path, model) -> float:
    """The accuracy of `model` on the project's test split, computed here from the IDX files and the manifest.

    Why here: the evaluate stage's figure goes through the pipeline's dataset and scikit-learn; this one
    resizes the grey images itself and counts the right answers.
    """
    import tensorflow as tf

    from pipeline.data.sources import load_idx_dataset
    from pipeline.data.split import read_manifest, select

    images, labels = select(load_idx_dataset(project / "idx"), read_manifest(project / "data" / "manifest.csv"), "test")
    pixels = tf.image.resize(np.repeat(images[..., np.newaxis].astype(np.float32), 3, axis=-1), (32, 32))
    # One batch of all 40 images, as the evaluate stage predicts them (evaluate.batch_size 128).
    predictions = model.predict(pixels, batch_size=128, verbose=0).argmax(axis=1)
    return float(np.mean(predictions == labels))


def _assert_accuracy_is_the_exported_models(project: Path, model) -> None:
    """metrics.json's test accuracy is the confusion matrix's trace over the 40 test images, and `model`'s own."""
    accuracy = json.loads((project / "reports" / "metrics.json").read_text())["test"]["accuracy"]
    confusion = np.array(json.loads((project / "reports" / "classification_report.json").read_text())["confusion"])
    assert confusion.shape == (10, 10)
    assert confusion.sum(axis=1).tolist() == [4] * 10  # rows are the true classes: 4 test images each
    assert accuracy == np.trace(confusion) / 40
    assert accuracy == _test_split_accuracy(project, model)


def test_the_log_reads_calmly(tiny_run: Path) -> None:
    project = tiny_run
    log = (project / "repro.log").read_text()
    epoch_lines = [line for line in log.splitlines() if " - loss: " in line]
    assert len(epoch_lines) == 4
    assert [line for line in epoch_lines if "phase" in line] == []
    assert "frozen layers up to " in log  # the one-time pass announces itself
    assert "95% bootstrap interval" in log
    assert "test ROC-AUC (macro one-vs-rest) " in log
    assert ", expected calibration error " in log
    for noise in (
        "absl::InitializeLog",
        "oneDNN custom operations",
        "cudart_stub",
        "use_unbounded_threadpool",
        "Successfully registered model",
        "Creating initial MLflow database tables",
    ):
        assert noise not in log


def test_outputs_with_fixed_names(tiny_run: Path) -> None:
    import keras

    project = tiny_run
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"accuracy", "macro_f1"}
    assert metrics["test"]["examples"] == 40
    test = metrics["test"]
    assert test["accuracy_ci_low"] <= test["accuracy"] <= test["accuracy_ci_high"]
    assert test["macro_f1_ci_low"] <= test["macro_f1"] <= test["macro_f1_ci_high"]
    # Every class has 4 test images, so the ROC-AUC averages all 10; the ECE is a weighted gap, in [0, 1].
    assert 0.5 < test["roc_auc"] <= 1.0
    assert 0.0 <= test["ece"] <= 1.0
    calibration = json.loads((project / "reports" / "classification_report.json").read_text())["calibration"]
    assert sum(calibration["counts"]) == 40 and calibration["ece"] == test["ece"]
    _assert_accuracy_is_the_exported_models(project, keras.saving.load_model(project / "models" / "model.keras"))
    assert (project / "models" / "model.keras").stat().st_size > 1_000_000
    assert (project / "models" / "saved_model" / "saved_model.pb").stat().st_size > 100_000
    for name in ("history.png", "confusion_matrix.png", "calibration.png", "data_report.json", "registry.json"):
        assert (project / "reports" / name).stat().st_size > 0
    assert (project / "reports" / "lr_find.png").stat().st_size > 0
    comparison = json.loads((project / "reports" / "champion_comparison.json").read_text())
    assert comparison["baselines"]["majority"]["scores"]["accuracy"] == 0.1  # 4 test images of each of 10 classes
    assert comparison["champion"] is None  # the registry was empty
    assert comparison["challenger"]["accuracy"] == metrics["test"]["accuracy"]
    # McNemar's counts against each baseline, on the same 40 images, and the rule they are read with.
    majority_test = comparison["baselines"]["majority"]["paired"]
    # The model gets 24 of the 40 right, the constant answer the 4 T-shirts: the images both get right cancel.
    assert majority_test["challenger_only"] - majority_test["other_only"] == 24 - 4
    assert majority_test["p_value"] < 0.05
    assert comparison["rule"] == (
        "accuracy above max(@champion on the same test split, majority) by more than 0, and McNemar's exact "
        "p < 0.05 against each, with more images right"
    )
    registry = json.loads((project / "reports" / "registry.json").read_text())
    assert registry["decision"]["challenger"] == metrics["test"]["accuracy"]
    assert registry["decision"]["baseline_test"] == majority_test
    with (project / "reports" / "trainable_layers.csv").open(newline="") as handle:
        layers = list(csv.DictReader(handle))
    last_phase = {(row["block"], row["trainable"], row["lr_multiplier"]) for row in layers if row["phase"] == "2"}
    # Three blocks unfrozen, each at half the LR of the one above (lr_decay_per_block: 2); block5 stays frozen.
    assert {("head", "True", "1.0"), ("top", "True", "0.5"), ("block7", "True", "0.25")} <= last_phase
    assert {("block6", "True", "0.125"), ("block5", "False", "0.0")} <= last_phase
    batch_norms = {row["batch_norm"] for row in layers if row["phase"] == "2" and row["block"] == "top"}
    assert batch_norms == {"", "affine"}
    report = json.loads((project / "reports" / "data_report.json").read_text())
    assert report["split_sizes"] == {"train": 120, "val": 40, "test": 40}


def test_exported_model_takes_raw_pixels(tiny_run: Path) -> None:
    import keras

    project = tiny_run
    model = keras.saving.load_model(project / "models" / "model.keras")
    assert model.input_shape == (None, 32, 32, 3)
    probabilities = model.predict(np.full((2, 32, 32, 3), 128.0, np.float32), verbose=0)
    assert probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.gpu
def test_the_runs_device_tags_name_the_gpus_nvidia_smi_lists(tiny_run: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tiny_run / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    listed = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    driver = {int(index): (name.strip(), int(memory)) for index, name, memory in (line.split(",") for line in listed)}
    tags = run.data.tags
    # CUDA_VISIBLE_DEVICES unset and CUDA_DEVICE_ORDER=PCI_BUS_ID: TensorFlow's indices are the driver's.
    indices = [int(index) for index in tags["device.gpu_indices"].split(", ")]
    assert indices == sorted(driver)
    assert all(f"GPU:{index} {driver[index][0]}" in tags["device.selected"] for index in indices)
    assert [int(value) for value in tags["device.memory_mb"].split(", ")] == [driver[index][1] for index in indices]
    sampled = {key for key in run.data.metrics if key.startswith("system/gpu_")}
    assert {int(key.split("_")[1]) for key in sampled} <= set(indices)


def test_one_run_holds_everything(tiny_run: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    project = tiny_run
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["train.unfreeze.1.blocks"] == "3"
    assert run.data.params["backbone.name"] == "efficientnet_lite0"
    # What the device selection gives on this machine (a GPU one too), and what the compiled model then ran with.
    expected = select_devices(DeviceParams(), available=available_gpus())
    tags = run.data.tags
    assert (tags["device.kind"], tags["device.precision"], tags["device.replicas"]) == (
        expected.kind,
        expected.precision,
        str(expected.replicas),
    )
    if expected.kind == "cpu":
        assert (tags["device.xla"], tags["device.xla_reason"], tags["device.deterministic"]) == (
            "false",
            "auto: Keras turns XLA off on a machine without a GPU",
            "true (auto: on the CPU)",
        )
    else:
        assert tags["device.deterministic"] == f"false ({GPU_DETERMINISM_OFF})"
        assert tags["device.xla"] == ("true" if expected.replicas == 1 else "false")
    assert run.data.tags["phase.1"].startswith("unfreeze_top_1: epochs 3-3, sgd lr")
    assert "lr / 2 per lower block, BN affine" in run.data.tags["phase.1"]
    assert run.data.tags["phase.2"].startswith("unfreeze_top_3: epochs 4-4, adam lr")
    assert run.data.tags["base_learning_rate.source"] == "LR range test (valley rule)"
    suggested = json.loads((project / "reports" / "lr_find.json").read_text())["suggested"]
    assert run.data.metrics["base_learning_rate"] == pytest.approx(suggested)
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "phase"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert [point.step for point in history] == [0, 1, 2, 3], metric
    assert [point.value for point in client.get_metric_history(run.info.run_id, "phase")] == [0.0, 0.0, 1.0, 2.0]
    lrs = [point.value for point in client.get_metric_history(run.info.run_id, "lr")]
    assert lrs == pytest.approx([suggested, suggested, suggested * 0.1, suggested * 0.001], rel=1e-6)
    assert set(run.data.metrics) >= {"test_accuracy", "test_macro_f1", "test_accuracy_ci_low", "test_macro_f1_ci_high"}
    test_metrics = json.loads((project / "reports" / "metrics.json").read_text())["test"]
    assert run.data.metrics["test_roc_auc"] == test_metrics["roc_auc"]
    assert run.data.metrics["test_ece"] == test_metrics["ece"]
    evaluation = {item.path for item in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/calibration.png", "evaluation/confusion_matrix.png"} <= evaluation
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "training")}
    assert {"training/history.png", "training/trainable_layers.csv"} <= artifacts
    lr_find = {item.path for item in client.list_artifacts(run.info.run_id, "lr_find")}
    assert lr_find == {"lr_find/lr_find.json", "lr_find/lr_find.png"}
    # Named after the data folder (the test's IDX folder), not after Fashion-MNIST.
    dataset = run.inputs.dataset_inputs[0].dataset
    assert (dataset.name, dataset.source) == ("idx", f'{{"uri": "{project / "idx"}"}}')
    # The run record: data fingerprint and counts, code, stage, versions, model summary, system metrics.
    assert len(run.data.params["data.fingerprint"]) == 64
    assert run.data.params["data.class_counts.test"].count(" 4") == 10  # 40 test images, 4 per class
    assert run.data.tags["git.commit"] == "none"  # the project is a git repository without commits yet
    assert run.data.tags["dvc.stage"] == "register"  # the last stage that worked on the run
    assert run.data.tags["versions.tensorflow"] == importlib.metadata.version("tensorflow")
    summary = client.download_artifacts(run.info.run_id, "model/summary.txt", str(tmp_path))
    assert "Total params" in Path(summary).read_text()
    assert run.data.metrics["system/system_memory_usage_megabytes"] > 0
    assert run.data.metrics["baseline_test_accuracy"] == 0.1
    # The classical baselines, on the same 40 test images, fitted on all 120 training images (under the caps).
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    for name in ("probe", "pixels"):
        assert run.data.metrics[f"{name}_test_accuracy"] == metrics[f"{name}_test_accuracy"]
        assert 0.0 <= metrics[f"{name}_test_macro_f1"] <= 1.0
    comparison = json.loads((project / "reports" / "champion_comparison.json").read_text())
    assert list(comparison["baselines"]) == ["majority", "probe", "pixels"]
    assert comparison["baselines"]["probe"]["details"]["train_images"] == 120
    assert comparison["baselines"]["probe"]["details"]["dimension"] == 1280
    assert comparison["baselines"]["pixels"]["description"] == (
        "logistic regression on 16x16 grey pixels of 120 training images"
    )
    assert run.data.tags["baseline.not_beaten"] == max(
        ("probe", "pixels"), key=lambda name: metrics[f"{name}_test_accuracy"]
    )
    assert run.data.tags["gate.compared_with"] == "no champion"
    assert run.data.tags["gate.decision"] == "champion"
    champion = client.get_model_version_by_alias("e2e-model", "champion")
    assert str(champion.version) == "1"
    assert champion.run_id == run.info.run_id
    # The model card travels with the registered model, for tl-predict.
    import mlflow

    from pipeline.data.sources import FASHION_MNIST_CLASSES

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    card = mlflow.models.get_model_info("models:/e2e-model@champion").metadata["model_card"]
    assert card == {"class_names": list(FASHION_MNIST_CLASSES), "stored_shape": [28, 28]}

    test = comparison["baselines"]["majority"]["paired"]
    counts = f"{test['challenger_only']} vs {test['other_only']} images, p {test['p_value']:.2g}"
    assert champion.tags["gate.reason"] == (
        "accuracy 0.6000 beats the majority-class baseline (T-shirt/top) 0.1000 by more than the margin 0, beyond "
        f"chance: McNemar's exact test against the majority-class baseline (T-shirt/top) {counts} (alpha 0.05)"
    )
    assert champion.tags["gate.baseline_discordant"] == f"{test['challenger_only']} vs {test['other_only']}"


def test_the_run_is_tagged_with_its_seed_group(tiny_run: Path) -> None:
    from mlflow.tracking import MlflowClient

    from pipeline import params

    client = MlflowClient(f"sqlite:///{tiny_run / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    config = params.load(tiny_run / "params.yaml")
    assert {key: value for key, value in run.data.tags.items() if key.startswith("seed_group")} == {
        "seed_group": params.seed_group_key(config),
        "seed_group.seed": str(config.train.seed),
        "seed_group.data_seed": str(config.data.seed),
    }


def test_a_copy_of_the_run_is_a_project_of_its_own(tiny_run: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    copy = copy_project(tiny_run, tmp_path / "copy")
    original = f"{tiny_run}{os.sep}".encode()
    # Compiled bytecode is left out: Python corrects a module's recorded source path when it loads it.
    holding = [
        str(path.relative_to(copy))
        for path in sorted(copy.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and original in path.read_bytes()
    ]
    assert holding == []
    client = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e2e")
    assert experiment.artifact_location == (copy / "mlartifacts").as_uri()
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.artifact_uri.startswith(f"{(copy / 'mlartifacts').as_uri()}/")
    assert {item.path for item in client.list_artifacts(run.info.run_id, "training")} >= {"training/history.png"}
    champion = client.get_model_version_by_alias("e2e-model", "champion")
    assert champion.run_id == run.info.run_id
    download_uri = client.get_model_version_download_uri("e2e-model", "1")
    assert Path(urllib.parse.urlsplit(download_uri).path).is_relative_to(copy)


def test_second_repro_skips_every_stage(tiny_run_copy: Path) -> None:
    result = _dvc(tiny_run_copy, "repro")
    assert result.returncode == 0, result.stderr
    assert "Running stage" not in result.stdout
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in result.stdout


def test_editing_code_reruns_only_the_stages_that_import_it(tiny_run_copy: Path) -> None:
    copy = tiny_run_copy

    def edit(relative: str) -> None:
        path = copy / relative
        path.write_text(path.read_text(encoding="utf-8") + "\n# an edit\n", encoding="utf-8")

    edit("pipeline/serving/predict.py")  # tl-predict's code: no stage imports it
    result = _dvc(copy, "status")
    assert result.returncode == 0, result.stderr
    assert "Data and pipelines are up to date." in result.stdout
    edit("pipeline/training/recipe.py")  # read by lr_find and train only
    result = _dvc(copy, "status")
    changed = sorted(stage for stage in STAGES if f"\n{stage}:" in f"\n{result.stdout}")
    assert changed == ["lr_find", "train"], result.stdout


def test_changing_one_param_reruns_only_its_stages(tiny_run_copy: Path) -> None:
    project = tiny_run_copy
    _edit_params(project, "tracking", "registered_model", "e2e-renamed")
    result = _dvc(project, "repro")
    assert result.returncode == 0, result.stderr
    ran = ran_stages(result)
    # evaluate scores the champion of the registered model named, so it reruns too.
    assert ran == ["validate", "evaluate", "register"]
    assert json.loads((project / "reports" / "registry.json").read_text())["name"] == "e2e-renamed"


def test_invalid_params_stop_before_any_output_is_touched(tiny_run_copy: Path) -> None:
    project = tiny_run_copy
    watched = [project / "build" / "model.keras", project / "models" / "model.keras", project / "data" / "manifest.csv"]
    before = [path.stat().st_mtime_ns for path in watched]
    _edit_params(project, "head", "dropout", 1.5)
    result = _dvc(project, "repro")
    assert result.returncode != 0
    assert "head.dropout: received 1.5; Input should be less than 1" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert [path.stat().st_mtime_ns for path in watched] == before


def test_dvc_exp_run_with_a_set_param(tiny_run_copy: Path) -> None:
    project = tiny_run_copy
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", "baseline"],
        cwd=project,
        check=True,
    )
    result = _dvc(project, "exp", "run", "-S", "tracking.registered_model=e2e-experiment")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ran_stages(result) == ["validate", "evaluate", "register"]
    registry = json.loads((project / "reports" / "registry.json").read_text())
    assert registry["name"] == "e2e-experiment"
    shown = _dvc(project, "exp", "show", "--no-pager", "--csv")
    assert shown.returncode == 0, shown.stderr
    assert "e2e-experiment" in shown.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])[0]
    experiment_names = [line.split(",")[0] for line in shown.stdout.splitlines()[1:]]
    assert run.data.tags["dvc.experiment"] in experiment_names
    assert run.data.tags["dvc.stage"] == "register"


def test_a_killed_training_shows_running_then_killed_after_the_next_run(tiny_run_copy: Path) -> None:
    import signal
    import time

    from mlflow.tracking import MlflowClient

    workdir = tiny_run_copy
    _edit_params(workdir, "train", "frozen_epochs", 1000)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("e2e").experiment_id
    earlier = {run.info.run_id for run in client.search_runs([experiment_id])}
    training = subprocess.Popen(
        [sys.executable, "-m", "stages.train"], cwd=workdir, env=environment, stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and training.poll() is None:
            runs = [run for run in client.search_runs([experiment_id]) if run.info.run_id not in earlier]
            if runs and client.get_metric_history(runs[0].info.run_id, "loss"):
                break
            time.sleep(0.5)
        assert training.poll() is None, "training ended before it could be killed"
        during = client.get_run(runs[0].info.run_id)
        assert during.info.status == "RUNNING"
        training.send_signal(signal.SIGKILL)
        training.wait(timeout=60)
    finally:
        training.kill()
    assert client.get_run(during.info.run_id).info.status == "RUNNING"  # nobody could say otherwise yet

    _edit_params(workdir, "train", "frozen_epochs", 1)
    _edit_params(workdir, "train", "unfreeze", [])
    subprocess.run(
        [sys.executable, "-m", "stages.train"], cwd=workdir, env=environment, check=True, capture_output=True
    )
    killed = client.get_run(during.info.run_id)
    assert killed.info.status == "KILLED"
    assert "died without ending the run (SIGKILL or out of memory)" in killed.data.tags["pipeline.end_reason"]
    latest = [
        run for run in client.search_runs([experiment_id]) if run.info.run_id not in earlier | {killed.info.run_id}
    ]
    assert [run.info.status for run in latest] == ["FINISHED"]


@pytest.fixture(scope="module")
def hub_project(shared_tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline on a SavedModel directory: frozen phase, then its one block unfrozen with BN trainable.

    A copy of the shared run with the SavedModel as backbone: its data section is the same, so `prepare`
    is not run again, and every stage that reads the backbone is. Each test works on a copy of it.
    """
    workdir = copy_project(shared_tiny_run, tmp_path_factory.mktemp("hub_project") / "project")
    params = tiny_params()
    saved_model = export_tiny_saved_model(tmp_path_factory.mktemp("hub") / "extractor", training_endpoint=True)
    params["backbone"].update(name=saved_model, training_signature="serve_train")
    params["head"].update(hidden_units=[16], batch_norm="before")
    params["train"].update(
        batch_size=32,
        frozen_epochs=2,
        base_learning_rate="auto",
        bn_policy="trainable",
        lr_decay_per_block=2.0,
        unfreeze=[{"blocks": 1, "epochs": 2, "lr_factor": 0.1}],
    )
    params["lr_find"].update(enabled=True, steps=20, images=64, min_lr=1e-5, max_lr=1.0)
    params["tracking"].update(experiment="e2e-hub", registered_model="e2e-hub-model")
    write_params(workdir, params)
    result = _dvc(workdir, "repro")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ran_stages(result) == ["validate", "lr_find", "train", "evaluate", "register"], result.stdout
    assert "Stage 'prepare' didn't change, skipping" in result.stdout
    return workdir


def test_a_saved_model_backbone_runs_every_stage(hub_project: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from pipeline.model.export import load_model

    # A copy: loading a registered version from a local store writes `registered_model_meta` into the
    # version's own artifact folder (MLflow hands out that folder itself instead of a downloaded copy).
    hub_project = copy_project(hub_project, tmp_path / "hub_project")
    metrics = json.loads((hub_project / "reports" / "metrics.json").read_text())["test"]
    assert metrics["examples"] == 40
    with (hub_project / "reports" / "trainable_layers.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["layer"] == "saved_model"]
    assert [(row["phase"], row["trainable"], row["batch_norm"]) for row in rows] == [
        ("0", "False", "frozen"),
        ("1", "True", "trainable"),
    ]
    assert rows[1]["lr_multiplier"] == "0.5"
    model = load_model(hub_project / "models" / "model.keras")
    probabilities = model.predict(np.full((2, 32, 32, 3), 128.0, np.float32), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    _assert_accuracy_is_the_exported_models(hub_project, model)
    client = MlflowClient(f"sqlite:///{hub_project / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("e2e-hub").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "extractor-32px"
    assert run.data.tags["phase.1"].startswith("unfreeze_top_1: epochs 3-4")
    # Registered whatever the gate decided (this tiny model may not beat the majority baseline).
    version = client.get_model_version("e2e-hub-model", "1")
    assert version.run_id == run.info.run_id
    assert version.tags["gate.decision"] in ("champion", "not champion")
    import mlflow

    # The registered model holds a TFSMLayer too: it loads outside Keras' safe mode, like models/model.keras.
    mlflow.set_tracking_uri(f"sqlite:///{hub_project / 'mlflow.db'}")
    from pipeline.tracking import models

    registered = models.load_keras_model("models:/e2e-hub-model/1")
    np.testing.assert_array_equal(
        registered.predict(np.full((2, 32, 32, 3), 128.0, np.float32), verbose=0), probabilities
    )


def test_an_uncached_hub_handle_stops_train_in_one_line(hub_project: Path, tmp_path: Path) -> None:
    hub_project = copy_project(hub_project, tmp_path / "hub_project")
    handle = "https://tfhub.dev/example/not-cached/1"
    _edit_params(hub_project, "backbone", "name", handle)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
    # A proxy that refuses every connection: the download attempt fails at once, without the network.
    environment.update(https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", no_proxy="")
    environment["TFHUB_CACHE_DIR"] = str(tmp_path / "hub")
    result = subprocess.run(
        [sys.executable, "-m", "stages.train"],
        cwd=hub_project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: TF Hub handle {handle} is not in the TF Hub cache {tmp_path / 'hub'} and could not")
    assert str(tmp_path / "hub" / hashlib.sha1(handle.encode()).hexdigest()) in line
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{hub_project / 'mlflow.db'}")
    assert len(client.search_runs([client.get_experiment_by_name("e2e-hub").experiment_id])) == 1


def test_evaluating_again_scores_the_champion_on_the_same_split(tiny_run_copy: Path) -> None:
    from mlflow.tracking import MlflowClient

    workdir = tiny_run_copy  # its registry holds v1 of e2e-model, the @champion
    result = _dvc(workdir, "repro", "-f", "-s", "evaluate")
    assert result.returncode == 0, result.stdout + result.stderr
    comparison = json.loads((workdir / "reports" / "champion_comparison.json").read_text())
    # The champion is this very model: scored on the same images, it scores the same.
    assert comparison["champion"]["version"] == "1"
    assert comparison["champion"]["scores"]["accuracy"] == comparison["challenger"]["accuracy"]
    result = _dvc(workdir, "repro", "-s", "register")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "@champion stays v1: accuracy " in result.stdout
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("e2e-model", "champion").version) == "1"
    latest = max(client.search_model_versions("name = 'e2e-model'"), key=lambda item: int(item.version))
    assert latest.tags["gate.decision"] == "not champion"  # a tie keeps the champion
    assert latest.tags["gate.champion_accuracy"] == str(comparison["challenger"]["accuracy"])
    run = client.get_run(latest.run_id)
    assert run.data.metrics["champion_test_accuracy"] == comparison["challenger"]["accuracy"]


def test_a_diverged_training_fails_before_anything_is_registered(tiny_run_copy: Path) -> None:
    from mlflow.tracking import MlflowClient

    workdir = tiny_run_copy
    _edit_params(workdir, "train", "base_learning_rate", 10.0)  # the issue's: SGD diverged to loss 70,002
    _edit_params(workdir, "train", "optimizer", "sgd")
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    versions = len(client.search_model_versions("name = 'e2e-model'"))
    exported = [workdir / "models" / "model.keras", workdir / "models" / "saved_model" / "saved_model.pb"]
    before = [path.stat().st_mtime_ns for path in exported]

    result = _dvc(workdir, "repro")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    # Epoch 1 averaged about 10.7 (under the first epoch's 10 x ln 10 = 23); epoch 2 rose to about 30.
    assert "error: training diverged in epoch 2 (phase frozen, lr 10): loss " in output
    assert "and did not fall from the previous epoch's " in output
    assert "Traceback" not in output
    assert "Running stage 'evaluate'" not in output
    assert not (workdir / "build" / "model.keras").exists()
    assert [path.stat().st_mtime_ns for path in exported] == before
    assert len(client.search_model_versions("name = 'e2e-model'")) == versions
    failed = client.search_runs(
        [client.get_experiment_by_name("e2e").experiment_id], order_by=["attributes.start_time DESC"]
    )[0]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["pipeline.error"].startswith("TrainingDivergedError: training diverged in epoch 2")
