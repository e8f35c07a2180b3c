"""DVC stage `register`: log the model (with its card) on the run, add a registry version, move `@champion`
if the gate says so, and export models/model.keras and models/saved_model."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import TYPE_CHECKING

from pipeline import params
from pipeline.tracking import store as tracking_store
from stages._entry import (
    COMPARISON,
    DATA_REPORT,
    EXPORTED_MODEL,
    EXPORTED_SAVED_MODEL,
    PARAMS,
    REGISTRY_REPORT,
    RUN_REFERENCE,
    TRAINED_MODEL,
    run_stage,
)

if TYPE_CHECKING:
    from pipeline.tracking.registry import Registration


def main() -> None:
    config = params.load(PARAMS)
    settings = config.tracking

    import keras
    import tensorflow as tf

    from pipeline.data.report import DataReport
    from pipeline.evaluation import gate
    from pipeline.model import export
    from pipeline.model.model_card import ModelCard
    from pipeline.tracking import models, provenance, registry
    from pipeline.tracking.lifecycle import tracked_run
    from pipeline.tracking.runs import RunReference

    reference = RunReference.read(RUN_REFERENCE)
    tracking_store.check_tracking_store(reference.tracking_uri, origin=f"{RUN_REFERENCE}, written by train")
    # Class names and the stored image shape travel with the model, for `tl-predict`.
    card = ModelCard.from_data_report(DataReport.read(DATA_REPORT))
    comparison = gate.Comparison.read(COMPARISON)
    model = export.load_model(TRAINED_MODEL, safe_mode=config.backbone.safe_mode)
    name = settings.registered_model
    with tracked_run(tracking_uri=reference.tracking_uri, resume=reference) as run:
        # The stage working on the run now: the UI then tells which stage a RUNNING run is in.
        run.set_tags(provenance.dvc_context(os.environ))
        model_uri = models.log_keras_model(
            run,
            model,
            name="model",
            pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
            class_names=comparison.class_names,
            metadata=card.to_metadata(),
        )
        decision = gate.decide(
            comparison,
            metric=settings.champion_metric,
            margin=settings.champion_margin,
            current_champion=registry.champion_version(run, name),
            baselines=settings.gate_baselines,
        )
        registration = registry.register_model(
            run,
            model_uri=model_uri,
            name=name,
            promote=decision.promote,
            version_tags=decision.version_tags(),
            run_tags=decision.run_tags(),
        )
        export.save_model(model, EXPORTED_MODEL)
        export.export_saved_model(model, EXPORTED_SAVED_MODEL)
        report = {**asdict(registration), "decision": asdict(decision)}
        REGISTRY_REPORT.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"registered {name} v{registration.version} ({model_uri}); {_verdict(registration)}: {decision.reason}")


def _verdict(registration: Registration) -> str:
    if registration.is_champion:
        return "it is the new @champion"
    if registration.champion_version is None:
        return "it is not @champion, and there is none"
    return f"@champion stays v{registration.champion_version}"


if __name__ == "__main__":
    run_stage(main)
