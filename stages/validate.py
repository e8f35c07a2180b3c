"""DVC stage `validate`: check params.yaml before any other stage may touch its outputs.

Why a stage of its own: DVC deletes a stage's outputs before running its command. Every other stage
depends on this one, so an invalid params.yaml stops `dvc repro` here, in about a second, before
TensorFlow loads and before any output is removed. Its output holds no parameter values, so a valid
change of one parameter reruns only the stages that depend on that parameter.

It also checks that the tracking store answers (`pipeline.tracking.store`), so that a server that is
down or a database URI that is wrong stops the pipeline here, not after training. DVC skips this stage
while params.yaml is unchanged, which is why train checks again when it starts.
"""

from __future__ import annotations

import os

from pipeline import params
from pipeline.tracking import store as tracking_store
from stages._cluster import training_cluster
from stages._entry import PARAMS, PARAMS_CHECKED, run_stage


def main() -> None:
    config = params.load(PARAMS)
    # A TF_CONFIG that cannot be joined, or params several workers cannot share, stop here too, before any work.
    role = training_cluster(config, os.environ)
    tracking_uri, answer = tracking_store.usable_tracking_uri(
        config.tracking.uri, experiment=config.tracking.experiment
    )
    PARAMS_CHECKED.parent.mkdir(parents=True, exist_ok=True)
    PARAMS_CHECKED.write_text("params.yaml matches the schema of pipeline/params/\n", encoding="utf-8")
    print(f"{PARAMS} is valid")
    print(f"tracking store {tracking_store.redact(tracking_uri)} ({tracking_store.uri_origin()}): {answer}")
    if role is not None:
        print(f"training cluster: this machine is the {role.describe()}")


if __name__ == "__main__":
    run_stage(main)
