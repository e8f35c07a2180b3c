"""examples/transfer_ab: its params files fit the schema and the files they read, and its arms differ in one key."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.params import load

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "transfer_ab"


def _small_cnn_module():
    spec = importlib.util.spec_from_file_location("small_cnn", EXAMPLE / "small_cnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's params files, the untrained CNN, and a task A model exported from it (untrained)."""
    from pipeline.backbones.registry import load_backbone
    from pipeline.model.export import end_to_end_model, save_model
    from pipeline.model.head import build_head
    from pipeline.params.head import HeadParams

    root = tmp_path_factory.mktemp("transfer_ab")
    for task in ("task_a", "transfer", "scratch"):
        (root / task).mkdir()
        shutil.copy(EXAMPLE / task / "params.yaml", root / task / "params.yaml")
    _small_cnn_module().build_small_cnn().save(root / "task_a" / "small_cnn.keras")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root / "task_a")  # the stages run in the task's folder; its paths are relative to it
        task_a = load("params.yaml")
    backbone = load_backbone(
        str(root / "task_a" / "small_cnn.keras"), image_size=32, cache_dir="unused", cut_layer=task_a.backbone.cut_layer
    )
    classifier = build_head(
        backbone, HeadParams(dropout=task_a.head.dropout), num_classes=len(task_a.data.classes), seed=0
    )
    model = end_to_end_model(classifier.model, backbone.make_preprocessing(), image_size=32)
    save_model(model, root / "task_a" / "build" / "model.keras")
    return root


def test_task_a_learns_8_classes_on_the_small_cnn(example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(example / "task_a")
    config = load("params.yaml")

    assert len(config.data.classes) == 8
    assert not {"Sandal", "Shirt"} & set(config.data.classes)
    assert config.backbone.block_names() == ("features", "conv3", "conv2", "conv1")


@pytest.mark.parametrize("arm", ["transfer", "scratch"])
def test_task_b_arms_read_task_as_model(example: Path, monkeypatch: pytest.MonkeyPatch, arm: str) -> None:
    monkeypatch.chdir(example / arm)
    config = load("params.yaml")

    assert config.data.classes == ["Sandal", "Shirt"]
    assert (config.data.test_part, config.data.train_size) == ("t10k", 200)
    assert config.backbone.reinitialize is (arm == "scratch")
    assert config.backbone.block_names() == ("features", "conv3", "conv2", "conv1")


def test_the_arms_differ_in_backbone_reinitialize_only() -> None:
    transfer, scratch = (yaml.safe_load((EXAMPLE / arm / "params.yaml").read_text()) for arm in ("transfer", "scratch"))

    assert (transfer["backbone"].pop("reinitialize"), scratch["backbone"].pop("reinitialize")) == (False, True)
    assert transfer == scratch


def test_the_efficientnet_variant_of_task_a_validates() -> None:
    config = load(EXAMPLE / "task_a" / "params.efficientnet_lite0.yaml")

    assert (config.backbone.name, config.backbone.weights, config.data.train_size) == (
        "efficientnet_lite0",
        "none",
        24000,
    )
