"""pipeline/tracking/registry.py: registering models through the champion gate, and the @champion alias."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

from pipeline.evaluation import gate
from pipeline.evaluation.comparison import Comparison
from pipeline.evaluation.metrics import evaluate_classifier, majority_baseline, score_champion
from pipeline.tracking import models, registry
from tests.conftest import brightness_classifier, brightness_images
from tests.tracking.conftest import CLASSES, open_run, tiny_model


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
    with open_run(store, tmp_path) as run:
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
        comparison = Comparison(list(CLASSES), result.summary(), {"majority": baseline.scores()}, champion)
        uri = models.log_keras_model(run, model, name="model", pip_requirements=["keras"], class_names=CLASSES)
        decision = gate.decide(
            comparison,
            metric="accuracy",
            margin=margin,
            alpha=None,  # the margin's rule alone: McNemar's test has its own tests (tests/evaluation/test_gate.py)
            current_champion=registry.champion_version(run, "clf"),
            baselines=["majority"],
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
        "0.5000 by more than the margin 0; no significance test (tracking.champion_alpha is null)"
    )
    run = client.get_run(client.get_model_version("clf", "3").run_id)
    assert run.data.tags["gate.decision"] == "not champion"
    assert rounds[2].decision.champion == 0.8

    # The champion loads through pyfunc and predicts class probabilities.
    mlflow.set_tracking_uri(store)
    images, _ = brightness_images([0, 1, 2, 2])
    pixels = images.astype(np.float32)
    # Without a Keras warning: an input named in the signature reached Keras as a dict, which it warned about.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probabilities = mlflow.pyfunc.load_model("models:/clf@champion").predict(pixels)
    np.testing.assert_allclose(probabilities, brightness_classifier([0, 1, 2]).predict(pixels, verbose=0), atol=1e-6)
    assert probabilities.argmax(axis=1).tolist() == [0, 1, 2, 2]
    info = mlflow.models.get_model_info("models:/clf@champion")
    assert info.metadata == {"class_names": ["a", "b", "c"]}
    assert info.signature.inputs.to_dict() == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 8, 8, 3)}}
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
    with open_run(store, tmp_path) as run:
        assert registry.champion_version(run, "never-registered") is None
        uri = models.log_keras_model(run, tiny_model(), name="model", pip_requirements=["keras"], class_names=CLASSES)
        mlflow.register_model(uri, "clf")
        assert registry.champion_version(run, "clf") is None  # a version, but no alias yet
        run.client.set_registered_model_alias("clf", "champion", "1")
        assert registry.champion_version(run, "clf") == "1"

        def unreachable(name: str) -> None:
            raise mlflow.exceptions.MlflowException("API request failed", error_code=TEMPORARILY_UNAVAILABLE)

        monkeypatch.setattr(run.client, "get_registered_model", unreachable)
        with pytest.raises(mlflow.exceptions.MlflowException, match="API request failed"):
            registry.champion_version(run, "clf")
