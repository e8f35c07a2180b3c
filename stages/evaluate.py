"""DVC stage `evaluate`: test metrics of the trained model and of the champion on one split, to reports/ and the run.

The current `@champion` of `tracking.registered_model` is scored on this run's test images, with the
majority-class baseline, so that the register stage's gate compares like with like (`pipeline.evaluation.gate`).
"""

from __future__ import annotations

import json
import os

from pipeline import params
from pipeline.tracking import store as tracking_store
from stages._entry import (
    CLASSIFICATION_REPORT,
    COMPARISON,
    CONFUSION_PNG,
    MANIFEST,
    METRICS,
    PARAMS,
    RUN_REFERENCE,
    TRAINED_MODEL,
    run_stage,
)


def main() -> None:
    config = params.load(PARAMS)

    from pipeline.runtime import devices

    devices.configure(
        accelerator=config.device.accelerator,
        gpus=config.device.gpus,
        precision=config.device.precision,
        jit_compile=config.device.jit_compile,
        memory_growth=config.device.memory_growth,
    )

    from pipeline.data.split import read_manifest, select
    from pipeline.evaluation import gate, plots
    from pipeline.evaluation.metrics import evaluate_classifier, majority_baseline, score_champion
    from pipeline.model import export
    from pipeline.tracking import lifecycle, models, provenance, registry, runs
    from stages._data import load_source

    reference = runs.RunReference.read(RUN_REFERENCE)
    tracking_store.check_tracking_store(reference.tracking_uri, origin=f"{RUN_REFERENCE}, written by train")
    source = load_source(config.data)
    test_images, test_labels = select(source, read_manifest(MANIFEST), "test")
    model = export.load_model(TRAINED_MODEL, safe_mode=config.backbone.safe_mode)
    registered_model = config.tracking.registered_model
    with lifecycle.tracked_run(tracking_uri=reference.tracking_uri, resume=reference) as run:
        # The stage working on the run now: the UI then tells which stage a RUNNING run is in.
        run.set_tags(provenance.dvc_context(os.environ))
        result = evaluate_classifier(
            model,
            test_images,
            test_labels,
            class_names=source.class_names,
            image_size=model.input_shape[1],
            batch_size=config.evaluate.batch_size,
        )
        METRICS.parent.mkdir(parents=True, exist_ok=True)
        METRICS.write_text(json.dumps({"test": result.summary()}, indent=2) + "\n", encoding="utf-8")
        CLASSIFICATION_REPORT.write_text(
            json.dumps(
                {
                    "per_class": result.per_class,
                    "confusion": result.confusion.tolist(),
                    "class_names": list(source.class_names),
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
        plots.plot_confusion_matrix(result.confusion, source.class_names, CONFUSION_PNG)

        baseline = majority_baseline(test_labels, class_names=source.class_names)
        version = registry.champion_version(run, registered_model)
        champion = (
            None
            if version is None
            else score_champion(
                version,
                lambda: models.load_model_version(run, registered_model, version),
                test_images,
                test_labels,
                class_names=source.class_names,
                batch_size=config.evaluate.batch_size,
            )
        )
        gate.Comparison(
            class_names=list(source.class_names),
            challenger=result.summary(),
            baseline=baseline.summary(),
            majority_class=baseline.class_name,
            champion=champion,
        ).write(COMPARISON)

        metrics = {f"test_{key}": float(value) for key, value in result.summary().items()}
        metrics.update({f"baseline_test_{key}": value for key, value in baseline.summary().items()})
        if champion is not None and champion.scores is not None:
            metrics.update({f"champion_test_{key}": float(champion.scores[key]) for key in gate.GATE_METRICS})
        run.log_metrics(metrics)
        if champion is None:
            compared = "no champion"
        elif champion.scores is None:
            compared = f"v{champion.version}, not comparable: {champion.reason}"
        else:
            compared = f"v{champion.version}"
        run.set_tags({"gate.compared_with": compared})
        for artifact in (METRICS, CLASSIFICATION_REPORT, CONFUSION_PNG, COMPARISON):
            run.log_artifact(artifact, "evaluation")
    print(f"test accuracy {result.accuracy:.4f}, macro F1 {result.macro_f1:.4f} on {result.examples} images")
    print(f"majority-class baseline ({baseline.class_name}) accuracy {baseline.accuracy:.4f}")
    if champion is None:
        print(f"no @champion of {registered_model} to compare with")
    elif champion.scores is None:
        print(f"@champion v{champion.version} cannot be compared: {champion.reason}")
    else:
        print(f"@champion v{champion.version} on the same test images: accuracy {champion.scores['accuracy']:.4f}")


if __name__ == "__main__":
    run_stage(main)
