"""The cluster of training workers this process belongs to, checked against the params it trains with."""

from __future__ import annotations

from collections.abc import Mapping

from pipeline import params
from pipeline.runtime import cluster
from stages._entry import LR_FIND_JSON


def training_cluster(config: params.PipelineParams, environment: Mapping[str, str]) -> cluster.ClusterRole | None:
    """This process's role among the workers of `TF_CONFIG`, or None when it trains alone.

    Args:
        config: The validated params.
        environment: The process environment.

    Returns:
        The role.

    Raises:
        ClusterConfigError: `TF_CONFIG` cannot be joined (`pipeline.runtime.cluster.cluster_role`).
        ParamsError: `train.base_learning_rate: auto` with several workers: the LR range test's file is the chief's
            alone, and every worker must train at the same LR.
    """
    role = cluster.cluster_role(environment)
    if role is not None and config.train.base_learning_rate == "auto":
        raise params.ParamsError(
            "train.base_learning_rate is auto, which reads the lr_find stage's suggestion from "
            f"{LR_FIND_JSON}; with several workers (TF_CONFIG) set it to a number: every worker must train at the "
            "same LR"
        )
    return role
