"""A local .keras file as a backbone: the flat model it becomes, its blocks, safe mode, and fine-tuning on it."""

from __future__ import annotations

import functools
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.backbones.errors import KerasFileError
from pipeline.backbones.registry import load_backbone
from pipeline.model.head import build_head
from pipeline.optim.layerwise import layerwise_class
from pipeline.params.head import HeadParams
from pipeline.params.optimizer import AdamParams
from pipeline.params.schedule import ConstantParams, OneCycleParams
from pipeline.training.recipe import Phase
from tests.backbones.test_keras_archive import BACKBONE_LAYERS, DEFAULT_BLOCKS
from tests.conftest import fine_tune_tiny, save_tiny_classifier, tiny_splits

ADAM = AdamParams(name="adam")
CONSTANT = ConstantParams(name="constant")


@pytest.fixture(scope="module")
def task_a(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, keras.Model]:
    path = tmp_path_factory.mktemp("keras") / "task_a.keras"
    model = save_tiny_classifier(path)
    return path, model


def _load(path: Path, **options):
    return load_backbone(str(path), image_size=32, cache_dir="unused", **options)


def _pixels(count: int = 4) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (count, 32, 32, 3)).astype("float32")


def _snapshot(model: keras.Model, names) -> dict[str, list[np.ndarray]]:
    return {name: [np.array(value) for value in model.get_layer(name).get_weights()] for name in names}


# Two classes of 8 px images, fed to the model at 32 px.
_fine_tune = functools.partial(fine_tune_tiny, image_size=32, splits=tiny_splits(48, 16, classes=2))


def test_backbone_computes_what_the_file_computes_up_to_the_cut(task_a) -> None:
    path, exported = task_a
    backbone = _load(path)
    assert backbone.name == "task_a"
    assert [layer.name for layer in backbone.model.layers] == ["pixels", *BACKBONE_LAYERS]
    assert [(group.name, group.layer_names) for group in backbone.blocks_top_down] == DEFAULT_BLOCKS
    inner = exported.get_layer("tiny_classifier")
    expected = keras.Model(inner.input, inner.get_layer("head_dropout_1").output).predict(
        exported.get_layer("preprocessing")(_pixels()), verbose=0
    )
    # The exported model scales its own input: the pipeline feeds 0..255 pixels through an identity.
    preprocessing = backbone.make_preprocessing()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(preprocessing(_pixels())), _pixels())
    np.testing.assert_array_equal(backbone.model.predict(_pixels(), verbose=0), expected)


def test_named_cut_and_block_prefixes(task_a) -> None:
    path, _ = task_a
    backbone = _load(path, cut_layer="top_activation", block_prefixes=["top_", "block", "stem_", "pre"])
    assert backbone.model.output.shape == (None, 8, 8, 16)
    assert backbone.block_names == ("top_", "block", "stem_", "pre")
    assert backbone.blocks_top_down[0].layer_names == ("top_conv", "top_bn", "top_activation")


def test_input_range_maps_pixels_linearly(task_a) -> None:
    path, _ = task_a
    preprocessing = _load(path, input_range=(-1.0, 1.0)).make_preprocessing()
    scaled = keras.ops.convert_to_numpy(preprocessing(np.array([[0.0, 127.5, 255.0]], "float32")))
    np.testing.assert_allclose(scaled, [[-1.0, 0.0, 1.0]], atol=1e-6)


def test_a_stray_layer_and_another_image_size_are_refused(task_a) -> None:
    path, _ = task_a
    with pytest.raises(KerasFileError, match=r"layer 'preprocessing' of .*task_a.keras starts with none of top_"):
        _load(path, cut_layer="top_activation", block_prefixes=["top_", "block", "stem_"])
    with pytest.raises(KerasFileError, match=r"task_a.keras takes 32x32 images only; received image_size 64"):
        load_backbone(str(path), image_size=64, cache_dir="unused")


