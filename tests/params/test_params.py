"""Tests of pipeline/params/__init__.py (load, parse, flatten, the checks across sections) and of the
`validate` stage that runs it. Each section's own checks are tested in tests/params/test_<section>.py."""

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
from tests.params.conftest import LITE0_BLOCKS, error_message, keras_backbone, saved_model_dir

REPO_ROOT = Path(__file__).resolve().parents[2]


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
        "auto",
    )
    assert params.train.frozen_epochs == "auto"
    assert (params.train.phase_length.min_steps, params.train.phase_length.max_steps) == (600, 3500)
    assert params.train.phase_length.max_epochs == 100
    assert params.head.hidden_units == []
    assert (params.head.activation, params.head.initializer, params.head.batch_norm) == ("relu", "auto", "none")
    assert params.lr_find.enabled is False
    assert params.train.base_learning_rate == 1e-3
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
    assert all(stage.blocks == "auto" or stage.blocks <= 9 for stage in params.train.unfreeze)
    assert params.train.unfreeze_depth.small_data_blocks <= 9


def test_unknown_top_level_key() -> None:
    message = error_message({"bogus": 1})

    assert "bogus: unknown key (received 1)" in message
    assert "allowed keys here: backbone, data, device, diagnostics, evaluate, head, lr_find, tracking, train" in message


def test_unknown_nested_key_lists_keys_of_its_section() -> None:
    message = error_message({"head": {"dropuot": 0.1}})

    assert "head.dropuot: unknown key (received 0.1)" in message
    assert (
        "allowed keys here: activation, batch_norm, dropout, dropout_type, hidden_dropout, hidden_units, "
        "initializer, kernel_regularizer, max_norm, maxout_pieces, negative_slope, pooling"
    ) in message


def test_unknown_key_inside_unfreeze_stage_lists_stage_keys() -> None:
    message = error_message({"train": {"unfreeze": [{"blocks": 1, "epochs": 1, "lr_factor": 0.1, "extra": 3}]}})

    assert "train.unfreeze.0.extra: unknown key (received 3)" in message
    assert (
        "allowed keys here: blocks, bn_policy, early_stopping, epochs, lr_decay_per_block, lr_factor, max_epochs, "
        "max_steps, min_steps, optimizer, schedule"
    ) in message


def test_every_problem_is_reported_on_its_own_line() -> None:
    message = error_message({"train": {"batch_size": 0, "frozen_epochs": 0}})

    lines = message.splitlines()
    assert lines[0] == "params.yaml is invalid:"
    assert [line.strip().split(":")[0] for line in lines[1:]] == ["train.batch_size", "train.frozen_epochs"]


def test_a_saved_model_is_one_block(tmp_path: Path) -> None:
    directory = saved_model_dir(tmp_path)
    backbone = {"name": directory, "training_signature": "serve_train"}
    message = error_message(
        {"backbone": backbone, "train": {"unfreeze": [{"blocks": 2, "epochs": 1, "lr_factor": 0.1}]}}
    )
    assert (
        f"train.unfreeze.0.blocks is 2, but {directory} is a SavedModel: TensorFlow Hub and SavedModel backbones are "
        "one opaque block (saved_model), so at most 1 block (or all) can be unfrozen" in message
    )
    for blocks in (1, "all"):
        stage = {"blocks": blocks, "epochs": 1, "lr_factor": 0.1}
        accepted = parse({"backbone": backbone, "train": {"bn_policy": "trainable", "unfreeze": [stage]}}).train
        assert [parsed.blocks for parsed in accepted.unfreeze] == [blocks]


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
    raw = {"backbone": {"name": saved_model_dir(tmp_path), **backbone}, "train": {**train, "unfreeze": [stage]}}
    if expected is None:
        assert parse(raw).train.unfreeze[0].blocks == 1
    else:
        assert expected in error_message(raw)
    # Without an unfreeze stage the SavedModel never trains, and any policy is accepted.
    assert parse({**raw, "train": {**train, "bn_policy": "frozen"}}).train.unfreeze == []


