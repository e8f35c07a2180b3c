"""`tl-predict`: classifies image files or folders with the champion, a run's model, or a `.keras` file.

Why `tl-` (transfer learning): `predict` is too generic a name for a command on PATH.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.cli import settings
from pipeline.errors import USER_ERROR_EXIT, PipelineError

if TYPE_CHECKING:
    import keras

    from pipeline.model.model_card import ModelCard
    from pipeline.serving.predict import Prediction, Reading

DEFAULT_DATA_REPORT = Path("reports/data_report.json")
# What the evaluate stage logs on every run; it names the classes of models logged before model cards.
EVALUATION_REPORT = "evaluation/classification_report.json"
RUN_MODEL_PATH = "model"
_RUN_ID = re.compile(r"[0-9a-f]{32}")
EXIT_SOME_FAILED = 1
PLUS_MINUS = "±"


def build_parser() -> argparse.ArgumentParser:
    """The command line of `tl-predict`."""
    parser = argparse.ArgumentParser(
        prog="tl-predict",
        description="Classify image files, or every image in folders (recursively), with a trained model: the "
        "top-k classes with their probabilities, optionally with MC-dropout uncertainty. Files are read like "
        "the model's training images (grey or RGB, stored size, then the model's input size).",
        epilog="Exit code 0 when every file was classified, 1 when some could not be read (each named on "
        "stderr), 2 for a usage or model error. Example: tl-predict shirt.png photos/ --top-k 3 --mc-dropout 20",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files and folders of them")
    parser.add_argument(
        "--model",
        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, a run id, or a .keras file "
        "(default: models:/<params.yaml's tracking.registered_model>@champion)",
    )
    settings.add_store_arguments(parser)
    parser.add_argument(
        "--data-report",
        type=Path,
        metavar="FILE",
        help="for a .keras file: the data report of its training data (class names, image shape); default "
        f"{DEFAULT_DATA_REPORT} when it exists. Models from MLflow carry this in their metadata.",
    )
    parser.add_argument("--top-k", type=int, default=3, metavar="K", help="classes shown per file (%(default)s)")
    parser.add_argument(
        "--mc-dropout",
        type=int,
        default=0,
        metavar="N",
        help="N >= 2 stochastic passes with only the dropout layers active: mean and std of each probability",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (%(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar for folders")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `tl-predict`; returns the exit code.

    Args:
        argv: The arguments (default: the command line).

    Returns:
        0 when every file was classified, 1 when some were not, 2 for a mistake the user can fix.
    """
    args = build_parser().parse_args(argv)
    from pipeline.runtime import native_log

    # TensorFlow's harmless C++ start-up lines would come before every answer.
    log_filter = native_log.install()
    try:
        return _classify(args)
    finally:
        if log_filter is not None:
            log_filter.uninstall()


def _classify(args: argparse.Namespace) -> int:
    from pipeline.serving import predict

    settings.quiet_libraries()
    try:
        _check_numbers(args)
        defaults = settings.project_defaults(args.params)
        from pipeline.params.runtime import DeviceParams
        from pipeline.runtime import devices

        # Before TensorFlow's first op, as in every stage: the project's `device` section (GPUs, precision).
        devices.configure(defaults.device or DeviceParams())
        model, description, card, names = _load(args, defaults)
        class_names = predict.class_names_for(card.class_names if card else names, model.output_shape[-1])
        reading = predict.reading_for(card, image_size=predict.input_size(model), max_pixels=defaults.max_image_pixels)
        print(f"{description}: {_describe_reading(reading, card, names)}", file=sys.stderr)
        predictions = predict.classify(
            model,
            args.paths,
            class_names=class_names,
            reading=reading,
            top_k=args.top_k,
            mc_passes=args.mc_dropout,
            batch_size=args.batch_size,
            progress=not args.no_progress and any(path.is_dir() for path in args.paths),
        )
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    if args.json:
        document = {
            "model": description,
            "mc_dropout_passes": args.mc_dropout,
            "predictions": as_json(predictions),
        }
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(render_text(predictions))
    sys.stdout.flush()
    errors = error_lines(predictions)
    sys.stderr.write(errors)
    return EXIT_SOME_FAILED if errors else 0


def _check_numbers(args: argparse.Namespace) -> None:
    if args.top_k < 1:
        raise settings.SettingsError(f"--top-k must be at least 1, received {args.top_k}")
    if args.mc_dropout == 1 or args.mc_dropout < 0:
        raise settings.SettingsError(f"--mc-dropout needs at least 2 passes (0: off), received {args.mc_dropout}")
    if args.batch_size < 1:
        raise settings.SettingsError(f"--batch-size must be at least 1, received {args.batch_size}")


def model_uri(reference: str) -> str:
    """A run id alone means the model the run logged (`runs:/ID/model`); any other reference is kept."""
    return f"runs:/{reference}/{RUN_MODEL_PATH}" if _RUN_ID.fullmatch(reference) else reference


