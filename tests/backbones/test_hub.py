"""TF Hub handles and SavedModel directories as backbones: resolving and caching offline, endpoints and outputs,
BatchNorm behaviour, real fine-tuning through `pipeline.training.recipe`, and the frozen-feature cache.

Every SavedModel here is one the test exports itself; a monkeypatched `urlopen` makes any download fail."""

from __future__ import annotations

import functools
import hashlib
import shutil
import urllib.error
import urllib.request

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.backbones.errors import BackboneError
from pipeline.backbones.hub import cached_handle_dir, hub_cache_dir, load_hub_backbone
from pipeline.backbones.registry import load_backbone
from pipeline.model.freezing import layer_map, set_trainable_blocks
from pipeline.model.head import build_head
from pipeline.params import parse
from pipeline.params.head import HeadParams
from pipeline.params.optimizer import AdamParams
from pipeline.params.schedule import ConstantParams
from pipeline.training.recipe import Phase, plan_phases
from tests.conftest import export_tiny_saved_model, fine_tune_tiny

IMAGE_SIZE = 16
HANDLE = "https://tfhub.dev/example/tiny/feature_vector/1"
MOVING = ("bn0_moving_mean", "bn0_moving_variance", "bn1_moving_mean", "bn1_moving_variance")
TRAINED = ("conv0_kernel", "bn0_gamma", "bn0_beta", "conv1_kernel", "bn1_gamma", "bn1_beta")


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> dict[str, str]:
    """One SavedModel with only an inference endpoint, one with a training endpoint too, one of fixed size."""
    root = tmp_path_factory.mktemp("saved_models")
    return {
        "serve": export_tiny_saved_model(root / "serve"),
        "train": export_tiny_saved_model(root / "train", training_endpoint=True),
        "fixed": export_tiny_saved_model(root / "fixed", image_size=24),
    }


@pytest.fixture(autouse=True)
def no_network(monkeypatch) -> None:
    def refuse(*_arguments, **_options):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _variables(backbone) -> dict[str, np.ndarray]:
    layer = backbone.model.get_layer("saved_model")
    return {variable.name: np.array(variable) for variable in layer.variables}


_run = functools.partial(fine_tune_tiny, image_size=IMAGE_SIZE)


def _phase(name: str, blocks: int, epochs: int, learning_rate: float, bn_policy: str = "affine") -> Phase:
    return Phase(
        name,
        blocks,
        epochs,
        learning_rate,
        optimizer=AdamParams(name="adam"),
        schedule=ConstantParams(name="constant"),
        bn_policy=bn_policy,
    )


def test_cache_folder_is_tensorflow_hubs_own(monkeypatch, tmp_path) -> None:
    from tensorflow_hub import compressed_module_resolver

    digest = hashlib.sha1(HANDLE.encode("utf8")).hexdigest()
    monkeypatch.delenv("TFHUB_CACHE_DIR", raising=False)
    assert hub_cache_dir(tmp_path / "backbones") == tmp_path / "backbones" / "tfhub"
    assert cached_handle_dir(HANDLE, tmp_path / "backbones") == tmp_path / "backbones" / "tfhub" / digest
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub"))
    assert cached_handle_dir(HANDLE, tmp_path / "backbones") == tmp_path / "hub" / digest
    assert compressed_module_resolver._module_dir(HANDLE) == str(tmp_path / "hub" / digest)


