"""Tests of pipeline/params.py and of the `validate` stage that runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.params import ParamsError, PipelineParams, flatten, load, parse
from pipeline.params.optimizer import AdamParams
from pipeline.params.schedule import ConstantParams

REPO_ROOT = Path(__file__).resolve().parents[2]
LITE0_BLOCKS = "top, block7, block6, block5, block4, block3, block2, block1, stem"


def _error_message(raw: Any) -> str:
    """Parses `raw`, expecting a ParamsError, and returns its message."""
    with pytest.raises(ParamsError) as caught:
        parse(raw)
    return str(caught.value)


def _write_params(directory: Path, content: dict[str, Any]) -> Path:
    """Writes `content` as params.yaml in `directory`."""
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(content), encoding="utf-8")
    return path


def _run_validate(directory: Path) -> subprocess.CompletedProcess[str]:
    """Runs the validate stage with `directory` as working directory."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
    environment["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "stages.validate"],
        cwd=directory,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_defaults_load() -> None:
    params = parse({})

    assert params == PipelineParams()
    assert params.data.subset_size is None
    assert (params.data.val_fraction, params.data.test_fraction, params.data.seed) == (0.1, 0.1, 42)
    assert params.backbone.name == "efficientnet_lite0"
    assert params.backbone.image_size == 96
    assert params.head.pooling == "avg"
    assert params.head.dropout == 0.2
    assert params.train.batch_size == 64
    assert params.train.optimizer == AdamParams(name="adam")
    assert params.train.schedule == ConstantParams(name="constant")
    assert (params.train.bn_policy, params.train.lr_decay_per_block, params.train.early_stopping) == (
        "frozen",
        1.0,
        None,
    )
    assert params.head.hidden_units == []
    assert (params.head.activation, params.head.initializer, params.head.batch_norm) == ("relu", "auto", "none")
    assert params.lr_find.enabled is False
    assert params.train.base_learning_rate == 1e-3
    assert params.train.frozen_epochs == 5
    assert params.train.unfreeze == []
    assert params.evaluate.batch_size == 128
    device = params.device
    assert (device.accelerator, device.gpus, device.precision, device.jit_compile, device.memory_growth) == (
        "auto",
        "all",
        "auto",
        "auto",
        True,
    )
    assert (params.tracking.champion_metric, params.tracking.champion_margin) == ("accuracy", 0.0)


def test_empty_document_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("# nothing set\n", encoding="utf-8")

    assert load(path) == PipelineParams()


def test_repository_params_file_validates() -> None:
    params = load(REPO_ROOT / "params.yaml")

    assert params.backbone.name == "efficientnet_lite0"
    assert len(params.train.unfreeze) >= 1
    assert all(stage.blocks <= 9 for stage in params.train.unfreeze)


def test_unknown_top_level_key() -> None:
    message = _error_message({"bogus": 1})

    assert "bogus: unknown key (received 1)" in message
    assert "allowed keys here: backbone, data, device, evaluate, head, lr_find, tracking, train" in message


def test_unknown_nested_key_lists_keys_of_its_section() -> None:
    message = _error_message({"head": {"dropuot": 0.1}})

    assert "head.dropuot: unknown key (received 0.1)" in message
    assert (
        "allowed keys here: activation, batch_norm, dropout, dropout_type, hidden_dropout, hidden_units, "
        "initializer, kernel_regularizer, max_norm, maxout_pieces, negative_slope, pooling"
    ) in message


def test_unknown_key_inside_unfreeze_stage_lists_stage_keys() -> None:
    message = _error_message({"train": {"unfreeze": [{"blocks": 1, "epochs": 1, "lr_factor": 0.1, "extra": 3}]}})

    assert "train.unfreeze.0.extra: unknown key (received 3)" in message
    assert (
        "allowed keys here: blocks, bn_policy, early_stopping, epochs, lr_decay_per_block, lr_factor, optimizer, "
        "schedule"
    ) in message


def test_wrong_type() -> None:
    message = _error_message({"train": {"batch_size": "sixty"}})

    assert "train.batch_size: received 'sixty'" in message
    assert "valid integer" in message


def test_negative_learning_rate() -> None:
    message = _error_message({"train": {"base_learning_rate": -0.01}})

    assert "train.base_learning_rate: received -0.01" in message
    assert "greater than 0" in message


@pytest.mark.parametrize("dropout", [1.0, 1.5])
def test_dropout_of_one_or_more(dropout: float) -> None:
    message = _error_message({"head": {"dropout": dropout}})

    assert f"head.dropout: received {dropout}" in message
    assert "less than 1" in message


def test_zero_frozen_epochs() -> None:
    message = _error_message({"train": {"frozen_epochs": 0}})

    assert "train.frozen_epochs: received 0" in message
    assert "greater than 0" in message


def test_zero_unfreeze_epochs() -> None:
    message = _error_message({"train": {"unfreeze": [{"blocks": 1, "epochs": 0, "lr_factor": 0.1}]}})

    assert "train.unfreeze.0.epochs: received 0" in message
    assert "greater than 0" in message


def test_every_problem_is_reported_on_its_own_line() -> None:
    message = _error_message({"train": {"batch_size": 0, "frozen_epochs": 0}})

    lines = message.splitlines()
    assert lines[0] == "params.yaml is invalid:"
    assert [line.strip().split(":")[0] for line in lines[1:]] == ["train.batch_size", "train.frozen_epochs"]


def test_unknown_backbone_lists_registered_names() -> None:
    message = _error_message({"backbone": {"name": "resnet5"}})

    assert "backbone.name: received 'resnet5'" in message
    assert (
        "registered backbones: efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, mobilenet, mobilenet_v2"
        in message
    )
    assert "resnet50, resnet50_v2" in message


def test_backbone_input_size_and_weights_are_checked() -> None:
    message = _error_message({"backbone": {"name": "inception_v3", "image_size": 64}})
    assert "backbone.image_size: received 64; inception_v3 takes inputs of at least 75 px" in message
    message = _error_message({"backbone": {"name": "resnet50", "weights": "/no/such.weights.h5"}})
    assert (
        "backbone.weights: received '/no/such.weights.h5'; not a file; allowed: imagenet, none, or the path of a "
        "Keras weights file" in message
    )


def _saved_model_dir(directory: Path) -> str:
    """A folder that passes the TF-free SavedModel check (validation does not read the graph)."""
    (directory / "saved_model.pb").write_bytes(b"")
    return str(directory)


def test_backbone_name_takes_a_hub_handle_or_a_saved_model_directory(tmp_path: Path) -> None:
    handle = "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5"
    assert parse({"backbone": {"name": handle}}).backbone.block_names() == ("saved_model",)
    directory = _saved_model_dir(tmp_path)
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
    message = _error_message({"backbone": {"name": str(tmp_path)}})
    assert (
        f"backbone.name: received {str(tmp_path)!r}; this directory holds no saved_model.pb, so it is not a SavedModel"
        in message
    )
    message = _error_message({"backbone": {"name": str(tmp_path / "missing")}})
    assert f"no directory {tmp_path / 'missing'} exists; registered backbones: efficientnet_lite0" in message
    assert "or a TF Hub handle (an http:// or https:// URL), a SavedModel directory, or a .keras file" in message


def test_a_key_for_another_kind_of_backbone_is_refused(tmp_path: Path) -> None:
    message = _error_message({"backbone": {"name": "resnet50", "signature": "serve", "input_range": [0, 1]}})
    # The first key in alphabetical order is named; the user fixes one and learns of the next.
    assert message.splitlines()[1] == (
        "  backbone.input_range applies to TF Hub handles, SavedModel directories and .keras files only, and "
        "backbone.name 'resnet50' is a registered backbone; remove backbone.input_range"
    )
    message = _error_message({"backbone": {"name": "resnet50", "signature": "serve"}})
    assert (
        "backbone.signature applies to TF Hub handles and SavedModel directories only, and backbone.name "
        "'resnet50' is a registered backbone; remove backbone.signature" in message
    )
    directory = _saved_model_dir(tmp_path)
    message = _error_message({"backbone": {"name": directory, "weights": "none"}})
    assert (
        f"backbone.weights applies to registered backbones only, and backbone.name '{directory}' is a TF Hub "
        "handle or SavedModel directory (a SavedModel holds its own weights); remove backbone.weights" in message
    )
    message = _error_message({"backbone": {"name": directory, "input_range": [1, -1]}})
    assert "backbone.input_range: received [1, -1]; give [low, high] with low < high" in message


def test_a_saved_model_is_one_block(tmp_path: Path) -> None:
    directory = _saved_model_dir(tmp_path)
    backbone = {"name": directory, "training_signature": "serve_train"}
    message = _error_message(
        {"backbone": backbone, "train": {"unfreeze": [{"blocks": 2, "epochs": 1, "lr_factor": 0.1}]}}
    )
    assert (
        f"train.unfreeze.0.blocks is 2, but {directory} is a SavedModel: TensorFlow Hub and SavedModel backbones are "
        "one opaque block (saved_model), so at most 1 block (or all) can be unfrozen" in message
    )
    for blocks in (1, "all"):
        stage = {"blocks": blocks, "epochs": 1, "lr_factor": 0.1}
        assert parse({"backbone": backbone, "train": {"bn_policy": "trainable", "unfreeze": [stage]}}).train.unfreeze


@pytest.mark.parametrize(
    ("backbone", "train", "expected"),
    [
        (
            {},
            {"bn_policy": "trainable"},
            "train.bn_policy is trainable, but backbone.training_signature is not set: through its inference signature "
            "a SavedModel always normalises with its fixed moving statistics (what affine does); set bn_policy: "
            "affine, or name the SavedModel's training endpoint in backbone.training_signature",
        ),
        (
            {"training_signature": "serve_train"},
            {"bn_policy": "affine", "stage": {"bn_policy": "frozen"}},
            "train.unfreeze.0.bn_policy is frozen, which a SavedModel backbone cannot honour when train.unfreeze.0 "
            "unfreezes it: its BatchNorm gamma and beta are weights of its one opaque block and train with it; use "
            "affine (moving statistics fixed) or, with backbone.training_signature, trainable",
        ),
        ({}, {"bn_policy": "frozen"}, "train.bn_policy is frozen, which a SavedModel backbone cannot honour"),
        ({}, {"bn_policy": "affine"}, None),
        ({"training_signature": "serve_train"}, {"bn_policy": "trainable"}, None),
        ({"training_signature": "serve_train"}, {"bn_policy": "affine"}, None),
    ],
)
def test_saved_model_bn_policy_must_be_one_it_can_honour(tmp_path: Path, backbone, train, expected) -> None:
    stage = {"blocks": 1, "epochs": 1, "lr_factor": 0.1, **train.pop("stage", {})}
    raw = {"backbone": {"name": _saved_model_dir(tmp_path), **backbone}, "train": {**train, "unfreeze": [stage]}}
    if expected is None:
        assert parse(raw).train.unfreeze[0].blocks == 1
    else:
        assert expected in _error_message(raw)
    # Without an unfreeze stage the SavedModel never trains, and any policy is accepted.
    assert parse({**raw, "train": {**train, "bn_policy": "frozen"}}).train.unfreeze == []


@pytest.mark.parametrize("value", ["lion", {"name": "lion", "beta_1": 0.9}])
def test_unknown_optimizer_lists_registered_names(value) -> None:
    message = _error_message({"train": {"optimizer": value}})

    assert f"train.optimizer: received {value!r}" in message
    assert (
        "unknown optimizer 'lion'; registered optimizers: sgd, adagrad, adadelta, rmsprop, adam, adamw, adamax, nadam"
        in message
    )


def test_unfreeze_deeper_than_backbone_lists_block_names() -> None:
    message = _error_message({"train": {"unfreeze": [{"blocks": 10, "epochs": 1, "lr_factor": 0.1}]}})

    assert "train.unfreeze.0.blocks is 10" in message
    assert f"efficientnet_lite0 has 9 blocks (top-down: {LITE0_BLOCKS})" in message


def test_unfreeze_as_deep_as_backbone_is_accepted() -> None:
    params = parse({"train": {"unfreeze": [{"blocks": 9, "epochs": 1, "lr_factor": 0.1}]}})

    assert params.train.unfreeze[0].blocks == 9


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_scaled_lite_has_lite0s_blocks_and_input_sizes(name) -> None:
    params = parse(
        {
            "backbone": {"name": name, "image_size": 32},
            "train": {"unfreeze": [{"blocks": 9, "epochs": 1, "lr_factor": 0.1}]},
        }
    )
    assert params.backbone.name == name
    message = _error_message({"backbone": {"name": name, "image_size": 31}})
    assert "backbone.image_size: received 31; " in message
    message = _error_message(
        {"backbone": {"name": name}, "train": {"unfreeze": [{"blocks": 10, "epochs": 1, "lr_factor": 0.1}]}}
    )
    assert f"{name} has 9 blocks (top-down: {LITE0_BLOCKS})" in message


def test_unfreeze_error_line_starts_with_its_key() -> None:
    message = _error_message({"train": {"unfreeze": [{"blocks": 10, "epochs": 1, "lr_factor": 0.1}]}})

    assert message.splitlines()[1].strip().startswith("train.unfreeze.0.blocks")


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.4), (0.45, 0.5)])
def test_fractions_leaving_too_little_training_data(val: float, test: float) -> None:
    message = _error_message({"data": {"val_fraction": val, "test_fraction": test}})

    assert "data: received" in message
    assert f"'val_fraction': {val}" in message
    assert f"'test_fraction': {test}" in message
    assert f"val_fraction + test_fraction is {val + test}" in message
    assert "below 0.9" in message


