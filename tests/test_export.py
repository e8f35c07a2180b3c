"""Export: preprocessing folded into the model, atomic save, lossless reload."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.export import end_to_end_model, load_model, save_model
from pipeline.head import attach_head


def test_end_to_end_model_applies_the_preprocessing(tiny_backbone) -> None:
    backbone = tiny_backbone()
    classifier = attach_head(backbone, num_classes=3, pooling="avg", dropout=0.0, seed=0)
    model = end_to_end_model(classifier.model, backbone.make_preprocessing(), image_size=16)
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
    expected = classifier.model.predict(pixels / 127.5 - 1.0, verbose=0)
    np.testing.assert_allclose(model.predict(pixels, verbose=0), expected, rtol=1e-5, atol=1e-6)
    assert model.input_shape == (None, 16, 16, 3)


def test_save_and_load_round_trip_keeps_weights_and_trainable_flags(tiny_backbone, tmp_path: Path) -> None:
    classifier = attach_head(tiny_backbone(), num_classes=3, pooling="avg", dropout=0.0, seed=0)
    classifier.model.get_layer("stem_conv").trainable = False
    path = save_model(classifier.model, tmp_path / "out" / "model.keras")
    assert path == tmp_path / "out" / "model.keras"
    assert sorted(item.name for item in path.parent.iterdir()) == ["model.keras"]
    loaded = load_model(path)
    assert loaded.get_layer("stem_conv").trainable is False
    for left, right in zip(classifier.model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(left, right)


def test_failed_save_leaves_the_previous_file(tiny_backbone, tmp_path: Path, monkeypatch) -> None:
    classifier = attach_head(tiny_backbone(), num_classes=3, pooling="avg", dropout=0.0, seed=0)
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


def test_a_model_with_a_lambda_loads_only_outside_safe_mode(tmp_path: Path) -> None:
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda values: values * 2.0, name="double")(inputs))
    path = save_model(model, tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="Requested the deserialization of a `Lambda` layer"):
        load_model(path)
    np.testing.assert_array_equal(load_model(path, safe_mode=False).predict(np.ones((1, 4)), verbose=0), [[2.0] * 4])
