"""DVC stage `validate`: check params.yaml before any other stage may touch its outputs.

Why a stage of its own: DVC deletes a stage's outputs before running its command. Every other stage
depends on this one, so an invalid params.yaml stops `dvc repro` here, in about a second, before
TensorFlow loads and before any output is removed. Its output holds no parameter values, so a valid
change of one parameter reruns only the stages that depend on that parameter.
"""

from __future__ import annotations

from pipeline import params
from stages._entry import PARAMS, PARAMS_CHECKED, run_stage


def main() -> None:
    params.load(PARAMS)
    PARAMS_CHECKED.parent.mkdir(parents=True, exist_ok=True)
    PARAMS_CHECKED.write_text("params.yaml matches the schema of pipeline/params/\n", encoding="utf-8")
    print(f"{PARAMS} is valid")


if __name__ == "__main__":
    run_stage(main)
