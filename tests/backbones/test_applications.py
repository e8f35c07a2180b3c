"""keras.applications backbones: block maps per family, preprocessing, weights, and fine-tuning on each kind."""

from __future__ import annotations

import re
import urllib.error

import keras
import numpy as np
import pytest

from pipeline.backbones.applications import APPLICATIONS
from pipeline.backbones.names import BACKBONE_BLOCKS
from pipeline.backbones.registry import application_preprocessing, load_backbone
from pipeline.model.freezing import set_trainable_blocks
from pipeline.model.head import build_head
from pipeline.params.head import HeadParams
from pipeline.params.optimizer import AdamParams
from pipeline.params.schedule import ConstantParams
from pipeline.training.features import ImageSplit, InputSettings
from pipeline.training.recipe import Phase, fine_tune
from tests.conftest import make_images

# One variant per family, at the smallest input Keras accepts.
FAMILIES = (
    "mobilenet",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "xception",
    "inception_v3",
    "inception_resnet_v2",
    "nasnet_mobile",
    "vgg16",
    "efficientnet_b0",
    "efficientnet_v2_b0",
    "resnet50",
    "resnet50_v2",
    "densenet121",
    "convnext_tiny",
)


def _build(name: str, tmp_path, **options):
    keras.utils.set_random_seed(0)
    return load_backbone(name, image_size=APPLICATIONS[name].min_size, cache_dir=tmp_path, weights="none", **options)


def test_every_family_is_offered() -> None:
    constructors = {spec.constructor for spec in APPLICATIONS.values()}
    shipped = {name for name in dir(keras.applications) if name[0].isupper()}
    assert constructors == shipped


def _check_covers_every_layer_once_and_cuts_the_graph(name: str, backbone) -> None:
    assert backbone.block_names == BACKBONE_BLOCKS[name]
    bottom_up = [layer for group in reversed(backbone.blocks_top_down) for layer in group.layer_names]
    assert bottom_up == [layer.name for layer in backbone.model.layers[1:]]
    model = backbone.model
    for lower in backbone.blocks_top_down[1:]:
        # A block boundary is one tensor: the upper part is a model of its own from there.
        cut = model.get_layer(lower.layer_names[-1]).output
        upper = keras.Model(cut, model.output)
        assert {layer.name for layer in upper.layers[1:]} == {
            layer
            for group in backbone.blocks_top_down[: backbone.blocks_top_down.index(lower)]
            for layer in group.layer_names
        }


def _check_top_blocks_unfrozen_are_exactly_their_layers(backbone, blocks: int) -> None:
    set_trainable_blocks(backbone.model, backbone.blocks_top_down, trainable_blocks=blocks, bn_policy="trainable")
    expected = {layer for group in backbone.blocks_top_down[:blocks] for layer in group.layer_names}
    trainable = {layer.name for layer in backbone.model.layers[1:] if layer.trainable}
    assert trainable == expected
    frozen_weights = [weight for weight in backbone.model.weights if not weight.trainable]
    top_weights = {weight.path for layer in expected for weight in backbone.model.get_layer(layer).trainable_weights}
    assert top_weights
    assert not top_weights & {weight.path for weight in frozen_weights}


@pytest.mark.parametrize("name", FAMILIES)
def test_block_map_covers_every_layer_once_and_cuts_the_graph(name: str, tmp_path) -> None:
    _check_covers_every_layer_once_and_cuts_the_graph(name, _build(name, tmp_path))


@pytest.mark.parametrize("name", FAMILIES)
def test_top_two_blocks_unfrozen_are_exactly_their_layers(name: str, tmp_path) -> None:
    _check_top_blocks_unfrozen_are_exactly_their_layers(_build(name, tmp_path), 2)


@pytest.mark.parametrize(("name", "layers"), [("nasnet_mobile", 769), ("nasnet_large", 1039)])
def test_nasnet_is_one_block_of_cells_above_the_stem_convolution(name: str, layers: int, tmp_path) -> None:
    # NASNetLarge takes ~8 s to build on 2 cores: one build serves every check.
    backbone = _build(name, tmp_path)
    assert APPLICATIONS[name].min_size == 32
    with pytest.raises(ValueError, match="at least 32x32"):
        load_backbone(name, image_size=31, cache_dir=tmp_path, weights="none")
    cells, stem = backbone.blocks_top_down
    assert (cells.name, stem.name) == ("cells", "stem")
    assert stem.layer_names == ("stem_conv1", "stem_bn1")
    assert len(backbone.model.layers) == layers
    # The stem's ReLU: Keras numbers generic names per session.
    assert re.fullmatch(r"activation(_\d+)?", cells.layer_names[0])
    assert cells.layer_names[-1] == backbone.model.layers[-1].name
    _check_covers_every_layer_once_and_cuts_the_graph(name, backbone)
    _check_top_blocks_unfrozen_are_exactly_their_layers(backbone, 1)


