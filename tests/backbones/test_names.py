"""`backbone_kind`: which kind of backbone a `backbone.name` names, decided without TensorFlow."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.backbones.names import backbone_kind


def test_each_form_has_its_kind(tmp_path: Path) -> None:
    assert backbone_kind("efficientnet_lite0") == "registered"
    assert backbone_kind("resnet50_v2") == "registered"
    assert backbone_kind("https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5") == "hub"
    assert backbone_kind("http://example.com/model.tar.gz") == "hub"
    assert backbone_kind(str(tmp_path)) == "hub"
    assert backbone_kind("models/extractor.keras") == "keras_file"


def test_anything_else_lists_what_is_allowed(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"^unknown backbone 'resnet5'; registered backbones: efficientnet_lite0, efficientnet_lite1, .*, "
        r"convnext_xlarge; or a TF Hub handle \(an http:// or https:// URL\), a SavedModel directory, or a \.keras "
        r"file$",
    ):
        backbone_kind("resnet5")
    with pytest.raises(ValueError, match=f"^no directory {tmp_path / 'gone'} exists; registered backbones: "):
        backbone_kind(str(tmp_path / "gone"))


def test_backbone_kind_follows_the_name(tmp_path) -> None:
    assert backbone_kind("efficientnet_lite0") == "registered"
    assert backbone_kind("https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5") == "hub"
    assert backbone_kind(str(tmp_path)) == "hub"
    assert backbone_kind("models/model.keras") == "keras_file"
    with pytest.raises(ValueError, match="unknown backbone 'no_such_folder'"):
        backbone_kind("no_such_folder")
