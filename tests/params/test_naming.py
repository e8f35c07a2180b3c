"""The names runs are filed under in MLflow: `auto` from the data and the backbone (pipeline/params/naming.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pipeline.params import parse
from pipeline.params.naming import TrackingNames, backbone_name, data_name, resolve_tracking_names, slug
from tests.params.conftest import error_message, saved_model_dir


def test_fashion_mnist_keeps_the_names_it_always_had() -> None:
    # The schema's defaults: the IDX files Debian installs, on EfficientNet-Lite0.
    tracking = parse({}).tracking
    assert (tracking.experiment, tracking.registered_model) == (
        "fashion-mnist-transfer",
        "fashion-mnist-efficientnet-lite0",
    )


def test_the_project_params_file_says_auto_and_resolves_to_the_same_names() -> None:
    from pipeline import params

    repo_params = Path(__file__).resolve().parents[2] / "params.yaml"
    assert "  experiment: auto " in repo_params.read_text(encoding="utf-8")
    tracking = params.load(repo_params).tracking
    assert (tracking.experiment, tracking.registered_model) == (
        "fashion-mnist-transfer",
        "fashion-mnist-efficientnet-lite0",
    )


@pytest.mark.parametrize(
    ("data", "experiment", "registered_model"),
    [
        ({"kind": "folder", "path": "/data/My Photos"}, "my-photos-transfer", "my-photos-efficientnet-lite0"),
        ({"kind": "folder", "path": "scans/"}, "scans-transfer", "scans-efficientnet-lite0"),
        ({"kind": "csv", "path": "/data/birds/Birds_2024.CSV"}, "birds-2024-transfer", "birds-2024-efficientnet-lite0"),
        ({"kind": "idx", "path": "/opt/mnist"}, "mnist-transfer", "mnist-efficientnet-lite0"),
    ],
)
def test_auto_names_follow_the_data(data: dict[str, str], experiment: str, registered_model: str) -> None:
    tracking = parse({"data": data}).tracking
    assert (tracking.experiment, tracking.registered_model) == (experiment, registered_model)


def test_a_relative_dot_is_named_after_the_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "Leaf_Scans"
    project.mkdir()
    monkeypatch.chdir(project)
    assert data_name(".") == "leaf-scans"


def test_a_linked_folder_keeps_the_name_it_was_given(tmp_path: Path) -> None:
    # The user's name, not the link target's (a DVC cache or a mount would give an opaque one).
    target = tmp_path / "a1b2c3"
    target.mkdir()
    link = tmp_path / "flowers"
    os.symlink(target, link)
    assert data_name(str(link)) == "flowers"


def test_auto_names_follow_the_backbone(tmp_path: Path) -> None:
    (tmp_path / "Mobile Net SM").mkdir()
    saved_model = saved_model_dir(tmp_path / "Mobile Net SM")
    assert [
        backbone_name("mobilenet_v3_small"),
        backbone_name("https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5"),
        backbone_name(saved_model),
        backbone_name("models/Task_A.keras"),
    ] == [
        "mobilenet-v3-small",
        "google-imagenet-mobilenet-v2-100-224-feature-vector-5",
        "mobile-net-sm",
        "task-a",
    ]
    tracking = parse({"backbone": {"name": "mobilenet_v3_small"}}).tracking
    assert tracking.registered_model == "fashion-mnist-mobilenet-v3-small"


def test_names_given_are_kept_as_written() -> None:
    tracking = parse({"tracking": {"experiment": "Team A / sweep 3", "registered_model": "Shoes_v2"}}).tracking
    assert (tracking.experiment, tracking.registered_model) == ("Team A / sweep 3", "Shoes_v2")
    assert resolve_tracking_names(
        experiment="mine", registered_model="auto", data_path="/x/shoes", backbone="efficientnet_lite0"
    ) == TrackingNames(experiment="mine", registered_model="shoes-efficientnet-lite0")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Fashion MNIST_v2", "fashion-mnist-v2"),
        ("Vögel & Bäume", "vogel-baume"),
        ("--a..b--", "a-b"),
        ("%%%", "data"),
        ("x" * 70 + "-y", "x" * 64),
        ("a" * 63 + "-b", "a" * 63),
    ],
)
def test_slugs_are_lower_case_ascii_words(text: str, expected: str) -> None:
    assert slug(text, fallback="data") == expected


@pytest.mark.parametrize(
    ("tracking", "message"),
    [
        (
            {"registered_model": "team/shoes"},
            r"tracking.registered_model: received 'team/shoes'; holds / or :, which MLflow refuses",
        ),
        ({"registered_model": "a:b"}, r"tracking.registered_model: received 'a:b'; holds / or :"),
        ({"experiment": " shoes"}, r"tracking.experiment: received ' shoes'; starts or ends with a space"),
        ({"experiment": ""}, r"tracking.experiment: received ''; String should have at least 1 character"),
        ({"registered_model": "m" * 257}, r"tracking.registered_model: received 'm+'; String should have at most 256"),
    ],
)
def test_names_mlflow_would_refuse_stop_validation(tracking: dict[str, str], message: str) -> None:
    assert re.search(message, error_message({"tracking": tracking}))
