"""DVC stage `evaluate`: test-set metrics of the trained model, into reports/ and the run."""

from __future__ import annotations

import json

from pipeline import params
from stages._entry import (
    CLASSIFICATION_REPORT,
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

    from pipeline import devices

    devices.configure(
        requested=config.device.type, gpu_indices=config.device.gpu_indices, precision=config.device.precision
    )

    from pipeline import export, plots, tracking
    from pipeline.data.split import read_manifest, select
    from pipeline.evaluation import evaluate_classifier
    from stages._data import load_source

    source = load_source(config.data)
    test_images, test_labels = select(source, read_manifest(MANIFEST), "test")
    model = export.load_model(TRAINED_MODEL, safe_mode=config.backbone.safe_mode)
    reference = tracking.RunReference.read(RUN_REFERENCE)
    with tracking.tracked_run(tracking_uri=reference.tracking_uri, resume=reference) as run:
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
        run.log_metrics({f"test_{key}": float(value) for key, value in result.summary().items()})
        for artifact in (METRICS, CLASSIFICATION_REPORT, CONFUSION_PNG):
            run.log_artifact(artifact, "evaluation")
    print(f"test accuracy {result.accuracy:.4f}, macro F1 {result.macro_f1:.4f} on {result.examples} images")


if __name__ == "__main__":
    run_stage(main)
