"""The error of a prediction that cannot be made as asked, which the user can fix.

Why a class of its own: a model that does not take square RGB images, class names that belong to
another model, or MC dropout asked of a model without dropout are the user's choices, so `tl-predict`
reports them in one line with exit code 2 (`pipeline.errors`); anything else it meets is a bug.
"""

from __future__ import annotations

from pipeline.errors import PipelineError


class PredictionError(PipelineError, ValueError):
    """The model or the options cannot serve the prediction asked for; the message says what is allowed."""
