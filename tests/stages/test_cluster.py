"""stages/_cluster.py: the cluster of TF_CONFIG against the params several workers share."""

from __future__ import annotations

import json

import pytest

from pipeline.params import ParamsError, parse
from pipeline.runtime.cluster import ClusterConfigError
from stages._cluster import training_cluster

TWO_WORKERS = {
    "TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}})
}


def test_alone_or_in_a_cluster_with_a_numeric_learning_rate() -> None:
    config = parse({})
    assert training_cluster(config, {}) is None
    assert training_cluster(config, TWO_WORKERS).describe() == "worker 1 of 2 workers (a:1, b:1)"


def test_an_lr_range_test_suggestion_cannot_be_shared_by_workers() -> None:
    config = parse({"lr_find": {"enabled": True}, "train": {"base_learning_rate": "auto"}})
    assert training_cluster(config, {}) is None
    with pytest.raises(ParamsError, match=r"^train.base_learning_rate is auto, .* with several workers \(TF_CONFIG\)"):
        training_cluster(config, TWO_WORKERS)


def test_a_broken_tf_config_stops_in_one_line() -> None:
    with pytest.raises(ClusterConfigError, match=r"^TF_CONFIG is not JSON"):
        training_cluster(parse({}), {"TF_CONFIG": "{"})
