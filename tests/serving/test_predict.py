"""Prediction on files: read like the training data, exact top-k, unreadable files, folders, MC dropout, output."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from pipeline.data.datasets import image_dataset
from pipeline.model.model_card import ModelCard
from pipeline.serving import mc_dropout, predict
from pipeline.serving.predict import Reading

NAMES = ("zero", "one", "two")
GREY_CARD = ModelCard(class_names=NAMES, stored_shape=(8, 8))


def _classifier(size: int = 8, dropout: float = 0.0) -> keras.Model:
    """0..255 RGB in, three classes out, sensitive to every pixel and channel."""
    keras.utils.set_random_seed(0)
    pixels = keras.Input((size, size, 3), name="pixels")
    features = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(pixels))
    features = keras.layers.Dropout(dropout)(features)
    return keras.Model(pixels, keras.layers.Dense(3, activation="softmax")(features), name="classifier")


def _grey_images(count: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (count, size, size)).astype(np.uint8)


def _write_pngs(folder: Path, images: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        paths.append(folder / f"image{index}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def _reading(card: ModelCard | None, size: int = 8) -> Reading:
    return predict.reading_for(card, image_size=size, max_pixels=1_000_000)


def test_top_k_order_and_probabilities_equal_model_predict(tmp_path: Path) -> None:
    model = _classifier()
    images = _grey_images(3)
    paths = _write_pngs(tmp_path, images)
    results = predict.classify(model, paths, class_names=NAMES, reading=_reading(GREY_CARD), top_k=2)
    expected = model.predict(np.repeat(images[..., None], 3, axis=-1).astype(np.float32), verbose=0)
    assert [item.path for item in results] == paths
    for item, probabilities in zip(results, expected, strict=True):
        order = np.argsort(-probabilities)[:2]
        assert [score.index for score in item.top] == order.tolist()
        assert [score.name for score in item.top] == [NAMES[index] for index in order]
        np.testing.assert_allclose([score.probability for score in item.top], probabilities[order], rtol=1e-6)
        assert item.error is None and all(score.std is None for score in item.top)


def test_a_png_of_an_idx_image_gets_the_probabilities_of_evaluation(tmp_path: Path) -> None:
    # Fashion-MNIST's path: 28x28 grey arrays, resized to the model's input per batch (evaluate stage).
    model = _classifier(size=32)
    images = _grey_images(2, size=28)
    paths = _write_pngs(tmp_path, images)
    card = ModelCard(class_names=NAMES, stored_shape=(28, 28))
    results = predict.classify(model, paths, class_names=NAMES, reading=_reading(card, size=32), top_k=3)
    evaluation = model.predict(image_dataset(images, np.zeros(2), image_size=32, batch_size=2), verbose=0)
    for item, probabilities in zip(results, evaluation, strict=True):
        np.testing.assert_allclose(
            [score.probability for score in sorted(item.top, key=lambda s: s.index)], probabilities, rtol=1e-6
        )


def test_colour_files_are_converted_like_the_training_images(tmp_path: Path) -> None:
    model = _classifier()
    colour = np.random.default_rng(4).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    grey = np.asarray(Image.fromarray(colour).convert("L"))
    (result,) = predict.classify(model, [tmp_path / "colour.png"], class_names=NAMES, reading=_reading(GREY_CARD))
    expected = model.predict(np.repeat(grey[None, ..., None], 3, axis=-1).astype(np.float32), verbose=0)[0]
    np.testing.assert_allclose([score.probability for score in result.top], np.sort(expected)[::-1], rtol=1e-6)
    (as_rgb,) = predict.classify(model, [tmp_path / "colour.png"], class_names=NAMES, reading=_reading(None))
    expected_rgb = model.predict(colour[None].astype(np.float32), verbose=0)[0]
    np.testing.assert_allclose([score.probability for score in as_rgb.top], np.sort(expected_rgb)[::-1], rtol=1e-6)


def test_unreadable_and_missing_files_get_a_reason_and_the_others_are_classified(tmp_path: Path) -> None:
    model = _classifier()
    good = _write_pngs(tmp_path, _grey_images(2))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    paths = [good[0], corrupt, tmp_path / "missing.png", empty, good[1]]
    results = predict.classify(model, paths, class_names=NAMES, reading=_reading(GREY_CARD), batch_size=2)
    assert [(item.path, item.error) for item in results] == [
        (good[0], None),
        (corrupt, "not an image Pillow can read (corrupt or unknown format)"),
        (tmp_path / "missing.png", "no such file or folder"),
        (empty, "empty file (0 bytes)"),
        (good[1], None),
    ]
    assert len(results[4].top) == 3


def test_folders_are_walked_sorted_and_show_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "photos"
    _write_pngs(folder / "b", _grey_images(2))
    _write_pngs(folder, _grey_images(1))
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    results = predict.classify(
        _classifier(), [folder, tmp_path / "empty"], class_names=NAMES, reading=_reading(GREY_CARD), progress=True
    )
    assert [str(item.path.relative_to(tmp_path)) for item in results] == [
        "photos/image0.png",
        "photos/b/image0.png",
        "photos/b/image1.png",
        "empty",
    ]
    assert results[-1].error.startswith("folder without image files (.bmp, .gif, .jpeg")
    progress = capsys.readouterr().err
    assert "classifying: 100%" in progress and "3/3" in progress


def test_mc_dropout_reports_numpys_mean_and_std_over_the_passes(tmp_path: Path, monkeypatch) -> None:
    model = _classifier(dropout=0.5)
    paths = _write_pngs(tmp_path, _grey_images(3))
    drawn = []
    original_sample = mc_dropout.sample

    def recording_sample(forward, images, *, passes):
        drawn.append(original_sample(forward, images, passes=passes))
        return drawn[-1]

    monkeypatch.setattr(mc_dropout, "sample", recording_sample)
    results = predict.classify(model, paths, class_names=NAMES, reading=_reading(GREY_CARD), top_k=3, mc_passes=5)
    (samples,) = drawn
    assert samples.shape == (5, 3, 3)
    mean, std = np.mean(samples.astype(np.float64), axis=0), np.std(samples.astype(np.float64), axis=0)
    for row, item in enumerate(results):
        assert [score.index for score in item.top] == np.argsort(-mean[row], kind="stable").tolist()
        for score in item.top:
            assert (score.probability, score.std) == (mean[row, score.index], std[row, score.index])
    assert max(score.std for item in results for score in item.top) > 0.01


def test_top_classes_break_ties_by_the_lower_index() -> None:
    top = predict.top_classes(np.array([0.25, 0.5, 0.25]), NAMES, k=3, std=np.array([0.1, 0.2, 0.3]))
    assert [score.index for score in top] == [1, 0, 2]
    assert [score.std for score in top] == [0.2, 0.1, 0.3]


def test_class_names_reading_and_refusals() -> None:
    assert predict.class_names_for(None, 2) == ("class 0", "class 1")
    with pytest.raises(ValueError, match=r"the model has 2 outputs but 3 class names were found \(zero, one, two\)"):
        predict.class_names_for(NAMES, 2)
    assert _reading(None, size=32) == Reading(color="rgb", stored_size=32, image_size=32, max_pixels=1_000_000)
    card = ModelCard(class_names=NAMES, stored_shape=(20, 30))
    assert _reading(card, size=32).stored_size == 32  # not square: straight to the model's size
    inputs = keras.Input((4,))
    with pytest.raises(
        ValueError, match=r"takes inputs of shape \(None, 4\); predict needs .* \(None, size, size, 3\)"
    ):
        predict.input_size(keras.Model(inputs, keras.layers.Dense(2)(inputs), name="vector"))
    with pytest.raises(ValueError, match="top_k must be at least 1, received 0"):
        predict.classify(_classifier(), [], class_names=NAMES, reading=_reading(None), top_k=0)
