"""Export: preprocessing folded into the model, atomic save, lossless reload, a SavedModel served without Keras."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.backbones.hub import load_hub_backbone
from pipeline.model.export import end_to_end_model, export_saved_model, holds_saved_model_layer, load_model, save_model
from pipeline.model.head import build_head
from pipeline.params.head import HeadParams
from pipeline.params.optimizer import AdamParams
from pipeline.params.schedule import ConstantParams
from pipeline.training.features import ImageSplit, InputSettings
from pipeline.training.recipe import Phase, fine_tune
from tests.conftest import export_tiny_saved_model, make_images


def test_end_to_end_model_applies_the_preprocessing(tiny_backbone) -> None:
    backbone = tiny_backbone()
    classifier = build_head(backbone, HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    model = end_to_end_model(classifier.model, backbone.make_preprocessing(), image_size=16)
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
    expected = classifier.model.predict(pixels / 127.5 - 1.0, verbose=0)
    np.testing.assert_allclose(model.predict(pixels, verbose=0), expected, rtol=1e-5, atol=1e-6)
    assert model.input_shape == (None, 16, 16, 3)


def test_save_and_load_round_trip_keeps_weights_and_trainable_flags(tiny_backbone, tmp_path: Path) -> None:
    classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    classifier.model.get_layer("stem_conv").trainable = False
    path = save_model(classifier.model, tmp_path / "out" / "model.keras")
    assert path == tmp_path / "out" / "model.keras"
    assert sorted(item.name for item in path.parent.iterdir()) == ["model.keras"]
    loaded = load_model(path)
    assert loaded.get_layer("stem_conv").trainable is False
    for left, right in zip(classifier.model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(left, right)


def test_failed_save_leaves_the_previous_file(tiny_backbone, tmp_path: Path, monkeypatch) -> None:
    classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    path = save_model(classifier.model, tmp_path / "model.keras")
    before = path.read_bytes()

    def broken_save(self: keras.Model, filepath: str, **kwargs: object) -> None:
        Path(filepath).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_model(classifier.model, path)
    assert path.read_bytes() == before
    assert sorted(item.name for item in tmp_path.iterdir()) == ["model.keras"]


def test_a_model_on_a_saved_model_reloads_with_its_fine_tuned_weights(tiny_backbone, tmp_path: Path) -> None:
    backbone = load_hub_backbone(export_tiny_saved_model(tmp_path / "saved"), image_size=16, cache_dir=tmp_path)
    classifier = build_head(backbone, HeadParams(dropout=0.0), num_classes=3, seed=0)
    # fine_tune compiles the classifier itself for the unfreeze phase (one block: all of it), with layer-wise LRs.
    adam, constant = AdamParams(name="adam"), ConstantParams(name="constant")
    phases = [
        Phase("frozen", 0, 1, 0.05, adam, constant),
        Phase("unfreeze_all", 1, 2, 0.05, adam, constant, bn_policy="affine", lr_decay_per_block=2.0),
    ]
    train = ImageSplit(*make_images(16, 3, seed=1))
    fine_tune(
        classifier,
        train=train,
        val=train,
        phases=phases,
        inputs=InputSettings(image_size=16, batch_size=8, seed=0, cache_limit_bytes=1 << 30),
        verbose=0,
    )
    model = end_to_end_model(classifier.model, backbone.make_preprocessing(), image_size=16)
    path = save_model(model, tmp_path / "model.keras")
    pixels = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype(np.float32)

    assert holds_saved_model_layer(path) is True
    with zipfile.ZipFile(path) as archive:
        assert "LayerwiseAdam" not in archive.read("config.json").decode()  # no optimiser saved
    with pytest.raises(ValueError, match="Requested the deserialization of a `TFSMLayer`"):
        keras.saving.load_model(path)
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.predict(pixels, verbose=0), model.predict(pixels, verbose=0))
    fine_tuned = [np.array(variable) for variable in backbone.model.get_layer("saved_model").variables]
    original = load_hub_backbone(str(tmp_path / "saved"), image_size=16, cache_dir=tmp_path)
    pristine = [np.array(variable) for variable in original.model.get_layer("saved_model").variables]
    assert not np.array_equal(fine_tuned[0], pristine[0])
    reloaded = [
        np.array(variable) for variable in loaded.get_layer(classifier.model.name).get_layer("saved_model").variables
    ]
    for left, right in zip(reloaded, fine_tuned, strict=True):
        np.testing.assert_array_equal(left, right)

    plain = save_model(
        build_head(tiny_backbone(), HeadParams(dropout=0.0), num_classes=3, seed=0).model, tmp_path / "plain.keras"
    )
    assert holds_saved_model_layer(plain) is False


# Run in a child process where `import keras` fails: what it loads and calls cannot be using Keras.
_SERVE_WITHOUT_KERAS = """
import json, sys
sys.modules["keras"] = None
sys.modules["tf_keras"] = None
import numpy as np
import tensorflow as tf

served = tf.saved_model.load(sys.argv[1])
pixels = np.load(sys.argv[2])
probabilities = served.serve(tf.constant(pixels)).numpy()
loaded = sorted(name for name, module in sys.modules.items() if name.split(".")[0] == "keras" and module is not None)
print(json.dumps({"probabilities": probabilities.tolist(), "keras_modules": loaded}))
"""


def test_saved_model_serves_the_same_probabilities_without_keras(tiny_backbone, tmp_path: Path) -> None:
    backbone = tiny_backbone()
    classifier = build_head(backbone, HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    model = end_to_end_model(classifier.model, backbone.make_preprocessing(), image_size=16)
    directory = export_saved_model(model, tmp_path / "models" / "saved_model")
    assert directory == tmp_path / "models" / "saved_model"
    assert sorted(item.name for item in directory.parent.iterdir()) == ["saved_model"]  # no temporary left
    assert (directory / "saved_model.pb").is_file()
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
    np.save(tmp_path / "pixels.npy", pixels)
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", _SERVE_WITHOUT_KERAS, str(directory), str(tmp_path / "pixels.npy")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served["keras_modules"] == []
    np.testing.assert_allclose(served["probabilities"], model.predict(pixels, verbose=0), rtol=1e-5, atol=1e-6)


def test_saved_model_export_replaces_the_previous_one(tiny_backbone, tmp_path: Path) -> None:
    backbone = tiny_backbone()
    classifier = build_head(backbone, HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    model = end_to_end_model(classifier.model, backbone.make_preprocessing(), image_size=16)
    directory = tmp_path / "saved_model"
    directory.mkdir()
    (directory / "stale.txt").write_text("from an earlier run")
    export_saved_model(model, directory)
    assert sorted(item.name for item in directory.iterdir()) == sorted(
        ["assets", "fingerprint.pb", "saved_model.pb", "variables"]
    )
    assert sorted(item.name for item in tmp_path.iterdir()) == ["saved_model"]


def test_a_model_with_a_lambda_loads_only_outside_safe_mode(tmp_path: Path) -> None:
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda values: values * 2.0, name="double")(inputs))
    path = save_model(model, tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="Requested the deserialization of a `Lambda` layer"):
        load_model(path)
    np.testing.assert_array_equal(load_model(path, safe_mode=False).predict(np.ones((1, 4)), verbose=0), [[2.0] * 4])