def test_a_url_placed_in_the_cache_loads_offline(saved_models, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub"))
    shutil.copytree(saved_models["serve"], cached_handle_dir(HANDLE, tmp_path))
    backbone = load_hub_backbone(HANDLE, image_size=IMAGE_SIZE, cache_dir=tmp_path / "unused")
    images = np.random.default_rng(0).uniform(0, 1, (4, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    saved = tf.saved_model.load(saved_models["serve"])  # held: its functions read its variables
    expected = saved.serve(images).numpy()
    np.testing.assert_allclose(backbone.model.predict(images, verbose=0), expected, rtol=1e-6)
    assert backbone.name == "example_tiny_feature_vector_1"


def test_the_default_cache_is_under_the_backbone_cache_dir(saved_models, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("TFHUB_CACHE_DIR", raising=False)
    shutil.copytree(saved_models["serve"], tmp_path / "tfhub" / hashlib.sha1(HANDLE.encode()).hexdigest())
    backbone = load_backbone(HANDLE, image_size=IMAGE_SIZE, cache_dir=tmp_path)
    assert backbone.block_names == ("saved_model",)
    assert "TFHUB_CACHE_DIR" not in __import__("os").environ


def test_an_uncached_url_fails_fast_naming_the_handle_and_the_folder(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub"))
    folder = cached_handle_dir(HANDLE, tmp_path)
    with pytest.raises(BackboneError) as caught:
        load_hub_backbone(HANDLE, image_size=IMAGE_SIZE, cache_dir=tmp_path)
    message = str(caught.value)
    assert message.startswith(
        f"TF Hub handle {HANDLE} is not in the TF Hub cache {tmp_path / 'hub'} and could not be downloaded "
        "(URLError: <urlopen error network disabled in tests>); on an offline machine, extract the model's "
        f"SavedModel (saved_model.pb and variables/) into {folder} (the SHA-1 of the handle as written"
    )
    assert message.endswith("or set backbone.name to a local SavedModel directory")
    assert not folder.exists()


def test_a_directory_without_saved_model_pb_is_refused(tmp_path) -> None:
    with pytest.raises(BackboneError, match=r"holds no saved_model\.pb, so it is not a SavedModel directory"):
        load_hub_backbone(str(tmp_path), image_size=IMAGE_SIZE, cache_dir=tmp_path)


def test_one_block_holding_the_layer_and_the_input_range(saved_models, tmp_path) -> None:
    backbone = load_hub_backbone(saved_models["serve"], image_size=IMAGE_SIZE, cache_dir=tmp_path)
    assert [group.layer_names for group in backbone.blocks_top_down] == [("saved_model",)]
    assert [layer.name for layer in backbone.model.layers] == ["image", "saved_model"]
    assert backbone.model.output_shape == (None, 8)
    pixels = np.array([[0.0, 127.5, 255.0]], np.float32)
    np.testing.assert_allclose(backbone.make_preprocessing()(pixels), [[0.0, 0.5, 1.0]], atol=1e-6)
    ranged = load_hub_backbone(saved_models["serve"], image_size=IMAGE_SIZE, cache_dir=tmp_path, input_range=(-1, 1))
    np.testing.assert_allclose(ranged.make_preprocessing()(pixels), [[-1.0, 0.0, 1.0]], atol=1e-6)
    paths = [variable.path for variable in backbone.model.get_layer("saved_model").variables]
    assert paths[:2] == ["saved_model/conv0_kernel", "saved_model/bn0_gamma"]


def test_endpoints_and_input_size_are_checked(saved_models, tmp_path) -> None:
    serve = saved_models["serve"]
    with pytest.raises(
        BackboneError,
        match=f"backbone.signature is nope, but {serve} has no such endpoint; its endpoints: serve, serving_default",
    ):
        load_hub_backbone(serve, image_size=IMAGE_SIZE, cache_dir=tmp_path, signature="nope")
    with pytest.raises(BackboneError, match="backbone.training_signature is serve_train, but .* has no such endpoint"):
        load_hub_backbone(serve, image_size=IMAGE_SIZE, cache_dir=tmp_path, training_signature="serve_train")
    with pytest.raises(
        BackboneError,
        match=r"the serve endpoint of .*fixed takes float32 \(batch, 24, 24, 3\), not float32 images of shape "
        r"\(batch, 16, 16, 3\) \(backbone.image_size: 16\); set backbone.image_size: 24",
    ):
        load_hub_backbone(saved_models["fixed"], image_size=IMAGE_SIZE, cache_dir=tmp_path)
    assert load_hub_backbone(saved_models["fixed"], image_size=24, cache_dir=tmp_path).model.output_shape == (None, 8)


def test_a_signature_returning_a_dict_takes_the_output_key(saved_models, tmp_path) -> None:
    serve = saved_models["serve"]
    backbone = load_hub_backbone(serve, image_size=IMAGE_SIZE, cache_dir=tmp_path, signature="serving_default")
    assert backbone.model.output_shape == (None, 8)
    with pytest.raises(
        BackboneError, match="backbone.output_key is logits, but the serving_default endpoint .* returns output_0"
    ):
        load_hub_backbone(
            serve, image_size=IMAGE_SIZE, cache_dir=tmp_path, signature="serving_default", output_key="logits"
        )
    with pytest.raises(
        BackboneError,
        match="backbone.output_key is output_0, but the serve endpoint .* returns one tensor; remove output_key",
    ):
        load_hub_backbone(serve, image_size=IMAGE_SIZE, cache_dir=tmp_path, output_key="output_0")

    class TwoOutputs(tf.Module):
        def __init__(self) -> None:
            self.weights = tf.Variable(tf.ones((3, 5)))

        @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
        def __call__(self, images):
            pooled = tf.reduce_mean(images, axis=[1, 2])
            return {"features": pooled @ self.weights, "pooled": pooled}

    module = TwoOutputs()
    tf.saved_model.save(module, str(tmp_path / "two"), signatures={"serving_default": module.__call__})
    with pytest.raises(BackboneError, match=r"returns several outputs \(features, pooled\); set backbone.output_key"):
        load_hub_backbone(str(tmp_path / "two"), image_size=IMAGE_SIZE, cache_dir=tmp_path)
    picked = load_hub_backbone(str(tmp_path / "two"), image_size=IMAGE_SIZE, cache_dir=tmp_path, output_key="features")
    assert picked.model.output_shape == (None, 5)


def _fit_once(backbone, *, trainable: bool, bn_policy: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One epoch of `fit` on a classifier over the backbone; the SavedModel's variables before and after."""
    classifier = build_head(backbone, HeadParams(dropout=0.0), num_classes=3, seed=0)
    set_trainable_blocks(
        classifier.model, backbone.blocks_top_down, trainable_blocks=int(trainable), bn_policy=bn_policy
    )
    classifier.model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    images = np.random.default_rng(0).uniform(0, 1, (32, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    before = _variables(backbone)
    classifier.model.fit(images, np.arange(32) % 3, batch_size=8, epochs=1, verbose=0)
    return before, _variables(backbone)


@pytest.mark.parametrize(
    ("endpoints", "trainable", "bn_policy", "changes", "moving_statistics_change"),
    [
        ("serve", False, "affine", False, False),
        ("serve", True, "affine", True, False),
        ("train", False, "trainable", False, False),
        ("train", True, "affine", True, False),
        ("train", True, "trainable", True, True),
    ],
)
def test_batch_norm_follows_the_endpoint(
    saved_models,
    tmp_path,
    endpoints: str,
    trainable: bool,
    bn_policy: str,
    changes: bool,
    moving_statistics_change: bool,
) -> None:
    training_signature = "serve_train" if endpoints == "train" else None
    backbone = load_hub_backbone(
        saved_models[endpoints], image_size=IMAGE_SIZE, cache_dir=tmp_path, training_signature=training_signature
    )
    before, after = _fit_once(backbone, trainable=trainable, bn_policy=bn_policy)
    assert {name: not np.array_equal(before[name], after[name]) for name in TRAINED} == dict.fromkeys(TRAINED, changes)
    assert {name: not np.array_equal(before[name], after[name]) for name in MOVING} == dict.fromkeys(
        MOVING, moving_statistics_change
    )


def test_policies_a_saved_model_cannot_honour_are_refused(saved_models, tmp_path) -> None:
    backbone = load_hub_backbone(saved_models["serve"], image_size=IMAGE_SIZE, cache_dir=tmp_path)
    blocks = backbone.blocks_top_down
    with pytest.raises(
        ValueError, match="bn_policy frozen cannot be honoured by saved_model: a SavedModel's BatchNorm"
    ):
        set_trainable_blocks(backbone.model, blocks, trainable_blocks=1, bn_policy="frozen")
    with pytest.raises(
        ValueError, match="bn_policy trainable needs a training endpoint: saved_model was loaded without"
    ):
        set_trainable_blocks(backbone.model, blocks, trainable_blocks=1, bn_policy="trainable")
    set_trainable_blocks(backbone.model, blocks, trainable_blocks=0, bn_policy="frozen")
    assert backbone.model.get_layer("saved_model").trainable is False


def _hub_params(directory: str, **train) -> object:
    return parse(
        {
            "backbone": {"name": directory, "training_signature": "serve_train"},
            "train": {"frozen_epochs": 2, "unfreeze": [{"blocks": 1, "epochs": 3, "lr_factor": 0.5}], **train},
        }
    )


@pytest.mark.parametrize("cache_bytes", [1 << 30, 0], ids=["cached", "images"])
def test_frozen_phase_keeps_the_saved_model_and_unfreezing_fine_tunes_it(saved_models, tmp_path, cache_bytes) -> None:
    config = _hub_params(saved_models["train"], bn_policy="trainable")
    backbone = load_hub_backbone(
        config.backbone.name, image_size=IMAGE_SIZE, cache_dir=tmp_path, training_signature="serve_train"
    )
    phases = plan_phases(
        config.train,
        base_learning_rate=0.01,
        block_count=len(backbone.blocks_top_down),
        steps_per_epoch=10,
        train_examples=100,
    )
    classifier = build_head(backbone, HeadParams(dropout=0.0), num_classes=3, seed=0)
    initial = _variables(backbone)
    frozen = _run(classifier, phases[:1], cache_bytes=cache_bytes)
    after_frozen = _variables(backbone)
    for name, value in initial.items():
        np.testing.assert_array_equal(after_frozen[name], value, err_msg=name)
    assert frozen.phases[0].cached_features is bool(cache_bytes)
    unfrozen = _run(classifier, phases[1:], cache_bytes=cache_bytes)
    after_unfreeze = _variables(backbone)
    assert all(not np.array_equal(after_unfreeze[name], initial[name]) for name in (*TRAINED, *MOVING))
    assert unfrozen.phases[0].cached_features is False
    assert unfrozen.rows[-1]["loss"] < frozen.rows[-1]["loss"]
    # The trainable-layer map of the unfreeze phase says what the SavedModel did; after training it is frozen again.
    (row,) = [row for row in unfrozen.layers if row.layer == "saved_model"]
    assert (row.block, row.layer_type, row.trainable, row.batch_norm) == ("saved_model", "TFSMLayer", True, "trainable")
    (row,) = layer_map(classifier.model, backbone.blocks_top_down, phase=2, phase_name="after", lr_multipliers={})[:1]
    assert (row.layer, row.trainable, row.batch_norm) == ("saved_model", False, "frozen")


@pytest.mark.parametrize("bn_policy", ["affine", "trainable"])
def test_cached_training_equals_training_on_images(saved_models, tmp_path, bn_policy: str) -> None:
    # Every switch of the recipe at once: hidden layers with BatchNorm, discriminative LR, a per-phase schedule
    # and SGD with momentum in the unfreeze stage.
    config = parse(
        {
            "backbone": {"name": saved_models["train"], "training_signature": "serve_train"},
            "head": {"hidden_units": [8], "batch_norm": "before", "hidden_dropout": 0.0, "dropout": 0.0},
            "train": {
                "frozen_epochs": 2,
                "bn_policy": bn_policy,
                "lr_decay_per_block": 2.0,
                "schedule": {"name": "cosine", "warmup_fraction": 0.2},
                "unfreeze": [
                    {"blocks": "all", "epochs": 1, "lr_factor": 0.5, "optimizer": {"name": "sgd", "momentum": 0.9}}
                ],
            },
        }
    )
    results = []
    for cache_bytes in (1 << 30, 0):
        keras.utils.set_random_seed(0)
        backbone = load_hub_backbone(
            config.backbone.name, image_size=IMAGE_SIZE, cache_dir=tmp_path, training_signature="serve_train"
        )
        head = config.head
        classifier = build_head(
            backbone,
            HeadParams(
                dropout=head.dropout,
                hidden_units=head.hidden_units,
                batch_norm=head.batch_norm,
                hidden_dropout=head.hidden_dropout_rates(),
            ),
            num_classes=3,
            seed=0,
        )
        phases = plan_phases(
            config.train, base_learning_rate=0.01, block_count=1, steps_per_epoch=10, train_examples=100
        )
        history = _run(classifier, phases, cache_bytes=cache_bytes)
        assert [phase.cached_features for phase in history.phases] == [bool(cache_bytes), False]
        results.append(([row["val_loss"] for row in history.rows], _variables(backbone)))
    (cached_losses, cached_variables), (image_losses, image_variables) = results
    assert cached_losses == pytest.approx(image_losses, rel=1e-4)
    for name, value in cached_variables.items():
        np.testing.assert_allclose(value, image_variables[name], rtol=1e-4, atol=1e-5, err_msg=name)
