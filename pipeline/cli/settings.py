"""Defaults of the console commands: params.yaml's tracking section, MLFLOW_TRACKING_URI, the command line.

Why: run from the project folder, the commands should find the same store, experiment and registered
model as the pipeline, with nothing typed; anywhere else, they say which option is missing instead
of silently creating an empty MLflow store.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.params.runtime import DeviceParams

DEFAULT_PARAMS = Path("params.yaml")
SQLITE_PREFIX = "sqlite:///"


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every command shares: where the tracking store is, and which params file holds the defaults."""
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else params.yaml's tracking.uri)"
    )
    parser.add_argument(
        "--params", type=Path, default=DEFAULT_PARAMS, help="params file with the defaults (%(default)s)"
    )


def quiet_libraries() -> None:
    """Silences the libraries' own chatter before they load (see `pipeline.runtime.native_log.quiet_libraries`)."""
    from pipeline.runtime import native_log

    native_log.quiet_libraries()


class SettingsError(PipelineError, ValueError):
    """Raised when a default cannot be found; the message names the option that sets it."""


@dataclass(frozen=True)
class ProjectDefaults:
    """What params.yaml says, when there is one (None where there is not).

    Attributes:
        tracking_uri: `tracking.uri`.
        experiment: `tracking.experiment`.
        registered_model: `tracking.registered_model`.
        max_image_pixels: `data.max_image_pixels` (the schema's default without a params file).
        device: The `device` section (the schema's default without a params file), which a command that loads a
            model applies before TensorFlow's first op.
    """

    tracking_uri: str | None
    experiment: str | None
    registered_model: str | None
    max_image_pixels: int
    device: DeviceParams | None = field(default=None)


def project_defaults(params_path: Path) -> ProjectDefaults:
    """Reads the defaults from a params file; a missing file gives none (options must be given then).

    Args:
        params_path: The params file.

    Returns:
        The defaults.

    Raises:
        ParamsError: The file exists but is invalid.
    """
    from pipeline import params
    from pipeline.params.data import DataParams
    from pipeline.params.runtime import DeviceParams

    if not params_path.is_file():
        return ProjectDefaults(None, None, None, DataParams().max_image_pixels, DeviceParams())
    config = params.load(params_path)
    return ProjectDefaults(
        tracking_uri=config.tracking.uri,
        experiment=config.tracking.experiment,
        registered_model=config.tracking.registered_model,
        max_image_pixels=config.data.max_image_pixels,
        device=config.device,
    )


def tracking_uri(option: str | None, defaults: ProjectDefaults, params_path: Path) -> str:
    """`--tracking-uri`, else MLFLOW_TRACKING_URI, else params.yaml's `tracking.uri`.

    A local sqlite store must already exist: MLflow would create an empty one, and the command would
    then report an unknown experiment instead of a wrong folder.

    Args:
        option: The command-line value, or None.
        defaults: What params.yaml says.
        params_path: The params file (named in the message).

    Returns:
        The URI.

    Raises:
        SettingsError: No URI anywhere, or a sqlite file that does not exist.
    """
    uri = option or os.environ.get("MLFLOW_TRACKING_URI") or defaults.tracking_uri
    if uri is None:
        raise SettingsError(
            f"no tracking store: give --tracking-uri, set MLFLOW_TRACKING_URI, or run where {params_path} is"
        )
    if uri.startswith(SQLITE_PREFIX):
        database = Path(uri.removeprefix(SQLITE_PREFIX))
        if not database.is_file():
            raise SettingsError(
                f"no MLflow database at {database.resolve()} (tracking URI {uri}): run the pipeline first, "
                "run this command in the project folder, or give --tracking-uri"
            )
    return uri


def required(value: str | None, option: str, key: str, params_path: Path) -> str:
    """An option's value, or the error that says how to give it.

    Raises:
        SettingsError: Neither the option nor the params file gives a value.
    """
    if value is None:
        raise SettingsError(f"give {option}, or run where {params_path} is (its {key} is the default)")
    return value


def write_output(rendered: str, output: Path | None, *, written: str) -> None:
    """Writes a command's table to `--output` (and says so on stderr), or to standard output.

    Args:
        rendered: The table, as text.
        output: The `--output` file; None for standard output.
        written: What was written, for the line on stderr ("3 runs", "seed group 1a2b3c4d5e6f").
    """
    if output is None:
        sys.stdout.write(rendered)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(rendered, encoding="utf-8")
    print(f"wrote {written} to {output}", file=sys.stderr)