@pytest.mark.parametrize(
    ("kind", "what"), [("folder", "a folder of class subfolders"), ("csv", "a CSV file of path,label rows")]
)
def test_image_file_kinds_need_a_path(kind: str, what: str) -> None:
    message = _error_message({"data": {"kind": kind}})

    assert (
        f"kind is '{kind}', so path must name {what}; received path '/usr/share/datasets/fashion-mnist', "
        "the IDX default"
    ) in message


def test_path_names_the_idx_folder_too() -> None:
    assert parse({}).data.path == "/usr/share/datasets/fashion-mnist"
    assert parse({"data": {"path": "mnist"}}).data.path == "mnist"
    assert "data.path: received None; Input should be a valid string" in _error_message({"data": {"path": None}})
    assert "data.path: received ''; String should have at least 1 character" in _error_message({"data": {"path": ""}})


def test_source_dir_says_it_is_now_path() -> None:
    message = _error_message({"data": {"source_dir": "/data/mnist"}})

    assert (
        "data.source_dir ('/data/mnist') is now data.path, which names the data of every kind (the IDX folder "
        "for kind idx)"
    ) in message


def test_unknown_data_kind_lists_the_kinds() -> None:
    message = _error_message({"data": {"kind": "zip"}})

    assert "data.kind: received 'zip'; Input should be 'idx', 'folder' or 'csv'" in message