def test_upper_part_from_a_cut_computes_what_the_whole_model_does(tmp_path) -> None:
    backbone = _build("inception_v3", tmp_path)
    model = backbone.model
    images = np.random.default_rng(0).uniform(-1, 1, (2, 75, 75, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    for lower in backbone.blocks_top_down[1:4]:
        cut = model.get_layer(lower.layer_names[-1]).output
        lower_part, upper_part = keras.Model(model.input, cut), keras.Model(cut, model.output)
        np.testing.assert_allclose(
            upper_part.predict(lower_part.predict(images, verbose=0), verbose=0), expected, rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize(
    ("mode", "module"),
    [("tf", "mobilenet_v2"), ("torch", "densenet"), ("caffe", "resnet50"), ("builtin", "efficientnet")],
)
def test_preprocessing_layer_matches_the_familys_preprocess_input(mode: str, module: str) -> None:
    images = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = getattr(keras.applications, module).preprocess_input(images.copy())
    layer = application_preprocessing(mode)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(images)), expected, rtol=1e-5, atol=1e-4)
    assert not layer.trainable_weights


def test_weights_from_a_file_are_loaded(tmp_path) -> None:
    source = _build("mobilenet_v2", tmp_path)
    path = tmp_path / "mine.weights.h5"
    source.model.save_weights(path)
    keras.utils.set_random_seed(1)
    loaded = load_backbone("mobilenet_v2", image_size=32, cache_dir=tmp_path, weights=str(path))
    for saved, restored in zip(source.model.get_weights(), loaded.model.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, restored)
    keras.utils.set_random_seed(1)
    fresh = load_backbone("mobilenet_v2", image_size=32, cache_dir=tmp_path, weights="none")
    assert not all(
        np.array_equal(a, b) for a, b in zip(source.model.get_weights(), fresh.model.get_weights(), strict=True)
    )


def test_missing_imagenet_weights_offline_name_the_file_and_folder(tmp_path, monkeypatch) -> None:
    from keras.src.utils import file_utils

    def no_network(origin: str, *_arguments) -> None:
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(FileNotFoundError) as raised:
        load_backbone("resnet50", image_size=32, cache_dir=tmp_path, weights="imagenet")
    message = str(raised.value)
    assert "place resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 (from https://" in message
    assert f"in {tmp_path / 'keras' / 'models'} (KERAS_HOME/models)" in message


@pytest.mark.parametrize("name", ["vgg16", "densenet121"])
def test_fine_tuning_on_cached_features_equals_training_on_images(name: str, tmp_path) -> None:
    images, labels = make_images(48, 3, seed=1, size=8)
    val_images, val_labels = make_images(12, 3, seed=2, size=8)
    phases = [
        Phase("frozen", 0, 1, 0.01, optimizer=AdamParams(name="adam"), schedule=ConstantParams(name="constant")),
        # Adam at 1e-3 blew the random-init VGG16 up (loss 20 on 3 classes), which training now refuses.
        Phase("top", 2, 1, 0.0001, optimizer=AdamParams(name="adam"), schedule=ConstantParams(name="constant")),
    ]
    results = []
    for cache_bytes in (1 << 30, 0):
        backbone = _build(name, tmp_path)
        classifier = build_head(backbone, HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
        history = fine_tune(
            classifier,
            train=ImageSplit(images, labels),
            val=ImageSplit(val_images, val_labels),
            phases=phases,
            inputs=InputSettings(image_size=32, batch_size=16, seed=0, cache_limit_bytes=cache_bytes),
            verbose=0,
        )
        assert [phase.cached_features for phase in history.phases] == [cache_bytes > 0] * 2
        results.append([row["val_loss"] for row in history.rows])
    assert results[0] == pytest.approx(results[1], rel=1e-4)
