"""The names a run is filed under in MLflow: `tracking.experiment` and `tracking.registered_model`, `auto` or given.

Why derived from the data: with fixed defaults, every dataset a user tried landed in one experiment and
one registered model, whose `@champion` then moved between models of different tasks. `auto` names
both after the data (the IDX folder, the image folder or the CSV file) and, for the registered model,
the backbone: Fashion-MNIST on EfficientNet-Lite0 keeps the names it always had, `fashion-mnist-transfer`
and `fashion-mnist-efficientnet-lite0`.

Resolved once, when params.yaml is validated (`PipelineParams`), so that every stage and console command
reads the same name from `config.tracking`. Pure: strings in, strings out, no file is opened.
"""

from __future__ import annotations

import os
import re
import unicodedata
import urllib.parse
from dataclasses import dataclass
from pathlib import PurePath

from pipeline.backbones.names import HUB_URL_SCHEMES

AUTO = "auto"
EXPERIMENT_SUFFIX = "transfer"
# MLflow's limits: 500 characters for an experiment, 256 for a registered model (its SQL column).
MAX_EXPERIMENT_LENGTH = 500
MAX_REGISTERED_MODEL_LENGTH = 256
# A name part longer than this is cut: names are read in the UI's narrow columns.
_MAX_PART_LENGTH = 64
# MLflow refuses a registered model name holding either of these (`mlflow.utils.validation._validate_model_name`).
MODEL_NAME_FORBIDDEN = ("/", ":")


@dataclass(frozen=True)
class TrackingNames:
    """Where a run goes in MLflow.

    Attributes:
        experiment: The experiment's name.
        registered_model: The registered model's name.
    """

    experiment: str
    registered_model: str


def slug(text: str, *, fallback: str) -> str:
    """`text` as lower-case ASCII words joined by `-` (`Fashion MNIST_v2` -> `fashion-mnist-v2`).

    Why: a name valid everywhere MLflow shows or parses it (URLs, `models:/<name>@champion`, file stores),
    and the same whether the folder was called `My Photos` or `my_photos`.

    Args:
        text: Any name.
        fallback: The slug when nothing of `text` is left (a name of symbols only).

    Returns:
        At most 64 characters of [a-z0-9-], neither starting nor ending with `-`.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    words = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return words[:_MAX_PART_LENGTH].rstrip("-") or fallback


def data_name(path: str) -> str:
    """The data's part of a name: the IDX or image folder's name, or the CSV file's name without `.csv`.

    Args:
        path: `data.path`.

    Returns:
        The slug (`/usr/share/datasets/fashion-mnist` -> `fashion-mnist`).
    """
    # The name as the user wrote it, made absolute without following links (`.` is the working folder's name):
    # a folder linked from elsewhere keeps the name it was given here.
    name = os.path.basename(os.path.abspath(path)) or path
    if name.lower().endswith(".csv"):
        name = name[: -len(".csv")]
    return slug(name, fallback="data")


def backbone_name(name: str) -> str:
    """The backbone's part of a name: its registered name, TF Hub URL path, SavedModel folder or .keras file name.

    Args:
        name: `backbone.name`.

    Returns:
        The slug (`efficientnet_lite0` -> `efficientnet-lite0`).
    """
    if name.startswith(HUB_URL_SCHEMES):
        text = urllib.parse.urlsplit(name).path
    else:
        path = PurePath(name)
        text = path.stem if path.suffix == ".keras" else (path.name or name)
    return slug(text, fallback="backbone")


def resolve_tracking_names(*, experiment: str, registered_model: str, data_path: str, backbone: str) -> TrackingNames:
    """The names in force: each given name as written, each `auto` derived from the data and the backbone.

    Args:
        experiment: `tracking.experiment`; `auto` gives `<data>-transfer`.
        registered_model: `tracking.registered_model`; `auto` gives `<data>-<backbone>`.
        data_path: `data.path`.
        backbone: `backbone.name`.

    Returns:
        The experiment's and the registered model's names.
    """
    data = data_name(data_path)
    return TrackingNames(
        experiment=f"{data}-{EXPERIMENT_SUFFIX}" if experiment == AUTO else experiment,
        registered_model=f"{data}-{backbone_name(backbone)}" if registered_model == AUTO else registered_model,
    )