@pytest.mark.parametrize("size", [7, 1025])
def test_stored_size_out_of_range(size: int) -> None:
    message = _error_message({"data": {"kind": "folder", "path": "photos", "stored_size": size}})

    assert f"data.stored_size: received {size}" in message


def test_folder_kind_accepted() -> None:
    data = parse({"data": {"kind": "folder", "path": "photos", "stored_size": 64, "color": "grey"}}).data

    assert (data.kind, data.path, data.stored_size, data.color) == ("folder", "photos", 64, "grey")


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"

    with pytest.raises(ParamsError, match=f"^{re.escape(str(missing))} not found$"):
        load(missing)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed\n", encoding="utf-8")

    with pytest.raises(ParamsError, match=f"^{re.escape(str(path))} is not valid YAML: "):
        load(path)


@pytest.mark.parametrize(("document", "kind"), [("- 1\n- 2\n", "list"), ("just text\n", "str")])
def test_non_mapping_document(tmp_path: Path, document: str, kind: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(document, encoding="utf-8")

    expected = f"^{re.escape(str(path))}: expected a mapping of sections, received {kind}$"
    with pytest.raises(ParamsError, match=expected):
        load(path)


def test_error_names_the_file(tmp_path: Path) -> None:
    path = _write_params(tmp_path, {"head": {"pooling": "mean"}})

    expected = rf"^{re.escape(str(path))} is invalid:\n  head\.pooling: received 'mean'; .*'avg' or 'max'"
    with pytest.raises(ParamsError, match=expected):
        load(path)


def test_flatten_gives_dotted_keys() -> None:
    params = parse(
        {
            "data": {"subset_size": 1000},
            "train": {
                "optimizer": {"name": "sgd", "momentum": 0.9, "clipnorm": 1.0},
                "unfreeze": [
                    {"blocks": 2, "epochs": 3, "lr_factor": 0.1},
                    {"blocks": "all", "epochs": 1, "lr_factor": 0.01, "schedule": "cosine"},
                ],
            },
            "device": {"gpus": [0, 1]},
        }
    )

    flat = flatten(params)

    assert {key: flat[key] for key in flat if key.startswith(("data.", "train.optimizer", "train.unfreeze.1"))} == {
        "data.kind": "idx",
        "data.path": "/usr/share/datasets/fashion-mnist",
        "data.stored_size": "96",
        "data.color": "rgb",
        "data.max_image_pixels": "40000000",
        "data.subset_size": "1000",
        "data.classes": "null",
        "data.test_part": "null",
        "data.val_fraction": "0.1",
        "data.test_fraction": "0.1",
        "data.train_size": "null",
        "data.seed": "42",
        "train.optimizer.name": "sgd",
        "train.optimizer.momentum": "0.9",
        "train.optimizer.nesterov": "False",
        "train.optimizer.clipvalue": "null",
        "train.optimizer.clipnorm": "1.0",
        "train.optimizer.global_clipnorm": "null",
        "train.unfreeze.1.blocks": "all",
        "train.unfreeze.1.epochs": "1",
        "train.unfreeze.1.lr_factor": "0.01",
        "train.unfreeze.1.optimizer": "null",
        "train.unfreeze.1.schedule.name": "cosine",
        "train.unfreeze.1.schedule.warmup_fraction": "0.1",
        "train.unfreeze.1.schedule.alpha": "0.0",
        "train.unfreeze.1.schedule.warmup_start": "0.0",
        "train.unfreeze.1.bn_policy": "null",
        "train.unfreeze.1.lr_decay_per_block": "null",
        "train.unfreeze.1.early_stopping": "null",
    }
    assert flat["train.unfreeze.0.blocks"] == "2"
    assert flat["head.kernel_regularizer.l2"] == "0.0"
    assert flat["train.augmentation.flip"] == "none"
    assert flat["device.gpus"] == "[0, 1]"
    assert flat["lr_find.rule"] == "valley"
    assert all(len(key) <= 250 and len(value) <= 6000 for key, value in flat.items())


def test_flatten_of_defaults_writes_null_and_empty_list() -> None:
    flat = flatten(PipelineParams())

    assert flat["data.subset_size"] == "null"
    assert flat["device.gpus"] == "all"
    assert flat["train.unfreeze"] == "[]"
    assert not any(key.startswith("train.unfreeze.") for key in flat)


def test_import_loads_no_heavy_library() -> None:
    heavy = "('tensorflow', 'keras', 'mlflow', 'tensorflow_hub')"
    script = f"import sys, pipeline.params; print(sorted(m for m in {heavy} if m in sys.modules))"

    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert result.stdout.strip() == "[]"


def test_validate_stage_rejects_bad_params_quickly(tmp_path: Path) -> None:
    _write_params(tmp_path, {"train": {"batch_size": "sixty"}})

    started = time.monotonic()
    result = _run_validate(tmp_path)
    elapsed = time.monotonic() - started

    assert result.returncode == 2
    assert result.stderr.startswith("error: params.yaml is invalid:")
    assert "train.batch_size: received 'sixty'" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 5.0
    assert not (tmp_path / "build" / "params.checked").exists()


def test_validate_stage_accepts_good_params(tmp_path: Path) -> None:
    _write_params(tmp_path, {"train": {"batch_size": 32}})

    result = _run_validate(tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "params.yaml is valid",
        "tracking store sqlite:///mlflow.db (tracking.uri in params.yaml): sqlite database mlflow.db is writable",
    ]
    assert (tmp_path / "build" / "params.checked").read_text(encoding="utf-8") == (
        "params.yaml matches the schema of pipeline/params/\n"
    )


# The techniques' switches: each invalid value or combination stops validation with its reason.


def test_optimizer_refuses_a_key_it_does_not_take() -> None:
    message = _error_message({"train": {"optimizer": {"name": "adam", "momentum": 0.9}}})

    assert message.splitlines()[1] == (
        "  train.optimizer.momentum: unknown key (received 0.9); allowed keys here: amsgrad, beta_1, beta_2, "
        "clipnorm, clipvalue, epsilon, global_clipnorm, name"
    )


def test_optimizer_hyperparameter_out_of_range_names_its_key() -> None:
    message = _error_message(
        {
            "train": {
                "unfreeze": [
                    {"blocks": 1, "epochs": 1, "lr_factor": 0.1, "optimizer": {"name": "sgd", "momentum": 1.5}}
                ]
            }
        }
    )

    assert "train.unfreeze.0.optimizer.momentum: received 1.5; Input should be less than 1" in message


def test_more_than_one_clipping_is_refused() -> None:
    message = _error_message({"train": {"optimizer": {"name": "rmsprop", "clipvalue": 0.5, "clipnorm": 1.0}}})

    assert "train.optimizer: received" in message
    assert "choose at most one of clipvalue, clipnorm, global_clipnorm; received clipvalue, clipnorm" in message


def test_optimizer_mapping_without_a_name() -> None:
    message = _error_message({"train": {"optimizer": {"momentum": 0.9}}})

    assert "train.optimizer: received {'momentum': 0.9}; a optimizer mapping needs a 'name' key" in message


def test_unknown_schedule_and_schedule_option() -> None:
    unknown = _error_message({"train": {"schedule": "triangular"}})
    option = _error_message({"train": {"schedule": {"name": "cosine", "warmup_steps": 10}}})

    assert "unknown schedule 'triangular'; registered schedules: constant, power, exponential, piecewise" in unknown
    assert (
        "train.schedule.warmup_steps: unknown key (received 10); allowed keys here: alpha, name, warmup_fraction"
        in option
    )


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({"name": "piecewise", "boundaries": [2, 1], "factors": [1, 0.5, 0.1]}, "boundaries must increase strictly"),
        (
            {"name": "piecewise", "boundaries": [1], "factors": [1, 0.5, 0.1]},
            "factors needs one more entry than boundaries (2); received 3",
        ),
        (
            {"name": "onecycle", "min_momentum": 0.95, "max_momentum": 0.85},
            "min_momentum (0.95) must not exceed max_momentum (0.85)",
        ),
        ({"name": "step_drop", "drop": 1.5}, "train.schedule.drop: received 1.5; Input should be less than 1"),
    ],
)
def test_schedule_option_checks(schedule, expected: str) -> None:
    assert expected in _error_message({"train": {"schedule": schedule}})


