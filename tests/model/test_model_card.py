"""Model card: from the data report of each data kind, through MLflow metadata and back, refusals."""

from __future__ import annotations

import pytest

from pipeline.data.report import DataReport
from pipeline.model.model_card import ModelCard, ModelCardError

IDX_REPORT = {"source_images": 70000, "image_shape": [28, 28], "class_names": ["T-shirt/top", "Trouser"]}
FOLDER_REPORT = {"kind": "folder", "stored_shape": [96, 96, 3], "class_names": ["cat", "dog"]}


def test_idx_data_gives_a_grey_card_at_the_idx_size() -> None:
    card = ModelCard.from_data_report(DataReport.from_dict(IDX_REPORT))
    assert card == ModelCard(class_names=("T-shirt/top", "Trouser"), stored_shape=(28, 28))
    assert (card.color, card.stored_size) == ("grey", 28)


def test_image_files_give_the_cache_colour_and_size() -> None:
    card = ModelCard.from_data_report(DataReport.from_dict(FOLDER_REPORT))
    assert (card.color, card.stored_size) == ("rgb", 96)
    grey = ModelCard.from_data_report(DataReport.from_dict({**FOLDER_REPORT, "stored_shape": [64, 64]}))
    assert (grey.color, grey.stored_size) == ("grey", 64)


def test_non_square_stored_images_have_no_stored_size() -> None:
    assert ModelCard(class_names=("a", "b"), stored_shape=(20, 30)).stored_size is None


def test_metadata_round_trip() -> None:
    card = ModelCard.from_data_report(DataReport.from_dict(IDX_REPORT))
    metadata = card.to_metadata()
    assert metadata == {"model_card": {"class_names": ["T-shirt/top", "Trouser"], "stored_shape": [28, 28]}}
    assert ModelCard.from_metadata(metadata) == card
    assert ModelCard.from_metadata(None) is None
    assert ModelCard.from_metadata({"other": 1}) is None


def test_malformed_entries_are_refused_with_what_was_received() -> None:
    with pytest.raises(ModelCardError, match=r"data report has no list of class names \(class_names: None\)"):
        ModelCard.from_data_report(DataReport.from_dict({"image_shape": [28, 28]}))
    with pytest.raises(ModelCardError, match=r"data report has no image shape .* \(received \[28, 28, 4\]\)"):
        ModelCard.from_data_report(DataReport.from_dict({"class_names": ["a"], "image_shape": [28, 28, 4]}))
    with pytest.raises(ModelCardError, match="model metadata model_card is not a mapping: 'x'"):
        ModelCard.from_metadata({"model_card": "x"})