def test_unsafe_file_is_refused_then_loaded_with_safe_mode_false(tmp_path: Path) -> None:
    inputs = keras.Input((32, 32, 3), name="image")
    tensor = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    tensor = keras.layers.Lambda(lambda features: features * 2.0, name="double")(tensor)
    tensor = keras.layers.GlobalAveragePooling2D(name="pool")(tensor)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(tensor))
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(KerasFileError, match=r"loads only with safe_mode=False: it holds Lambda 'double'"):
        _load(tmp_path / "lambda.keras")
    backbone = _load(tmp_path / "lambda.keras", safe_mode=False)
    assert [layer.name for layer in backbone.model.layers] == ["image", "conv", "double", "pool"]
    expected = keras.Model(model.input, model.get_layer("pool").output).predict(_pixels(), verbose=0)
    np.testing.assert_allclose(backbone.model.predict(_pixels(), verbose=0), expected, rtol=1e-6)


def test_reinitialize_draws_every_weight_afresh_from_the_same_architecture(task_a) -> None:
    path, _ = task_a
    loaded = _load(path)
    keras.utils.set_random_seed(5)
    fresh = _load(path, reinitialize=True)
    keras.utils.set_random_seed(5)
    again = _load(path, reinitialize=True)
    assert [layer.get_config() for layer in fresh.model.layers[1:]] == [
        layer.get_config() for layer in loaded.model.layers[1:]
    ]
    # The tiny file's convolutions drew from unseeded initialisers; its head's Dense layers are seeded, and an
    # untrained file holds exactly what they draw.
    for name in ("stem_conv", "block1a_conv", "top_conv"):
        assert not np.array_equal(
            fresh.model.get_layer(name).get_weights()[0], loaded.model.get_layer(name).get_weights()[0]
        )
        np.testing.assert_array_equal(
            fresh.model.get_layer(name).get_weights()[0], again.model.get_layer(name).get_weights()[0]
        )
    gamma, beta, mean, variance = fresh.model.get_layer("top_bn").get_weights()
    assert (gamma == 1).all() and (beta == 0).all() and (mean == 0).all() and (variance == 1).all()


def test_frozen_blocks_stay_bit_identical_and_unfrozen_ones_change(task_a) -> None:
    path, _ = task_a
    backbone = _load(path)
    classifier = build_head(backbone, HeadParams(dropout=0.0), num_classes=2, seed=0)
    layers = [name for group in backbone.blocks_top_down for name in group.layer_names]
    weighted = [name for name in layers if classifier.model.get_layer(name).weights]
    before = _snapshot(classifier.model, weighted)
    _fine_tune(classifier, [Phase("frozen", 0, 1, 0.01, optimizer=ADAM, schedule=CONSTANT)])
    after_frozen = _snapshot(classifier.model, weighted)
    for name in weighted:
        for old, new in zip(before[name], after_frozen[name], strict=True):
            np.testing.assert_array_equal(old, new, err_msg=name)
    # The top 4 blocks: the old head's BN and Dense, top_bn and top_conv.
    _fine_tune(
        classifier, [Phase("unfreeze_top_4", 4, 1, 0.01, optimizer=ADAM, schedule=CONSTANT, bn_policy="trainable")]
    )
    after = _snapshot(classifier.model, weighted)
    unfrozen = {"tiny_classifier_head_bn_1", "tiny_classifier_head_dense_1", "top_bn", "top_conv"}
    for name in weighted:
        changed = [not np.array_equal(old, new) for old, new in zip(after_frozen[name], after[name], strict=True)]
        assert all(changed) if name in unfrozen else not any(changed), name