def test_onecycle_momentum_needs_an_optimizer_with_momentum() -> None:
    stage = {"blocks": 1, "epochs": 1, "lr_factor": 0.1, "optimizer": "adagrad"}
    message = _error_message({"train": {"schedule": "onecycle", "unfreeze": [stage]}})

    assert (
        "train.unfreeze.0: the onecycle schedule cycles momentum, but optimizer adagrad has no momentum term" in message
    )
    assert parse({"train": {"schedule": {"name": "onecycle", "cycle_momentum": False}, "optimizer": "adagrad"}})


def test_auto_learning_rate_needs_the_range_test() -> None:
    message = _error_message({"train": {"base_learning_rate": "auto"}})

    assert "train.base_learning_rate is auto" in message
    assert "lr_find.enabled is false" in message
    assert (
        parse({"train": {"base_learning_rate": "auto"}, "lr_find": {"enabled": True}}).train.base_learning_rate
        == "auto"
    )


def test_unfreeze_all_blocks_and_bad_block_words() -> None:
    assert (
        parse({"train": {"unfreeze": [{"blocks": "all", "epochs": 1, "lr_factor": 0.1}]}}).train.unfreeze[0].blocks
        == "all"
    )
    message = _error_message({"train": {"unfreeze": [{"blocks": "most", "epochs": 1, "lr_factor": 0.1}]}})
    assert "train.unfreeze.0.blocks: received 'most'" in message


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        ({"activation": "selu", "batch_norm": "after", "dropout": 0.0}, "head.activation selu"),
        ({"activation": "selu", "dropout_type": "standard", "dropout": 0.2}, "head.dropout_type"),
        ({"activation": "relu", "dropout_type": "alpha", "dropout": 0.2}, "head.dropout_type"),
        ({"hidden_units": [64, 32], "hidden_dropout": [0.1]}, "hidden_dropout lists 1 rates for 2 hidden layers"),
        ({"activation": "swishy"}, "unknown activation; registered activations: relu, leaky_relu"),
        ({"initializer": "he_gaussian"}, "unknown initializer; registered initializers: auto, glorot_uniform"),
        ({"max_norm": {"value": -1}}, "head.max_norm.value: received -1; Input should be greater than 0"),
        (
            {"kernel_regularizer": {"l3": 0.1}},
            "head.kernel_regularizer.l3: unknown key (received 0.1); allowed keys here: l1, l2",
        ),
    ],
)
def test_head_checks(head, expected: str) -> None:
    assert expected in _error_message({"head": head})


