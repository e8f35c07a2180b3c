"""The data section of the params schema (pipeline/params/data.py): kinds, paths, fractions, subsets."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.params import parse
from tests.params.conftest import error_message


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.4), (0.45, 0.5)])
def test_fractions_leaving_too_little_training_data(val: float, test: float) -> None:
    message = error_message({"data": {"val_fraction": val, "test_fraction": test}})

    assert "data: received" in message
    assert f"'val_fraction': {val}" in message
    assert f"'test_fraction': {test}" in message
    assert f"val_fraction + test_fraction is {val + test}" in message
    assert "below 0.9" in message


@pytest.mark.parametrize(
    ("kind", "what"), [("folder", "a folder of class subfolders"), ("csv", "a CSV file of path,label rows")]
)
def test_image_file_kinds_need_a_path(kind: str, what: str) -> None:
    message = error_message({"data": {"kind": kind}})

    assert (
        f"kind is '{kind}', so path must name {what}; received path '/usr/share/datasets/fashion-mnist', "
        "the IDX default"
    ) in message


def test_path_names_the_idx_folder_too() -> None:
    assert parse({}).data.path == "/usr/share/datasets/fashion-mnist"
    assert parse({"data": {"path": "mnist"}}).data.path == "mnist"
    assert "data.path: received None; Input should be a valid string" in error_message({"data": {"path": None}})
    assert "data.path: received ''; String should have at least 1 character" in error_message({"data": {"path": ""}})


def test_source_dir_says_it_is_now_path() -> None:
    message = error_message({"data": {"source_dir": "/data/mnist"}})

    assert (
        "data.source_dir ('/data/mnist') is now data.path, which names the data of every kind (the IDX folder "
        "for kind idx)"
    ) in message


def test_unknown_data_kind_lists_the_kinds() -> None:
    message = error_message({"data": {"kind": "zip"}})

    assert "data.kind: received 'zip'; Input should be 'idx', 'folder' or 'csv'" in message


@pytest.mark.parametrize("size", [7, 1025])
def test_stored_size_out_of_range(size: int) -> None:
    message = error_message({"data": {"kind": "folder", "path": "photos", "stored_size": size}})

    assert f"data.stored_size: received {size}" in message


def test_folder_kind_accepted() -> None:
    data = parse({"data": {"kind": "folder", "path": "photos", "stored_size": 64, "color": "grey"}}).data

    assert (data.kind, data.path, data.stored_size, data.color) == ("folder", "photos", 64, "grey")


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
    assert expected in error_message({"data": data})
