"""DVC stage `register`: log the model (with its card) on the run, add a registry version, export models/model.keras."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

from pipeline import params, tracking_store
from stages._entry import (
    DATA_REPORT,
    EXPORTED_MODEL,
    METRICS,
    PARAMS,
    REGISTRY_REPORT,
    RUN_REFERENCE,
    TRAINED_MODEL,
    run_stage,
)


def main() -> None:
    tracking_params = params.load(PARAMS).tracking

    import keras
    import tensorflow as tf

    from pipeline import export, provenance, tracking
    from pipeline.model_card import ModelCard

    reference = tracking.RunReference.read(RUN_REFERENCE)
    tracking_store.check_tracking_store(reference.tracking_uri, origin=f"{RUN_REFERENCE}, written by train")
    # Class names and the stored image shape travel with the model, for `tl-predict`.
    card = ModelCard.from_data_report(json.loads(DATA_REPORT.read_text(encoding="utf-8")))
    test_metrics = json.loads(METRICS.read_text(encoding="utf-8"))["test"]
    model = export.load_model(TRAINED_MODEL)
    with tracking.tracked_run(tracking_uri=reference.tracking_uri, resume=reference) as run:
        # The stage working on the run now: the UI then tells which stage a RUNNING run is in.
        run.set_tags(provenance.dvc_context(os.environ))
        model_uri = run.log_keras_model(
            model,
            name="model",
            pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
            metadata=card.to_metadata(),
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