def test_selu_with_alpha_dropout_and_no_batch_norm_is_accepted() -> None:
    head = parse({"head": {"activation": "selu", "hidden_units": [64], "hidden_dropout": 0.1}}).head

    assert head.hidden_dropout_rates() == [0.1]


def test_lr_find_range_must_grow() -> None:
    assert "max_lr (0.001) must exceed min_lr (0.01)" in _error_message({"lr_find": {"min_lr": 0.01, "max_lr": 0.001}})


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        (
            {"frozen_epochs": 3, "schedule": {"name": "piecewise", "boundaries": [1, 3], "factors": [1, 0.5, 0.1]}},
            "train: piecewise boundaries [1.0, 3.0] reach the end of the phase (3 epochs); every boundary must be "
            "below 3",
        ),
        (
            {
                "unfreeze": [
                    {
                        "blocks": 1,
                        "epochs": 2,
                        "lr_factor": 0.1,
                        "schedule": {"name": "piecewise", "boundaries": [2], "factors": [1, 0.1]},
                    }
                ]
            },
            "train.unfreeze.0: piecewise boundaries [2.0] reach the end of the phase (2 epochs)",
        ),
    ],
)
def test_schedule_must_fit_its_phase(train, expected: str) -> None:
    assert expected in _error_message({"train": train})


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ({"type": "gpu"}, r"^params.yaml is invalid:\n  device.type \('gpu'\) is now device.accelerator$"),
        ({"gpu_indices": [0]}, r"device.gpu_indices \(\[0\]\) is now device.gpus"),
        ({"gpus": [1, 1]}, r"device.gpus: received \[1, 1\]; lists a GPU twice; allowed: all, or a list of GPU"),
        ({"gpus": []}, r"device.gpus: received \[\]; allowed: all, or a list of GPU indices such as \[0, 1\]$"),
        ({"gpus": "some"}, r"device.gpus: received 'some'; allowed: all, or a list of GPU indices such as \[0, 1\]$"),
        ({"precision": "float16"}, r"device.precision: received 'float16'"),
        ({"jit_compile": "yes"}, r"device.jit_compile: received 'yes'; Input should be a valid boolean, or auto$"),
    ],
)
def test_device_section_refusals(device: dict[str, Any], message: str) -> None:
    assert re.search(message, _error_message({"device": device}))


