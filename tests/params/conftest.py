"""Shared helpers of the params tests: the refusal message of a document, a SavedModel folder, a .keras file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.params import ParamsError, parse

LITE0_BLOCKS = "top, block7, block6, block5, block4, block3, block2, block1, stem"


def error_message(raw: Any) -> str:
    """Parses `raw`, expecting a ParamsError, and returns its message."""
    with pytest.raises(ParamsError) as caught:
        parse(raw)
    return str(caught.value)


def saved_model_dir(directory: Path) -> str:
    """A folder that passes the TF-free SavedModel check (validation does not read the graph)."""
    (directory / "saved_model.pb").write_bytes(b"")
    return str(directory)


# A local .keras file as the backbone: read without TensorFlow, refused with the key to change.


# Package scope: test_backbone.py and test_params.py read the same file, which no test changes.
@pytest.fixture(scope="package")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.conftest import save_tiny_classifier

    path = tmp_path_factory.mktemp("keras") / "task_a.keras"
    save_tiny_classifier(path)
    return str(path)


def keras_backbone(path: str, **settings: Any) -> dict[str, Any]:
    return {"name": path, "image_size": 32, **settings}
