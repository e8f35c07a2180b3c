"""DVC stage `register`: log the model (with its card) on the run, add a registry version, move `@champion`
if the gate says so, and export models/model.keras and models/saved_model.

Two pipelines registering to one name at once take turns (`pipeline.tracking.registry.register_gated`);
a champion promoted by the other since evaluate is scored on this run's test split before the gate
decides. A full disk, a read-only folder or a kill leaves the previous exports and no incomplete version.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import params
from pipeline.runtime import atomic
from pipeline.tracking import store as tracking_store
from stages._entry import (
    COMPARISON,
    DATA_REPORT,
    EXPORTED_MODEL,
    EXPORTED_SAVED_MODEL,
    MANIFEST,
    PARAMS,
    REGISTRY_REPORT,
    RUN_REFERENCE,
    TRAINED_MODEL,
    run_stage,
)

if TYPE_CHECKING:
    from pipeline.evaluation.comparison import ChampionScores, Comparison
    from pipeline.tracking.registry import Registration
    from pipeline.tracking.runs import TrackedRun


def main() -> None:
    config = params.load(PARAMS)
    settings = config.tracking
    from pipeline.runtime import devices

    # Before TensorFlow's first op: the model is loaded, exported and logged on the devices the params name.
    devices.configure(config.device)
    import keras
    import tensorflow as tf

    from pipeline.data.report import DataReport
    from pipeline.evaluation import gate
    from pipeline.evaluation.comparison import Comparison
    from pipeline.model import export
    from pipeline.model.model_card import ModelCard
    from pipeline.tracking import models, provenance, registry
    from pipeline.tracking.lifecycle import tracked_run
    from pipeline.tracking.runs import RunReference

    reference = RunReference.read(RUN_REFERENCE)
    tracking_store.check_tracking_store(reference.tracking_uri, origin=f"{RUN_REFERENCE}, written by train")
    # Class names and the stored image shape travel with the model, for `tl-predict`.
    card = ModelCard.from_data_report(DataReport.read(DATA_REPORT))
    comparison = Comparison.read(COMPARISON)
    model = export.load_model(TRAINED_MODEL, safe_mode=config.backbone.safe_mode)
    name = settings.registered_model
    with tracked_run(tracking_uri=reference.tracking_uri, resume=reference) as run:
        # The stage working on the run now: the UI then tells which stage a RUNNING run is in.
        run.set_tags(provenance.dvc_context(os.environ))
        decide = gate.decider(
            comparison,
            metric=settings.champion_metric,
            margin=settings.champion_margin,
            alpha=settings.champion_alpha,
            baselines=settings.gate_baselines,
            rescore=functools.partial(_rescore_champion, run, config, comparison),
        )
        # The order keeps the registry and models/ whole under a full disk, a read-only folder or a kill:
        # every file is written beside its place first (nothing is registered if that fails), then the
        # version is added, then the files are renamed into place; a failure after the version exists
        # withdraws it (pipeline.tracking.registry.withdraw), and the previous exports stay.
        report_file = atomic.Staged(REGISTRY_REPORT)
        registration = None
        try:
            with export.staged_exports(model, EXPORTED_MODEL, EXPORTED_SAVED_MODEL):
                model_uri = models.log_keras_model(
                    run,
                    model,
                    name="model",
                    pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
                    class_names=comparison.class_names,
                    metadata=card.to_metadata(),
                )
                registration, decision = registry.register_gated(run, model_uri=model_uri, name=name, decide=decide)
                report = json.dumps({**asdict(registration), "decision": asdict(decision)}, indent=2) + "\n"
                report_file.write(functools.partial(Path.write_text, data=report, encoding="utf-8"))
            report_file.commit()
            registry.mark_complete(run, name, registration.version)
        except BaseException:
            if registration is not None:
                registry.withdraw(run, name, registration.version)
            raise
        finally:
            report_file.discard()
    print(f"registered {name} v{registration.version} ({model_uri}); {_verdict(registration)}: {decision.reason}")


def _rescore_champion(
    run: TrackedRun, config: params.PipelineParams, comparison: Comparison, version: str
) -> ChampionScores:
    """A champion promoted since the evaluate stage (by another pipeline), scored on this run's test split.

    Why here and not only in evaluate: the registrations take turns (`registry.register_gated`), and the
    champion a turn finds is compared like with like, on the same test images the challenger was, with
    McNemar's test against the challenger's answers that evaluate recorded.
    """
    from pipeline.data.split import read_manifest, select
    from pipeline.evaluation.metrics import score_champion
    from pipeline.evaluation.significance import unpack_right
    from pipeline.tracking import models
    from stages._data import load_source

    source = load_source(config.data)
    images, labels = select(source, read_manifest(MANIFEST), "test")
    load = functools.partial(models.load_model_version, run, config.tracking.registered_model, version)
    challenger_right = unpack_right(comparison.challenger_right, len(labels)) if comparison.challenger_right else None
    scores = score_champion(
        version,
        load,
        images,
        labels,
        class_names=source.class_names,
        batch_size=config.evaluate.batch_size,
        challenger_right=challenger_right,
    )
    print(f"@champion moved to v{version} since evaluate (another pipeline registered): scored it on this test split")
    return scores


def _verdict(registration: Registration) -> str:
    if registration.is_champion:
        return "it is the new @champion"
    if registration.champion_version is None:
        return "it is not @champion, and there is none"
    return f"@champion stays v{registration.champion_version}"


if __name__ == "__main__":
    run_stage(main)