def test_champion_margin_is_a_share_from_zero_to_below_one() -> None:
    assert parse({"tracking": {"champion_margin": 0.02}}).tracking.champion_margin == 0.02
    message = _error_message({"tracking": {"champion_margin": -0.01}})
    assert "tracking.champion_margin: received -0.01; Input should be greater than or equal to 0" in message


# A local .keras file as the backbone: read without TensorFlow, refused with the key to change.


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.conftest import save_tiny_classifier

    path = tmp_path_factory.mktemp("keras") / "task_a.keras"
    save_tiny_classifier(path)
    return str(path)


def _keras_backbone(path: str, **settings: Any) -> dict[str, Any]:
    return {"name": path, "image_size": 32, **settings}


def test_keras_file_blocks_are_read_from_the_file(keras_file: str) -> None:
    backbone = parse({"backbone": _keras_backbone(keras_file)}).backbone

    assert backbone.block_names()[:3] == ("tiny_classifier_head_bn_1", "tiny_classifier_head_dense_1", "top_bn")
    assert len(backbone.block_names()) == 10
    assert (backbone.cut_layer, backbone.block_prefixes, backbone.safe_mode, backbone.reinitialize) == (
        None,
        None,
        True,
        False,
    )
    prefixed = parse(
        {"backbone": _keras_backbone(keras_file, cut_layer="top_bn", block_prefixes=["top", "block", "stem", "pre"])}
    ).backbone
    assert prefixed.block_names() == ("top", "block", "stem", "pre")


