"""DVC stage `lr_find` (opt-in with `lr_find.enabled`): the LR range test of the frozen phase.

It sweeps the learning rate exponentially over a short run of the frozen phase (the new head on
cached backbone features of a subset of the training images), writes the loss-vs-LR curve with the
valley and steepest-descent suggestions, and `train.base_learning_rate: auto` takes the suggestion of
`lr_find.rule`. When disabled it writes a note saying so, in well under a second of work.
"""

from __future__ import annotations

from pipeline import params
from stages._classifier import build_classifier
from stages._entry import LR_FIND_JSON, LR_FIND_PNG, MANIFEST, PARAMS, run_stage


def main() -> None:
    config = params.load(PARAMS)
    settings = config.lr_find
    from pipeline.evaluation import plots
    from pipeline.optim.lr_finder import LRFindReport

    if not settings.enabled:
        LRFindReport(enabled=False).write(LR_FIND_JSON)
        plots.plot_note("LR range test off: set lr_find.enabled: true to run it", LR_FIND_PNG)
        print("lr_find is disabled (lr_find.enabled: false)")
        return

    from pipeline.runtime import devices

    selection = devices.configure(config.device)

    import keras

    from pipeline.data.split import read_manifest, select
    from pipeline.training.features import ImageSplit, InputSettings
    from pipeline.training.lr_range import deepest_trainable_blocks, find_learning_rate
    from stages._data import load_source

    keras.utils.set_random_seed(config.train.seed)
    source = load_source(config.data)
    rows = read_manifest(MANIFEST)
    train, val = (ImageSplit(*select(source, rows, split)) for split in ("train", "val"))
    classifier = build_classifier(config, num_classes=len(source.class_names))
    # The frozen activations the train stage needs go into the activation store here, so train reads them.
    report = find_learning_rate(
        classifier,
        train,
        optimizer=config.train.optimizer,
        inputs=InputSettings.from_params(config.train, image_size=config.backbone.image_size),
        settings=settings,
        jit_compile=selection.jit_compile,
        val=val,
        deepest_trainable_blocks=deepest_trainable_blocks(
            config.train, block_count=len(classifier.backbone.blocks_top_down), train_examples=len(train.labels)
        ),
        verbose=1,
    )
    report.write(LR_FIND_JSON)
    result = report.result
    plots.plot_lr_finder(result, LR_FIND_PNG)
    print(
        f"LR range test over {len(result.learning_rates)} steps on {report.images} images: "
        f"valley {result.valley:.3g}, steepest {result.steepest:.3g}; {settings.rule} rule suggests "
        f"{result.suggestion(settings.rule):.3g}"
    )


if __name__ == "__main__":
    run_stage(main)
