"""What every stage shares: its file paths and how a failure is reported.

Why: DVC shows a stage's stderr and stops on a non-zero exit; a user should read one line naming
what is wrong, not a traceback, for mistakes they can fix (params, missing data, a tracking store
that does not answer, a diverged training): every such error derives from `pipeline.errors.PipelineError`.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import USER_ERROR_EXIT, PipelineError
from pipeline.runtime import native_log as _native_log

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
DIAGNOSIS_JSON = Path("reports/diagnosis.json")
LAYER_MAP = Path("reports/trainable_layers.csv")
LR_FIND_JSON = Path("reports/lr_find.json")
LR_FIND_PNG = Path("reports/lr_find.png")
METRICS = Path("reports/metrics.json")
CLASSIFICATION_REPORT = Path("reports/classification_report.json")
CONFUSION_PNG = Path("reports/confusion_matrix.png")
CALIBRATION_PNG = Path("reports/calibration.png")
COMPARISON = Path("reports/champion_comparison.json")
EXPORTED_MODEL = Path("models/model.keras")
EXPORTED_SAVED_MODEL = Path("models/saved_model")
REGISTRY_REPORT = Path("reports/registry.json")


def run_stage(main: Callable[[], None]) -> None:
    """Runs a stage's `main`, turning a mistake the user can fix (`PipelineError`) into one line and exit code 2.

    Every other exception is a bug and keeps its traceback. TensorFlow's harmless C++ start-up lines are
    filtered from stderr meanwhile (`pipeline.runtime.native_log`; `PIPELINE_RAW_STDERR=1` shows them).
    """
    _native_log.quiet_libraries()
    native_log = _native_log.install()
    try:
        main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    finally:
        if native_log is not None:
            native_log.uninstall()
