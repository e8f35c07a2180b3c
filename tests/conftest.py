"""Shared fixtures: a tiny backbone with named block groups and calibrated BatchNormalization."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

TINY_GROUPS = [("top", "top_"), ("block2", "block2"), ("block1", "block1"), ("stem", "stem_")]


def build_tiny_backbone(image_size: int = 16, seed: int = 0):
    """A 4-group conv net whose BN statistics are calibrated on random inputs.

    Why calibrated: freshly initialised BN (mean 0, variance 1) shrinks activations so much that
    gradients into the convolutions vanish, and a test of "unfrozen weights changed" would be weak.
    """
    import keras

    from pipeline.backbones.base import Backbone, group_layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 3))
    tensor = inputs
    for prefix, filters, strides in (("stem_", 4, 2), ("block1a_", 8, 1), ("block2a_", 8, 2), ("top_", 16, 1)):
        tensor = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{prefix}conv")(
            tensor
        )
        tensor = keras.layers.BatchNormalization(name=f"{prefix}bn")(tensor)
        tensor = keras.layers.ReLU(name=f"{prefix}activation")(tensor)
    model = keras.Model(inputs, tensor, name="tiny")

    probe = np.random.default_rng(seed).uniform(-1, 1, (32, image_size, image_size, 3)).astype("float32")
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            upstream = keras.Model(model.input, layer.input).predict(probe, verbose=0)
            mean = upstream.mean(axis=(0, 1, 2))
            variance = upstream.var(axis=(0, 1, 2)) + 1e-3
            gamma, beta = layer.get_weights()[:2]
            layer.set_weights([gamma, beta, mean, variance])
    return Backbone(
        name="tiny",
        model=model,
        blocks_top_down=group_layers(model, TINY_GROUPS),
        make_preprocessing=lambda: keras.layers.Rescaling(1 / 127.5, -1.0, name="preprocessing"),
    )


def optimizer_settings(name: str, **options):
    """The validated params model of optimiser `name` with `options`, as params.yaml would give it."""
    from pydantic import TypeAdapter

    from pipeline.params.optimizer import OptimizerChoice

    return TypeAdapter(OptimizerChoice).validate_python({"name": name, **options})


def schedule_settings(name: str, **options):
    """The validated params model of schedule `name` with `options`, as params.yaml would give it."""
    from pydantic import TypeAdapter

    from pipeline.params.schedule import ScheduleChoice

    return TypeAdapter(ScheduleChoice).validate_python({"name": name, **options})


def make_images(count: int, classes: int, seed: int = 0, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """uint8 grey images whose class is visible (a bright row at a class-dependent height)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % classes
    images = rng.integers(0, 60, (count, size, size)).astype(np.uint8)
    for position, label in enumerate(labels):
        images[position, (label * size) // classes, :] = 250
    return images, labels.astype(np.int64)


def brightness_classifier(mapping: list[int], *, image_size: int = 8):
    """A classifier of `brightness_images` with set weights: it reads the true class, then answers `mapping[c]`.

    Why: the champion gate's tests need models of exactly known accuracy on a given split.
    """
    import keras

    classes = len(mapping)
    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    brightness = keras.layers.GlobalAveragePooling2D()(pixels)
    # logit_c = c v - 50 c^2 = -50 ((c - k)^2 - k^2) at v = 100 k: the true class k leads by at least 50.
    true_class = keras.layers.Dense(classes, activation="softmax")(brightness)
    answer = keras.layers.Dense(classes, activation="softmax", use_bias=False)(true_class)
    model = keras.Model(pixels, answer)
    kernel = np.zeros((3, classes), np.float32)
    kernel[0] = np.arange(classes)
    model.layers[2].set_weights([kernel, -50.0 * np.arange(classes, dtype=np.float32) ** 2])
    model.layers[3].set_weights([np.eye(classes, dtype=np.float32)[mapping] * 50])
    return model


def brightness_images(labels: list[int], size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB images whose every pixel is 100 x their label (0, 100, 200), and the labels."""
    return np.stack([np.full((size, size, 3), 100 * label, np.uint8) for label in labels]), np.array(labels)


@pytest.fixture
def tiny_backbone() -> Callable[..., object]:
    return build_tiny_backbone


def export_tiny_saved_model(
    path, *, image_size: int | None = None, training_endpoint: bool = False, seed: int = 0
) -> str:
    """Exports a small conv net with BatchNormalization ending in a pooled feature vector, as TF Hub models do.

    Endpoints: `serve` (inference) and, with `training_endpoint`, `serve_train` (the same graph traced with
    training=True, so BatchNorm uses batch statistics and updates its moving ones). BN statistics are
    calibrated on inputs in [0, 1] (the TF Hub convention), see `build_tiny_backbone` for why.

    Args:
        path: Folder to write the SavedModel to.
        image_size: Fixed input size, or None for any size.
        training_endpoint: Whether to add `serve_train`.
        seed: Seed of the weights.

    Returns:
        The folder, as a string (what `backbone.name` takes).
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 3))
    tensor = inputs
    for index, (filters, strides) in enumerate(((8, 2), (8, 1))):
        tensor = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"conv{index}")(
            tensor
        )
        tensor = keras.layers.BatchNormalization(name=f"bn{index}")(tensor)
        tensor = keras.layers.ReLU(name=f"relu{index}")(tensor)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(tensor)
    model = keras.Model(inputs, features, name="tiny_saved_model")
    probe = np.random.default_rng(seed).uniform(0, 1, (32, image_size or 16, image_size or 16, 3)).astype("float32")
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            upstream = keras.Model(model.input, layer.input).predict(probe, verbose=0)
            gamma, beta = layer.get_weights()[:2]
            layer.set_weights([gamma, beta, upstream.mean(axis=(0, 1, 2)), upstream.var(axis=(0, 1, 2)) + 1e-3])
    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = [tf.TensorSpec((None, image_size, image_size, 3), tf.float32)]
    archive.add_endpoint("serve", lambda images: model(images, training=False), input_signature=spec)
    if training_endpoint:
        archive.add_endpoint("serve_train", lambda images: model(images, training=True), input_signature=spec)
    archive.write_out(str(path), verbose=False)
    return str(path)