def test_missing_keras_file_says_what_is_allowed(tmp_path: Path) -> None:
    message = _error_message({"backbone": {"name": str(tmp_path / "task_a.keras")}})

    assert (
        f"backbone.name: received '{tmp_path / 'task_a.keras'}'; {tmp_path / 'task_a.keras'}: no such file" in message
    )
    assert "allowed: a registered backbone, a TF Hub handle, or an existing .keras file" in message


def test_keras_file_image_size_must_be_the_files(keras_file: str) -> None:
    message = _error_message({"backbone": {"name": keras_file, "image_size": 64}})

    assert message.splitlines()[1] == (
        f"  backbone.image_size is 64, but {keras_file} takes 32x32 images only; set backbone.image_size: 32"
    )


def test_keras_file_unknown_cut_layer_and_stray_layer(keras_file: str) -> None:
    message = _error_message({"backbone": _keras_backbone(keras_file, cut_layer="top_actvation")})
    assert message.splitlines()[1].startswith(
        f"  backbone.cut_layer 'top_actvation' is not a layer of {keras_file}; close names: top_activation"
    )
    message = _error_message(
        {"backbone": _keras_backbone(keras_file, cut_layer="top_bn", block_prefixes=["top", "block", "stem"])}
    )
    assert message.splitlines()[1] == (
        f"  backbone.block_prefixes: layer 'preprocessing' of {keras_file} starts with none of top, block, stem; "
        "every layer below the cut must belong to a block"
    )
    message = _error_message({"backbone": _keras_backbone(keras_file, block_prefixes=["top", "top"])})
    assert "backbone.block_prefixes: received ['top', 'top']; each prefix may name one block only" in message


