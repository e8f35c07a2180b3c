"""The backbone section of the params schema (pipeline/params/backbone.py): names, sizes, weights, and the
keys of each kind (a .keras file is read without TensorFlow, and refused with the key to change)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.params import parse
from tests.params.conftest import LITE0_BLOCKS, error_message, keras_backbone, saved_model_dir


def test_unknown_backbone_lists_registered_names() -> None:
    message = error_message({"backbone": {"name": "resnet5"}})

    assert "backbone.name: received 'resnet5'" in message
    assert (
        "registered backbones: efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, mobilenet, mobilenet_v2"
        in message
    )
    assert "resnet50, resnet50_v2" in message


def test_backbone_input_size_and_weights_are_checked() -> None:
    message = error_message({"backbone": {"name": "inception_v3", "image_size": 64}})
    assert "backbone.image_size: received 64; inception_v3 takes inputs of at least 75 px" in message
    message = error_message({"backbone": {"name": "resnet50", "weights": "/no/such.weights.h5"}})
    assert (
        "backbone.weights: received '/no/such.weights.h5'; not a file; allowed: imagenet, none, or the path of a "
        "Keras weights file" in message
    )


def test_backbone_name_takes_a_hub_handle_or_a_saved_model_directory(tmp_path: Path) -> None:
    handle = "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5"
    assert parse({"backbone": {"name": handle}}).backbone.block_names() == ("saved_model",)
    directory = saved_model_dir(tmp_path)
    params = parse({"backbone": {"name": directory, "signature": "serving_default", "output_key": "features"}})
    assert (params.backbone.kind(), params.backbone.signature, params.backbone.output_key) == (
        "hub",
        "serving_default",
        "features",
    )
    assert parse({"backbone": {"name": "resnet50"}}).backbone.block_names() == (
        "conv5",
        "conv4",
        "conv3",
        "conv2",
        "stem",
    )


def test_a_directory_that_is_not_a_saved_model_is_refused(tmp_path: Path) -> None:
    message = error_message({"backbone": {"name": str(tmp_path)}})
    assert (
        f"backbone.name: received {str(tmp_path)!r}; this directory holds no saved_model.pb, so it is not a SavedModel"
        in message
    )
    message = error_message({"backbone": {"name": str(tmp_path / "missing")}})
    assert f"no directory {tmp_path / 'missing'} exists; registered backbones: efficientnet_lite0" in message
    assert "or a TF Hub handle (an http:// or https:// URL), a SavedModel directory, or a .keras file" in message


def test_a_key_for_another_kind_of_backbone_is_refused(tmp_path: Path) -> None:
    message = error_message({"backbone": {"name": "resnet50", "signature": "serve", "input_range": [0, 1]}})
    # The first key in alphabetical order is named; the user fixes one and learns of the next.
    assert message.splitlines()[1] == (
        "  backbone.input_range applies to TF Hub handles, SavedModel directories and .keras files only, and "
        "backbone.name 'resnet50' is a registered backbone; remove backbone.input_range"
    )
    message = error_message({"backbone": {"name": "resnet50", "signature": "serve"}})
    assert (
        "backbone.signature applies to TF Hub handles and SavedModel directories only, and backbone.name "
        "'resnet50' is a registered backbone; remove backbone.signature" in message
    )
    directory = saved_model_dir(tmp_path)
    message = error_message({"backbone": {"name": directory, "weights": "none"}})
    assert (
        f"backbone.weights applies to registered backbones only, and backbone.name '{directory}' is a TF Hub "
        "handle or SavedModel directory (a SavedModel holds its own weights); remove backbone.weights" in message
    )
    message = error_message({"backbone": {"name": directory, "input_range": [1, -1]}})
    assert "backbone.input_range: received [1, -1]; give [low, high] with low < high" in message


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_scaled_lite_has_lite0s_blocks_and_input_sizes(name) -> None:
    params = parse(
        {
            "backbone": {"name": name, "image_size": 32},
            "train": {"unfreeze": [{"blocks": 9, "epochs": 1, "lr_factor": 0.1}]},
        }
    )
    assert params.backbone.name == name
    message = error_message({"backbone": {"name": name, "image_size": 31}})
    assert "backbone.image_size: received 31; " in message
    message = error_message(
        {"backbone": {"name": name}, "train": {"unfreeze": [{"blocks": 10, "epochs": 1, "lr_factor": 0.1}]}}
    )
    assert f"{name} has 9 blocks (top-down: {LITE0_BLOCKS})" in message


def test_keras_file_blocks_are_read_from_the_file(keras_file: str) -> None:
    backbone = parse({"backbone": keras_backbone(keras_file)}).backbone

    assert backbone.block_names()[:3] == ("tiny_classifier_head_bn_1", "tiny_classifier_head_dense_1", "top_bn")
    assert len(backbone.block_names()) == 10
    assert (backbone.cut_layer, backbone.block_prefixes, backbone.safe_mode, backbone.reinitialize) == (
        None,
        None,
        True,
        False,
    )
    prefixed = parse(
        {"backbone": keras_backbone(keras_file, cut_layer="top_bn", block_prefixes=["top", "block", "stem", "pre"])}
    ).backbone
    assert prefixed.block_names() == ("top", "block", "stem", "pre")


def test_missing_keras_file_says_what_is_allowed(tmp_path: Path) -> None:
    message = error_message({"backbone": {"name": str(tmp_path / "task_a.keras")}})

    assert (
        f"backbone.name: received '{tmp_path / 'task_a.keras'}'; {tmp_path / 'task_a.keras'}: no such file" in message
    )
    assert "allowed: a registered backbone, a TF Hub handle, or an existing .keras file" in message


def test_keras_file_image_size_must_be_the_files(keras_file: str) -> None:
    message = error_message({"backbone": {"name": keras_file, "image_size": 64}})

    assert message.splitlines()[1] == (
        f"  backbone.image_size is 64, but {keras_file} takes 32x32 images only; set backbone.image_size: 32"
    )


def test_keras_file_unknown_cut_layer_and_stray_layer(keras_file: str) -> None:
    message = error_message({"backbone": keras_backbone(keras_file, cut_layer="top_actvation")})
    assert message.splitlines()[1].startswith(
        f"  backbone.cut_layer 'top_actvation' is not a layer of {keras_file}; close names: top_activation"
    )
    message = error_message(
        {"backbone": keras_backbone(keras_file, cut_layer="top_bn", block_prefixes=["top", "block", "stem"])}
    )
    assert message.splitlines()[1] == (
        f"  backbone.block_prefixes: layer 'preprocessing' of {keras_file} starts with none of top, block, stem; "
        "every layer below the cut must belong to a block"
    )
    message = error_message({"backbone": keras_backbone(keras_file, block_prefixes=["top", "top"])})
    assert "backbone.block_prefixes: received ['top', 'top']; each prefix may name one block only" in message


def test_unsafe_keras_file_is_refused_unless_safe_mode_is_off(tmp_path: Path) -> None:
    import keras

    inputs = keras.Input((32, 32, 3))
    tensor = keras.layers.Conv2D(2, 3, name="conv")(inputs)
    tensor = keras.layers.Lambda(lambda features: features * 2.0, name="double")(tensor)
    tensor = keras.layers.GlobalAveragePooling2D(name="pool")(tensor)
    keras.Model(inputs, keras.layers.Dense(2, name="out")(tensor)).save(tmp_path / "lambda.keras")
    path = str(tmp_path / "lambda.keras")

    message = error_message({"backbone": keras_backbone(path)})
    assert message.splitlines()[1] == (
        f"  backbone.safe_mode is true, but {path} loads only with safe_mode=False: it holds Lambda 'double' (the "
        "Python bytecode of a Lambda layer's function), which loading it would execute; set backbone.safe_mode: "
        "false only if you trust the file"
    )
    assert parse({"backbone": keras_backbone(path, safe_mode=False)}).backbone.block_names() == ("conv",)


@pytest.mark.parametrize(
    ("backbone", "expected"),
    [
        (
            {"name": "resnet50", "cut_layer": "conv5_block3_out"},
            "backbone.cut_layer applies to .keras files only, and backbone.name 'resnet50' is a registered "
            "backbone; remove backbone.cut_layer",
        ),
        (
            {"name": "resnet50", "input_range": [0, 1]},
            "backbone.input_range applies to TF Hub handles, SavedModel directories and .keras files only, and "
            "backbone.name 'resnet50' is a registered backbone; remove backbone.input_range",
        ),
        ({"name": "resnet50", "safe_mode": False}, "backbone.safe_mode applies to .keras files only"),
        ({"name": "resnet50", "reinitialize": True}, "backbone.reinitialize applies to .keras files only"),
    ],
)
def test_backbone_keys_of_another_kind_are_refused(backbone: dict[str, Any], expected: str) -> None:
    assert expected in error_message({"backbone": backbone})


def test_weights_of_a_keras_file_are_refused(keras_file: str) -> None:
    message = error_message({"backbone": keras_backbone(keras_file, weights="none")})

    assert message.splitlines()[1] == (
        f"  backbone.weights applies to registered backbones only, and backbone.name '{keras_file}' is a .keras "
        "file (a .keras file brings its own weights; reinitialize: true draws fresh ones); remove backbone.weights"
    )


def test_input_range_must_rise(keras_file: str) -> None:
    message = error_message({"backbone": keras_backbone(keras_file, input_range=[1, 0])})

    assert "backbone.input_range: received [1, 0]; give [low, high] with low < high" in message


def test_each_kind_passes_only_its_own_options(keras_file: str, tmp_path: Path) -> None:
    assert parse({"backbone": {"name": "resnet50"}}).backbone.kind_options() == {}
    hub = parse({"backbone": {"name": saved_model_dir(tmp_path), "output_key": "features"}}).backbone
    assert hub.kind_options() == {
        "signature": None,
        "training_signature": None,
        "output_key": "features",
        "input_range": None,
    }
    local = parse({"backbone": keras_backbone(keras_file, safe_mode=True, input_range=[0, 1])}).backbone
    assert local.kind_options() == {
        "input_range": (0.0, 1.0),
        "cut_layer": None,
        "block_prefixes": None,
        "safe_mode": True,
        "reinitialize": False,
    }