def save_tiny_classifier(path, *, image_size: int = 32, seed: int = 0):
    """Saves what the train stage exports for the tiny backbone: 0..255 pixels -> preprocessing -> classifier.

    The classifier (backbone, then a head with one hidden layer: pool, dropout, dense, BN, activation,
    dropout, softmax) is nested in the wrapper, as `pipeline.model.export.end_to_end_model` nests it.

    Returns:
        The saved model.
    """
    from pipeline.model.export import end_to_end_model, save_model
    from pipeline.model.head import build_head
    from pipeline.params.head import HeadParams

    backbone = build_tiny_backbone(image_size, seed=seed)
    classifier = build_head(
        backbone,
        HeadParams(dropout=0.1, hidden_units=[8], batch_norm="before", hidden_dropout=0.1),
        num_classes=3,
        seed=seed,
    )
    model = end_to_end_model(classifier.model, backbone.make_preprocessing(), image_size=image_size)
    save_model(model, path)
    return model


def register_champion(run, *, model_uri: str, name: str, value: float):
    """Registers a logged model as a new version and moves @champion to it (for tests that need a registry)."""
    from pipeline.tracking import registry

    decision = promoted_decision(value)
    return registry.register_model(
        run,
        model_uri=model_uri,
        name=name,
        promote=decision.promote,
        version_tags=decision.version_tags(),
        run_tags=decision.run_tags(),
    )


def promoted_decision(value: float):
    """A champion-gate decision that moves @champion to the new version (for tests that need a registry)."""
    from pipeline.evaluation.gate import GateDecision

    return GateDecision(
        promote=True,
        metric="accuracy",
        margin=0.0,
        challenger=value,
        baseline=0.1,
        champion=None,
        champion_version=None,
        reason="test registry",
    )


def tiny_splits(train_count: int = 96, val_count: int = 30, classes: int = 3):
    """Train and val `ImageSplit`s of `make_images` (seeds 1 and 2), the data of the fine-tuning tests."""
    from pipeline.training.features import ImageSplit

    return ImageSplit(*make_images(train_count, classes, seed=1)), ImageSplit(*make_images(val_count, classes, seed=2))


def fine_tune_tiny(
    classifier,
    phases,
    *,
    image_size: int,
    splits=None,
    cache_bytes: int = 1 << 30,
    batch_size: int = 16,
    augmentation=None,
    label_smoothing: float = 0.0,
    **options,
):
    """`pipeline.training.recipe.fine_tune` on `splits` (default `tiny_splits()`), seed 0, silent."""
    from pipeline.training.features import InputSettings
    from pipeline.training.recipe import fine_tune

    train, val = splits if splits is not None else tiny_splits()
    inputs = InputSettings(
        image_size=image_size,
        batch_size=batch_size,
        seed=0,
        cache_limit_bytes=cache_bytes,
        augmentation=augmentation,
        label_smoothing=label_smoothing,
    )
    return fine_tune(classifier, train=train, val=val, phases=phases, inputs=inputs, verbose=0, **options)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skips the `gpu` tests, saying why, where TensorFlow sees no GPU; TensorFlow is asked only when there are any."""
    marked = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not marked:
        return
    from pipeline.runtime.devices import available_gpus

    if available_gpus():
        return
    skip = pytest.mark.skip(reason="needs a GPU: TensorFlow sees none on this machine")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tiny project after one `dvc repro` with every switch on, made once per test session.

    Why once: the end-to-end tests read the same run (its log, outputs, MLflow run and registry), and the
    projects of the tracking-server and SavedModel tests start from its prepared data and converted
    backbone. Read it through `tiny_run`, which checks that the test left it unchanged; a test that
    changes a project takes `tiny_run_copy`, or `tests.tiny_project.copy_project` for a fixture's own.
    When the session ends, the run is checked to be unchanged too, whoever might have written into it.
    """
    from tests.tiny_project import build_tiny_run, unchanged

    with unchanged(build_tiny_run(tmp_path_factory.mktemp("tiny_run"))) as project:
        yield project


@pytest.fixture
def tiny_run(shared_tiny_run: Path) -> Iterator[Path]:
    """`shared_tiny_run`, read only: the test fails if it wrote, added or removed anything in it."""
    from tests.tiny_project import unchanged

    with unchanged(shared_tiny_run) as project:
        yield project


@pytest.fixture
def tiny_run_copy(shared_tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of `shared_tiny_run` of the test's own, to change at will (`tests.tiny_project.copy_project`)."""
    from tests.tiny_project import copy_project

    return copy_project(shared_tiny_run, tmp_path / "tiny_run")
