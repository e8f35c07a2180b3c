"""DVC stage `register`: log the model on the run, add a registry version, export models/model.keras."""

from __future__ import annotations

import json
from dataclasses import asdict

from pipeline import params
from stages._entry import EXPORTED_MODEL, METRICS, PARAMS, REGISTRY_REPORT, RUN_REFERENCE, TRAINED_MODEL, run_stage


def main() -> None:
    config = params.load(PARAMS)
    tracking_params = config.tracking

    import keras
    import tensorflow as tf

    from pipeline import export, tracking

    test_metrics = json.loads(METRICS.read_text(encoding="utf-8"))["test"]
    model = export.load_model(TRAINED_MODEL, safe_mode=config.backbone.safe_mode)
    reference = tracking.RunReference.read(RUN_REFERENCE)
    with tracking.tracked_run(tracking_uri=reference.tracking_uri, resume=reference) as run:
        model_uri = run.log_keras_model(
            model,
            name="model",
            pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
        )
        registration = tracking.register_model(
            run,
            model_uri=model_uri,
            name=tracking_params.registered_model,
            metric=tracking_params.champion_metric,
            value=float(test_metrics[tracking_params.champion_metric]),
        )
        export.save_model(model, EXPORTED_MODEL)
        REGISTRY_REPORT.write_text(json.dumps(asdict(registration), indent=2) + "\n", encoding="utf-8")
    verdict = (
        "is the new @champion"
        if registration.is_champion
        else (f"stays behind @champion v{registration.champion_version}")
    )
    print(f"registered {registration.name} v{registration.version} ({model_uri}); it {verdict}")


if __name__ == "__main__":
    run_stage(main)
