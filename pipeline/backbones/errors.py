"""The error of a backbone that params.yaml names but that cannot be loaded as configured.

Why a class of its own: some of what can be wrong with a backbone is only found once TensorFlow reads it
(a TF Hub handle that is not cached on an offline machine, a signature the SavedModel lacks, an input size
it does not take). Those are the user's to fix, so the stages report them in one line with exit code 2
(`stages/_entry.py`), like a params error, and before any training starts.
"""

from __future__ import annotations

from pipeline.errors import PipelineError


class BackboneError(PipelineError, ValueError):
    """A backbone named in params.yaml cannot be loaded as configured; the message says what is allowed."""


class KerasFileError(PipelineError, ValueError):
    """Raised when a `.keras` file can't serve as a backbone as configured; the message says what to change."""


class WeightsNotFoundError(PipelineError, FileNotFoundError):
    """The pretrained weights a backbone needs are not on this machine; the message names the file and where
    to place it (or the package to install)."""
