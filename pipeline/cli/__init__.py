"""Console commands (`[project.scripts]` in pyproject.toml): `tl-compare` and `tl-predict`.

Why a package of thin entry points: like `stages/`, these are edges that read params.yaml (for the
default tracking URI, experiment and registered model) and turn user mistakes into one line and exit
code 2; the work itself is done by `pipeline.evaluation.compare` and `pipeline.serving.predict`, which take explicit
arguments.
"""
