""".keras files read without TensorFlow: the flattened graph, default and named cuts, blocks, and refusals."""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras
import pytest

from pipeline.backbones.errors import KerasFileError
from pipeline.backbones.keras_archive import archive_blocks, read_keras_archive
from tests.conftest import save_tiny_classifier

BACKBONE_LAYERS = [
    "preprocessing",
    "stem_conv",
    "stem_bn",
    "stem_activation",
    "block1a_conv",
    "block1a_bn",
    "block1a_activation",
    "block2a_conv",
    "block2a_bn",
    "block2a_activation",
    "top_conv",
    "top_bn",
    "top_activation",
    "tiny_classifier_head_pool",
    "tiny_classifier_head_dropout",
    "tiny_classifier_head_dense_1",
    "tiny_classifier_head_bn_1",
    "tiny_classifier_head_activation_1",
    "tiny_classifier_head_dropout_1",
]
DEFAULT_BLOCKS = [
    (
        "tiny_classifier_head_bn_1",
        ("tiny_classifier_head_bn_1", "tiny_classifier_head_activation_1", "tiny_classifier_head_dropout_1"),
    ),
    ("tiny_classifier_head_dense_1", ("tiny_classifier_head_dense_1",)),
    ("top_bn", ("top_bn", "top_activation", "tiny_classifier_head_pool", "tiny_classifier_head_dropout")),
    ("top_conv", ("top_conv",)),
    ("block2a_bn", ("block2a_bn", "block2a_activation")),
    ("block2a_conv", ("block2a_conv",)),
    ("block1a_bn", ("block1a_bn", "block1a_activation")),
    ("block1a_conv", ("block1a_conv",)),
    ("stem_bn", ("stem_bn", "stem_activation")),
    ("stem_conv", ("preprocessing", "stem_conv")),
]


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keras") / "task_a.keras"
    save_tiny_classifier(path)
    return path


def _blocks(path: Path, **options) -> list[tuple[str, tuple[str, ...]]]:
    options.setdefault("cut_layer", None)
    options.setdefault("block_prefixes", None)
    return [(block.name, block.layer_names) for block in archive_blocks(read_keras_archive(path), **options)]


def _residual_file(path: Path) -> Path:
    """input -> a_conv -> b_conv -> c_add(a_conv, b_conv) -> c_pool -> d_dense: a skip connection over b_conv."""
    inputs = keras.Input((32, 32, 3), name="image")
    first = keras.layers.Conv2D(4, 3, padding="same", name="a_conv")(inputs)
    second = keras.layers.Conv2D(4, 3, padding="same", name="b_conv")(first)
    added = keras.layers.Add(name="c_add")([first, second])
    pooled = keras.layers.GlobalAveragePooling2D(name="c_pool")(added)
    keras.Model(inputs, keras.layers.Dense(2, name="d_dense")(pooled), name="residual").save(path)
    return path


def test_exported_classifier_is_read_as_one_flat_graph(classifier_file: Path) -> None:
    archive = read_keras_archive(classifier_file)
    assert archive.model_name == "classifier"
    assert archive.input_shape == (32, 32, 3)
    assert archive.fixed_size == (32, 32)
    assert archive.unsafe == ()
    names = [layer.name for layer in archive.layers]
    # The wrapper's input and preprocessing, then the nested classifier's layers; its head's head_* names are
    # prefixed with the classifier's name, clear of the new head's.
    assert names == ["pixels", *BACKBONE_LAYERS, "tiny_classifier_head_predictions"]
    assert archive.layers[2].path == ("classifier", "tiny_classifier", "stem_conv")
    assert [layer.inputs for layer in archive.layers[:4]] == [(), (0,), (1,), (2,)]
    weighted = [layer.name for layer in archive.layers if layer.has_weights]
    assert weighted == [
        "stem_conv",
        "stem_bn",
        "block1a_conv",
        "block1a_bn",
        "block2a_conv",
        "block2a_bn",
        "top_conv",
        "top_bn",
        "tiny_classifier_head_dense_1",
        "tiny_classifier_head_bn_1",
        "tiny_classifier_head_predictions",
    ]