def test_unsafe_keras_file_is_refused_unless_safe_mode_is_off(tmp_path: Path) -> None:
    import keras

    inputs = keras.Input((32, 32, 3))
    tensor = keras.layers.Conv2D(2, 3, name="conv")(inputs)
    tensor = keras.layers.Lambda(lambda features: features * 2.0, name="double")(tensor)
    tensor = keras.layers.GlobalAveragePooling2D(name="pool")(tensor)
    keras.Model(inputs, keras.layers.Dense(2, name="out")(tensor)).save(tmp_path / "lambda.keras")
    path = str(tmp_path / "lambda.keras")

    message = _error_message({"backbone": _keras_backbone(path)})
    assert message.splitlines()[1] == (
        f"  backbone.safe_mode is true, but {path} loads only with safe_mode=False: it holds Lambda 'double' (the "
        "Python bytecode of a Lambda layer's function), which loading it would execute; set backbone.safe_mode: "
        "false only if you trust the file"
    )
    assert parse({"backbone": _keras_backbone(path, safe_mode=False)}).backbone.block_names() == ("conv",)


def test_unfreeze_deeper_than_a_keras_files_blocks_lists_them(keras_file: str) -> None:
    message = _error_message(
        {
            "backbone": _keras_backbone(keras_file),
            "train": {"unfreeze": [{"blocks": 11, "epochs": 1, "lr_factor": 0.1}]},
        }
    )

    assert f"train.unfreeze.0.blocks is 11, but {keras_file} has 10 blocks (top-down: tiny_classifier_head_bn_1, " in (
        message
    )
    assert "stem_bn, stem_conv); use all to unfreeze every block" in message
    accepted = parse(
        {
            "backbone": _keras_backbone(keras_file),
            "train": {"unfreeze": [{"blocks": 10, "epochs": 1, "lr_factor": 0.1}]},
        }
    )
    assert accepted.train.unfreeze[0].blocks == 10


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
    assert expected in _error_message({"backbone": backbone})


def test_weights_of_a_keras_file_are_refused(keras_file: str) -> None:
    message = _error_message({"backbone": _keras_backbone(keras_file, weights="none")})

    assert message.splitlines()[1] == (
        f"  backbone.weights applies to registered backbones only, and backbone.name '{keras_file}' is a .keras "
        "file (a .keras file brings its own weights; reinitialize: true draws fresh ones); remove backbone.weights"
    )


def test_input_range_must_rise(keras_file: str) -> None:
    message = _error_message({"backbone": _keras_backbone(keras_file, input_range=[1, 0])})

    assert "backbone.input_range: received [1, 0]; give [low, high] with low < high" in message


# Data: a subset of the classes, the official test set as the test split, a cap on training images.


def test_classes_test_part_and_train_size_are_accepted() -> None:
    data = parse({"data": {"classes": ["Sandal", "Shirt"], "test_part": "t10k", "train_size": 200}}).data

    assert (data.classes, data.test_part, data.train_size) == (["Sandal", "Shirt"], "t10k", 200)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"classes": ["Sandal", "Shoe"]},
            "data.classes: 'Shoe' not in the dataset; allowed: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, "
            "Shirt, Sneaker, Bag, Ankle boot",
        ),
        ({"classes": ["Sandal"]}, "data.classes: received ['Sandal']; keep at least 2 classes, or null for all"),
        ({"classes": ["Bag", "Bag"]}, "data.classes: received ['Bag', 'Bag']; each class may be listed once"),
        (
            {"kind": "folder", "path": "photos", "classes": ["cat", "dog"]},
            "data.classes works with kind idx only, and kind is 'folder'",
        ),
        ({"test_part": "train"}, "data.test_part: received 'train'; Input should be 't10k'"),
        (
            {"test_part": "t10k", "test_fraction": 0.2, "subset_size": 1000},
            "data.test_part takes every t10k image as the test split, so data.subset_size and data.test_fraction "
            "would be ignored; remove it (data.train_size caps the training images)",
        ),
        ({"train_size": 0}, "data.train_size: received 0; Input should be greater than 0"),
    ],
)
def test_data_subset_options_are_checked(data: dict[str, Any], expected: str) -> None:
    assert expected in _error_message({"data": data})


def test_each_kind_passes_only_its_own_options(keras_file: str, tmp_path: Path) -> None:
    assert parse({"backbone": {"name": "resnet50"}}).backbone.kind_options() == {}
    hub = parse({"backbone": {"name": _saved_model_dir(tmp_path), "output_key": "features"}}).backbone
    assert hub.kind_options() == {
        "signature": None,
        "training_signature": None,
        "output_key": "features",
        "input_range": None,
    }
    local = parse({"backbone": _keras_backbone(keras_file, safe_mode=True, input_range=[0, 1])}).backbone
    assert local.kind_options() == {
        "input_range": (0.0, 1.0),
        "cut_layer": None,
        "block_prefixes": None,
        "safe_mode": True,
        "reinitialize": False,
    }