def test_cached_training_equals_training_on_images(task_a) -> None:
    path, _ = task_a
    phases = [
        Phase("frozen", 0, 1, 0.01, optimizer=ADAM, schedule=CONSTANT),
        Phase("unfreeze_top_3", 3, 1, 0.005, optimizer=ADAM, schedule=CONSTANT, bn_policy="trainable"),
    ]
    results = []
    for cache_bytes in (1 << 30, 0):
        keras.utils.set_random_seed(0)
        classifier = build_head(_load(path), HeadParams(dropout=0.0, hidden_units=[4]), num_classes=2, seed=0)
        history = _fine_tune(classifier, phases, cache_bytes=cache_bytes)
        assert [phase.cached_features for phase in history.phases] == [cache_bytes > 0] * 2
        results.append([row["val_loss"] for row in history.rows])
    assert results[0] == pytest.approx(results[1], rel=1e-4)


def test_every_switch_works_on_a_keras_file_backbone(task_a) -> None:
    path, _ = task_a
    classifier = build_head(
        _load(path),
        HeadParams(hidden_units=[4], activation="maxout", batch_norm="after", dropout=0.1),
        num_classes=2,
        seed=0,
    )
    # The head as asked: dropout 0.1 on the features, a maxout of 4 units of 2 pieces, BatchNorm after it.
    assert [(layer.name, type(layer).__name__) for layer in classifier.model.layers[-7:]] == [
        ("head_pool", "Identity"),
        ("head_dropout", "Dropout"),
        ("head_dense_1", "Dense"),
        ("head_maxout_reshape_1", "Reshape"),
        ("head_activation_1", "GlobalMaxPooling1D"),
        ("head_bn_1", "BatchNormalization"),
        ("head_predictions", "Dense"),
    ]
    assert classifier.model.get_layer("head_dropout").rate == 0.1
    assert classifier.model.get_layer("head_dense_1").units == 8
    assert classifier.model.get_layer("head_activation_1").output.shape == (None, 4)
    before = {variable.path: np.array(variable) for variable in classifier.model.weights}
    onecycle = OneCycleParams(name="onecycle")
    history = _fine_tune(
        classifier,
        [
            Phase("frozen", 0, 1, 0.01, optimizer=ADAM, schedule=onecycle),
            Phase(
                "unfreeze_all",
                10,
                1,
                0.004,
                optimizer=ADAM,
                schedule=CONSTANT,
                bn_policy="affine",
                lr_decay_per_block=2.0,
            ),
        ],
    )
    assert all(np.isfinite(row["loss"]) for row in history.rows)
    rows = {row.layer: row for row in history.layers if row.phase == 1}
    assert rows["head_predictions"].lr_multiplier == 1.0
    assert rows["tiny_classifier_head_bn_1"].lr_multiplier == 0.5
    assert rows["tiny_classifier_head_bn_1"].batch_norm == "affine"
    assert rows["stem_conv"].lr_multiplier == 0.5**10
    assert history.phases[1].cached_features is False
    # 1cycle ran the frozen phase (cached): its one epoch of 3 steps ended at the final LR, 0.01 / 25 / 1e4;
    # the unfreeze phase ran at its constant 0.004.
    assert [phase.cached_features for phase in history.phases] == [True, False]
    assert [row["lr"] for row in history.rows] == pytest.approx([0.01 / 25 / 1e4, 0.004], rel=1e-6)
    # The unfreeze phase's optimiser is Adam with one LR multiplier per block, halving block by block down
    # from the head (1, unlisted) to the stem (1 / 2 ** 10); its beta_1 is Adam's 0.9 (1cycle's momentum
    # cycling belonged to the frozen phase's optimiser).
    optimizer = classifier.model.optimizer
    assert type(optimizer) is layerwise_class(keras.optimizers.Adam)
    assert (float(optimizer.learning_rate), optimizer.beta_1, int(optimizer.iterations)) == pytest.approx(
        (0.004, 0.9, 3)
    )
    assert optimizer.variable_multipliers == {
        "tiny_classifier_head_bn_1/gamma": 0.5,
        "tiny_classifier_head_bn_1/beta": 0.5,
        "tiny_classifier_head_dense_1/kernel": 0.5**2,
        "top_bn/gamma": 0.5**3,
        "top_bn/beta": 0.5**3,
        "top_conv/kernel": 0.5**4,
        "block2a_bn/gamma": 0.5**5,
        "block2a_bn/beta": 0.5**5,
        "block2a_conv/kernel": 0.5**6,
        "block1a_bn/gamma": 0.5**7,
        "block1a_bn/beta": 0.5**7,
        "block1a_conv/kernel": 0.5**8,
        "stem_bn/gamma": 0.5**9,
        "stem_bn/beta": 0.5**9,
        "stem_conv/kernel": 0.5**10,
    }
    # Every weight trained, except the backbone's BatchNorm statistics: affine trains gamma and beta with the
    # moving statistics fixed (the head's BatchNorm normalises with its batches, so its statistics moved).
    after = {variable.path: np.array(variable) for variable in classifier.model.weights}
    unchanged = sorted(path for path in after if np.array_equal(after[path], before[path]))
    assert unchanged == sorted(
        f"{name}/{statistic}"
        for name in ("stem_bn", "block1a_bn", "block2a_bn", "top_bn", "tiny_classifier_head_bn_1")
        for statistic in ("moving_mean", "moving_variance")
    )