def test_default_cut_is_the_input_of_the_last_layer(classifier_file: Path) -> None:
    archive = read_keras_archive(classifier_file)
    assert archive.default_cut_layer() == "tiny_classifier_head_dropout_1"
    assert [archive.layers[position].name for position in archive.backbone_positions(None)] == [
        "pixels",
        *BACKBONE_LAYERS,
    ]


def test_default_blocks_one_per_layer_with_weights_weightless_ones_joining_the_block_below(
    classifier_file: Path,
) -> None:
    assert _blocks(classifier_file) == DEFAULT_BLOCKS


def test_named_cut_drops_everything_above_it(classifier_file: Path) -> None:
    assert _blocks(classifier_file, cut_layer="top_activation") == [
        ("top_bn", ("top_bn", "top_activation")),
        *DEFAULT_BLOCKS[3:],
    ]


def test_unknown_cut_layer_lists_close_names(classifier_file: Path) -> None:
    with pytest.raises(
        KerasFileError,
        match=r"^backbone.cut_layer 'top_actvation' is not a layer of .*task_a.keras; close names: top_activation, "
        r"stem_activation, .*\(default: 'tiny_classifier_head_dropout_1', the input of its last layer\)$",
    ):
        _blocks(classifier_file, cut_layer="top_actvation")


def test_block_prefixes_give_one_block_per_prefix(classifier_file: Path) -> None:
    blocks = _blocks(classifier_file, cut_layer="top_activation", block_prefixes=["top_", "block", "stem_", "pre"])
    assert blocks == [
        ("top_", ("top_conv", "top_bn", "top_activation")),
        (
            "block",
            ("block1a_conv", "block1a_bn", "block1a_activation", "block2a_conv", "block2a_bn", "block2a_activation"),
        ),
        ("stem_", ("stem_conv", "stem_bn", "stem_activation")),
        ("pre", ("preprocessing",)),
    ]


def test_a_layer_matching_no_prefix_is_named(classifier_file: Path) -> None:
    with pytest.raises(
        KerasFileError,
        match=r"^backbone.block_prefixes: layer 'preprocessing' of .*task_a.keras starts with none of top_, block, "
        r"stem_; every layer below the cut must belong to a block$",
    ):
        _blocks(classifier_file, cut_layer="top_activation", block_prefixes=["top_", "block", "stem_"])


def test_prefixes_matching_nothing_or_out_of_order_are_refused(classifier_file: Path) -> None:
    with pytest.raises(KerasFileError, match=r"no layer below the cut of .*task_a.keras starts with head, tiny"):
        _blocks(classifier_file, cut_layer="top_activation", block_prefixes=["head", "tiny", "top_", "block", "s", "p"])
    with pytest.raises(
        KerasFileError,
        match=r"layer 'block2a_conv' \(block 'block2'\) comes after layers of block 'block1', which is listed above",
    ):
        _blocks(classifier_file, cut_layer="top_activation", block_prefixes=["top_", "block1", "block2", "stem_", "p"])


def test_a_block_boundary_must_be_a_single_tensor_cut(tmp_path: Path) -> None:
    path = _residual_file(tmp_path / "residual.keras")
    # b_conv's output is not a cut (c_add also reads a_conv): b_conv stays with c_add.
    assert _blocks(path) == [("b_conv", ("b_conv", "c_add", "c_pool")), ("a_conv", ("a_conv",))]
    with pytest.raises(
        KerasFileError,
        match=r"block 'b_' ends at layer 'b_conv', but a layer above it also reads a tensor from below it",
    ):
        _blocks(path, block_prefixes=["c_", "b_", "a_"])