def test_unfreeze_deeper_than_backbone_lists_block_names() -> None:
    message = error_message({"train": {"unfreeze": [{"blocks": 10, "epochs": 1, "lr_factor": 0.1}]}})

    assert "train.unfreeze.0.blocks is 10" in message
    assert f"efficientnet_lite0 has 9 blocks (top-down: {LITE0_BLOCKS})" in message


def test_unfreeze_as_deep_as_backbone_is_accepted() -> None:
    params = parse({"train": {"unfreeze": [{"blocks": 9, "epochs": 1, "lr_factor": 0.1}]}})

    assert params.train.unfreeze[0].blocks == 9


def test_unfreeze_error_line_starts_with_its_key() -> None:
    message = error_message({"train": {"unfreeze": [{"blocks": 10, "epochs": 1, "lr_factor": 0.1}]}})

    assert message.splitlines()[1].strip().startswith("train.unfreeze.0.blocks")


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
        "train.unfreeze.1.min_steps": "null",
        "train.unfreeze.1.max_steps": "null",
        "train.unfreeze.1.max_epochs": "null",
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


def test_onecycle_momentum_needs_an_optimizer_with_momentum() -> None:
    stage = {"blocks": 1, "epochs": 1, "lr_factor": 0.1, "optimizer": "adagrad"}
    message = error_message({"train": {"schedule": "onecycle", "unfreeze": [stage]}})

    assert (
        "train.unfreeze.0: the onecycle schedule cycles momentum, but optimizer adagrad has no momentum term" in message
    )
    accepted = parse({"train": {"schedule": {"name": "onecycle", "cycle_momentum": False}, "optimizer": "adagrad"}})
    assert (accepted.train.schedule.cycle_momentum, accepted.train.optimizer.name) == (False, "adagrad")


def test_auto_learning_rate_needs_the_range_test() -> None:
    message = error_message({"train": {"base_learning_rate": "auto"}})

    assert "train.base_learning_rate is auto" in message
    assert "lr_find.enabled is false" in message
    assert (
        parse({"train": {"base_learning_rate": "auto"}, "lr_find": {"enabled": True}}).train.base_learning_rate
        == "auto"
    )


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
    assert expected in error_message({"train": train})


def test_unfreeze_deeper_than_a_keras_files_blocks_lists_them(keras_file: str) -> None:
    message = error_message(
        {
            "backbone": keras_backbone(keras_file),
            "train": {"unfreeze": [{"blocks": 11, "epochs": 1, "lr_factor": 0.1}]},
        }
    )

    assert f"train.unfreeze.0.blocks is 11, but {keras_file} has 10 blocks (top-down: tiny_classifier_head_bn_1, " in (
        message
    )
    assert "stem_bn, stem_conv); use all to unfreeze every block" in message
    accepted = parse(
        {
            "backbone": keras_backbone(keras_file),
            "train": {"unfreeze": [{"blocks": 10, "epochs": 1, "lr_factor": 0.1}]},
        }
    )
    assert accepted.train.unfreeze[0].blocks == 10


def test_validate_stage_refuses_a_tracking_scheme_mlflow_cannot_use(tmp_path: Path) -> None:
    # Before any output: MLflow itself would find out only when train first writes a run.
    _write_params(tmp_path, {"tracking": {"uri": "s3://team-bucket/mlruns"}})

    result = _run_validate(tmp_path)

    assert result.returncode == 2
    assert re.fullmatch(
        r"error: tracking store s3://team-bucket/mlruns \(from tracking.uri in params.yaml\) cannot be used: MLflow "
        r"has no tracking store for scheme s3://; schemes that work: sqlite:///<file>.db; postgresql://, mysql:// or "
        r"mssql:// \(a SQLAlchemy URL, optionally \+driver\); http:// or https:// \(an MLflow server\); databricks; "
        r"a folder path or file:// \(with MLFLOW_ALLOW_FILE_STORE=true\)\n",
        result.stderr,
    ), result.stderr
    assert not (tmp_path / "build" / "params.checked").exists()
