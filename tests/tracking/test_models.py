"""pipeline/tracking/models.py: logging a Keras model with its class names, loading it back, serving it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from pipeline.tracking import models, queries, runs
from tests.conftest import brightness_classifier, brightness_images, register_champion
from tests.tracking.conftest import CLASSES, open_run, tiny_model


def test_class_names_must_match_the_outputs(store: str, tmp_path: Path) -> None:
    with open_run(store, tmp_path) as run, pytest.raises(ValueError, match="2 class names for a model with 3 outputs"):
        models.log_keras_model(run, tiny_model(), name="model", pip_requirements=["keras"], class_names=["a", "b"])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_mlflow_models_serve_answers_with_the_keras_models_classes(store: str, tmp_path: Path) -> None:
    model = brightness_classifier([0, 1, 2], image_size=16)
    with open_run(store, tmp_path) as run:
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


def test_a_logged_model_loads_with_its_metadata_version_and_run(store: str, tmp_path: Path) -> None:
    model = tiny_model()
    with open_run(store, tmp_path) as run:
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
