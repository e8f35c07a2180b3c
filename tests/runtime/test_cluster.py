"""Tests of pipeline/runtime/cluster.py: this process's role among training workers, from TF_CONFIG."""

from __future__ import annotations

import json

import pytest

from pipeline.runtime.cluster import ClusterConfigError, ClusterRole, cluster_role

TWO = ["10.0.0.1:12345", "10.0.0.2:12345"]


def _role(config: object) -> ClusterRole | None:
    return cluster_role({"TF_CONFIG": json.dumps(config)})


def test_no_tf_config_or_a_cluster_of_one_trains_alone() -> None:
    assert cluster_role({}) is None
    assert cluster_role({"TF_CONFIG": "  "}) is None
    assert _role({"cluster": {"worker": TWO[:1]}, "task": {"type": "worker", "index": 0}}) is None


def test_worker_zero_is_the_chief_without_a_chief_task() -> None:
    chief = _role({"cluster": {"worker": TWO}, "task": {"type": "worker", "index": 0}})
    other = _role({"cluster": {"worker": TWO}, "task": {"type": "worker", "index": 1}})
    assert (chief.is_chief, other.is_chief) == (True, False)
    assert chief.describe() == "chief of 2 workers (10.0.0.1:12345, 10.0.0.2:12345)"
    assert other.describe() == "worker 1 of 2 workers (10.0.0.1:12345, 10.0.0.2:12345)"


def test_a_chief_task_is_the_chief_and_every_worker_is_another() -> None:
    cluster = {"chief": ["10.0.0.9:1"], "worker": TWO}
    chief = _role({"cluster": cluster, "task": {"type": "chief", "index": 0}})
    worker = _role({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    assert (chief.is_chief, worker.is_chief, chief.workers, chief.addresses[0]) == (True, False, 3, "10.0.0.9:1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"^TF_CONFIG is not JSON \(Expecting property name enclosed in double quotes at character 1\)$"),
        ('{"cluster": {"worker": []}}', r'^TF_CONFIG needs "cluster" and "task"'),
        (
            json.dumps({"cluster": {"worker": TWO, "ps": ["h:1"]}, "task": {"type": "worker", "index": 0}}),
            r"^TF_CONFIG's cluster holds ps; training here uses MultiWorkerMirroredStrategy",
        ),
        (
            json.dumps({"cluster": {"worker": TWO}, "task": {"type": "worker", "index": 2}}),
            r"^TF_CONFIG's task \{'type': 'worker', 'index': 2\} is not in its cluster \(0 chief, 2 workers\)$",
        ),
        (
            json.dumps({"cluster": {"chief": ["a:1", "b:1"], "worker": TWO}, "task": {"type": "chief", "index": 0}}),
            r"^TF_CONFIG names 2 chiefs; a cluster has at most one$",
        ),
    ],
)
def test_a_tf_config_that_cannot_be_joined_is_one_line(text: str, message: str) -> None:
    with pytest.raises(ClusterConfigError, match=message):
        cluster_role({"TF_CONFIG": text})