def test_a_model_trained_from_a_keras_file_is_a_keras_file_backbone_again(task_a, tmp_path: Path) -> None:
    from pipeline.model.export import end_to_end_model, save_model

    path, _ = task_a
    backbone = _load(path)
    classifier = build_head(backbone, HeadParams(dropout=0.0, hidden_units=[4]), num_classes=2, seed=0)
    save_model(end_to_end_model(classifier.model, backbone.make_preprocessing(), image_size=32), tmp_path / "b.keras")
    task_c = _load(tmp_path / "b.keras")
    names = [layer.name for layer in task_c.model.layers]
    assert names[:3] == ["pixels", "preprocessing", "task_a_classifier_preprocessing"]
    # Its own head (hidden Dense and ReLU under the new classifier's name), cut below its softmax.
    assert names[-3:] == [
        "task_a_classifier_head_dropout",
        "task_a_classifier_head_dense_1",
        "task_a_classifier_head_activation_1",
    ]
    assert task_c.block_names[:2] == ("task_a_classifier_head_dense_1", "tiny_classifier_head_bn_1")


def test_a_sequential_model_unrolls_its_nested_sequential(tmp_path: Path) -> None:
    inner = keras.Sequential([keras.layers.Conv2D(4, 3, name="conv"), keras.layers.ReLU(name="relu")], name="stage")
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3), name="image"),
            inner,
            keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dense(2, name="out"),
        ],
        name="mlp",
    )
    model.save(tmp_path / "sequential.keras")
    backbone = _load(tmp_path / "sequential.keras")
    assert [layer.name for layer in backbone.model.layers] == ["image", "conv", "relu", "pool"]
    assert backbone.block_names == ("conv",)
    expected = keras.Model(model.inputs, model.get_layer("pool").output).predict(_pixels(), verbose=0)
    np.testing.assert_allclose(backbone.model.predict(_pixels(), verbose=0), expected, rtol=1e-6)


def test_layers_saved_under_mixed_precision_follow_this_runs_policy(tmp_path: Path) -> None:
    keras.config.set_dtype_policy("mixed_float16")
    try:
        inputs = keras.Input((32, 32, 3), name="image")
        tensor = keras.layers.Conv2D(4, 3, name="conv")(inputs)
        tensor = keras.layers.GlobalAveragePooling2D(name="pool")(tensor)
        outputs = keras.layers.Dense(2, dtype="float32", name="out")(tensor)
        keras.Model(inputs, outputs).save(tmp_path / "mixed.keras")
    finally:
        keras.config.set_dtype_policy("float32")
    backbone = _load(tmp_path / "mixed.keras")
    assert backbone.model.get_layer("conv").dtype_policy.name == "float32"
