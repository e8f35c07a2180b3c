"""What every stage shares: its file paths and how a failure is reported.

Why: DVC shows a stage's stderr and stops on a non-zero exit; a user should read one line naming
what is wrong, not a traceback, for mistakes they can fix (params, missing data). Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

PARAMS = Path("params.yaml")
MANIFEST = Path("data/manifest.csv")
IMAGE_CACHE = Path("data/cache")
DATA_REPORT = Path("reports/data_report.json")
PARAMS_CHECKED = Path("build/params.checked")
TRAINED_MODEL = Path("build/model.keras")
RUN_REFERENCE = Path("build/run.json")
HISTORY_CSV = Path("reports/history.csv")
HISTORY_JSON = Path("reports/history.json")
HISTORY_PNG = Path("reports/history.png")
LAYER_MAP = Path("reports/trainable_layers.csv")
LR_FIND_JSON = Path("reports/lr_find.json")
LR_FIND_PNG = Path("reports/lr_find.png")
METRICS = Path("reports/metrics.json")
CLASSIFICATION_REPORT = Path("reports/classification_report.json")
CONFUSION_PNG = Path("reports/confusion_matrix.png")
EXPORTED_MODEL = Path("models/model.keras")
REGISTRY_REPORT = Path("reports/registry.json")

USER_ERROR_EXIT = 2


def quiet_libraries() -> None:
    """Silences TensorFlow's C++ start-up chatter and MLflow's telemetry before they load."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")


def run_stage(main: Callable[[], None]) -> None:
    """Runs a stage's `main`, turning user-fixable errors into one message and exit code 2."""
    from pipeline.backbones.keras_archive import KerasFileError
    from pipeline.data.sources import DatasetFormatError, DatasetNotFoundError
    from pipeline.devices import DeviceSelectionError
    from pipeline.params import ParamsError

    quiet_libraries()
    user_errors = (ParamsError, DatasetNotFoundError, DatasetFormatError, DeviceSelectionError, KerasFileError)
    try:
        main()
    except user_errors as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