def test_sequential_and_nested_models_and_ops_are_flattened(tmp_path: Path) -> None:
    # The op below gets Keras' automatic name ("add"), numbered by a process-wide counter that other
    # tests advance: start it afresh.
    keras.backend.clear_session()
    inner = keras.Sequential(
        [keras.Input((32, 32, 4)), keras.layers.Conv2D(4, 1, name="inner_conv"), keras.layers.ReLU(name="head_relu")],
        name="inner",
    )
    inputs = keras.Input((32, 32, 3), name="image")
    tensor = keras.layers.Conv2D(4, 1, name="outer_conv")(inputs)
    tensor = keras.ops.add(tensor, 1.0)
    tensor = inner(tensor)
    tensor = keras.layers.GlobalAveragePooling2D(name="pool")(tensor)
    path = tmp_path / "nested.keras"
    keras.Model(inputs, keras.layers.Dense(2, name="out")(tensor), name="outer").save(path)

    archive = read_keras_archive(path)
    assert [(layer.name, layer.class_name, layer.is_layer, layer.has_weights) for layer in archive.layers] == [
        ("image", "InputLayer", True, False),
        ("outer_conv", "Conv2D", True, True),
        ("add", "Add", False, False),
        ("inner_conv", "Conv2D", True, True),
        ("inner_head_relu", "ReLU", True, False),
        ("pool", "GlobalAveragePooling2D", True, False),
        ("out", "Dense", True, True),
    ]
    assert _blocks(path) == [("inner_conv", ("inner_conv", "inner_head_relu", "pool")), ("outer_conv", ("outer_conv",))]


def test_top_level_sequential_model(tmp_path: Path) -> None:
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3), name="image"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(4, name="hidden"),
            keras.layers.Dense(2, name="output"),
        ],
        name="mlp",
    )
    model.save(tmp_path / "mlp.keras")
    archive = read_keras_archive(tmp_path / "mlp.keras")
    assert [layer.name for layer in archive.layers] == ["image", "flatten", "hidden", "output"]
    assert archive.default_cut_layer() == "hidden"
    assert _blocks(tmp_path / "mlp.keras") == [("hidden", ("flatten", "hidden"))]


def test_lambda_and_tfsm_layers_are_reported_as_code_loading_would_run(tmp_path: Path) -> None:
    inputs = keras.Input((32, 32, 3))
    tensor = keras.layers.Lambda(lambda images: images * 2.0, name="double")(inputs)
    keras.Model(inputs, keras.layers.Dense(2, name="out")(tensor)).save(tmp_path / "lambda.keras")
    archive = read_keras_archive(tmp_path / "lambda.keras")
    assert archive.unsafe == ("Lambda 'double' (the Python bytecode of a Lambda layer's function)",)
    assert archive.unsafe_refusal() == (
        f"{tmp_path / 'lambda.keras'} loads only with safe_mode=False: it holds Lambda 'double' (the Python bytecode "
        "of a Lambda layer's function), which loading it would execute; set backbone.safe_mode: false only if you "
        "trust the file"
    )


def test_files_that_cannot_be_backbones_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KerasFileError, match=r"missing.keras: no such file \(a relative path starts at the folder"):
        read_keras_archive(tmp_path / "missing.keras")
    (tmp_path / "text.keras").write_text("not a zip")
    with pytest.raises(KerasFileError, match=r"text.keras is not a zip archive: not a Keras 3 .keras file"):
        read_keras_archive(tmp_path / "text.keras")
    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as archive:
        archive.writestr("metadata.json", "{}")
    with pytest.raises(KerasFileError, match=r"empty.keras holds no config.json: not a Keras 3 .keras file"):
        read_keras_archive(tmp_path / "empty.keras")
    keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)]).save(tmp_path / "vector.keras")
    with pytest.raises(
        KerasFileError, match=r"takes inputs of shape \(8,\); a backbone takes RGB images, \(height, width, 3\)"
    ):
        read_keras_archive(tmp_path / "vector.keras")
    shared = keras.layers.Conv2D(3, 1, padding="same", name="shared")
    inputs = keras.Input((32, 32, 3))
    keras.Model(inputs, shared(shared(inputs))).save(tmp_path / "shared.keras")
    with pytest.raises(KerasFileError, match=r"layer functional.*/shared is called 2 times"):
        read_keras_archive(tmp_path / "shared.keras")