def _is_uri(reference: str) -> bool:
    return ":/" in reference or bool(_RUN_ID.fullmatch(reference))


def _load(
    args: argparse.Namespace, defaults: settings.ProjectDefaults
) -> tuple[keras.Model, str, ModelCard | None, tuple[str, ...] | None]:
    """Loads the model; returns it, a description, its card, and class names found without a card."""
    reference = args.model
    if reference is None:
        name = settings.required(defaults.registered_model, "--model", "tracking.registered_model", args.params)
        reference = f"models:/{name}@champion"
    if not _is_uri(reference):
        path = Path(reference)
        if path.is_file():
            return _load_keras_file(path, args.data_report)
        if not path.is_dir():
            raise settings.SettingsError(f"model {reference} not found: give a .keras file or an MLflow model URI")
    return _load_logged(model_uri(reference), args, defaults)


def _load_keras_file(path: Path, data_report: Path | None) -> tuple[keras.Model, str, ModelCard | None, None]:
    """A `.keras` file, with the card of a data report (by default the project's, when there is one)."""
    from pipeline.data.report import DataReport
    from pipeline.model.export import load_model
    from pipeline.model.model_card import ModelCard

    report = data_report or (DEFAULT_DATA_REPORT if DEFAULT_DATA_REPORT.is_file() else None)
    card = None
    if report is not None:
        if not report.is_file():
            raise settings.SettingsError(f"--data-report {report} not found: give the data report of the model's data")
        card = ModelCard.from_data_report(DataReport.read(report))
    described = f"{path} (classes and image shape from {report})" if report else str(path)
    try:
        model = load_model(path)
    except (OSError, ValueError) as error:
        # Keras' own words for a file it cannot read (not a .keras archive, a damaged one, a class it lacks).
        raise settings.SettingsError(f"cannot load {path} as a Keras model: {error}") from None
    return model, described, card, None


def _load_logged(
    uri: str, args: argparse.Namespace, defaults: settings.ProjectDefaults
) -> tuple[keras.Model, str, ModelCard | None, tuple[str, ...] | None]:
    """A model from MLflow (or an MLflow model folder), its card from the metadata.

    Models logged before cards existed get their class names from their run's evaluation report.
    """
    from pipeline.model.model_card import ModelCard
    from pipeline.tracking.models import load_logged_model
    from pipeline.tracking.queries import run_artifact_json

    tracking_uri = settings.tracking_uri(args.tracking_uri, defaults, args.params)
    loaded = load_logged_model(uri, tracking_uri=tracking_uri)
    card = ModelCard.from_metadata(loaded.metadata)
    names = None
    if card is None and loaded.run_id is not None:
        report = run_artifact_json(tracking_uri, loaded.run_id, EVALUATION_REPORT)
        if isinstance(report, dict) and isinstance(report.get("class_names"), list):
            names = tuple(str(name) for name in report["class_names"])
    details = [f"version {loaded.version}"] if loaded.version else []
    details += [f"run {loaded.run_id[:8]}"] if loaded.run_id else []
    described = f"{loaded.uri} ({', '.join(details)})" if details else loaded.uri
    return loaded.model, described, card, names


def _describe_reading(reading: Reading, card: ModelCard | None, names: tuple[str, ...] | None) -> str:
    if card is None:
        source = (
            "class names from the run's evaluation report"
            if names
            else "no class names known (classes by index; give --data-report)"
        )
        return f"{source}; images read as RGB at the model's {reading.image_size} px"
    return (
        f"{len(card.class_names)} classes; images read as {reading.color} at {reading.stored_size} px "
        f"(like its training data), then resized to {reading.image_size} px"
    )


def render_text(predictions: Sequence[Prediction]) -> str:
    """Each classified file, then its top classes with their probabilities (and spreads); errors left out.

    Args:
        predictions: What `classify` returned.

    Returns:
        The lines, each ending in a newline.
    """
    width = max((len(score.name) for item in predictions for score in item.top), default=0)
    lines = []
    for item in predictions:
        if item.error is not None:
            continue
        lines.append(f"{item.path}\n")
        for rank, score in enumerate(item.top, start=1):
            spread = "" if score.std is None else f" {PLUS_MINUS} {score.std:.4f}"
            lines.append(f"  {rank}. {score.name.ljust(width)}  {score.probability:.4f}{spread}\n")
    return "".join(lines)


def error_lines(predictions: Sequence[Prediction]) -> str:
    """One line per file that could not be classified: `error: PATH: REASON`."""
    return "".join(f"error: {item.path}: {item.error}\n" for item in predictions if item.error is not None)


def as_json(predictions: Sequence[Prediction]) -> list[dict[str, Any]]:
    """The predictions as JSON-friendly dicts: file, top (class, index, probability, std) and error."""
    return [
        {
            "file": str(item.path),
            "top": [
                {"class": score.name, "index": score.index, "probability": score.probability, "std": score.std}
                for score in item.top
            ],
            "error": item.error,
        }
        for item in predictions
    ]


if __name__ == "__main__":
    sys.exit(main())
