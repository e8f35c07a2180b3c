"""This process's place among several training workers, read from the standard `TF_CONFIG`.

Why its own module, without TensorFlow: the train stage must know before TensorFlow starts whether it is the
chief (the one worker that logs to MLflow, writes `build/`, `reports/` and the checkpoint, and registers)
or another worker (which trains in step and writes nothing), and a malformed `TF_CONFIG` must stop the run
in one line instead of a TensorFlow traceback on every machine.

`TF_CONFIG` is TensorFlow's: `{"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type":
"worker", "index": 0}}`. Without a `chief` entry, worker 0 is the chief, as in TensorFlow's own
`MultiWorkerMirroredStrategy`; with one, the chief is that task and every `worker` is another.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.errors import PipelineError


class ClusterConfigError(PipelineError, ValueError):
    """Raised when `TF_CONFIG` is not a cluster this process can take part in."""


@dataclass(frozen=True)
class ClusterRole:
    """This process in a cluster of training workers.

    Attributes:
        task_type: `chief` or `worker`.
        task_index: The index among the tasks of that type.
        workers: Every training task of the cluster, chief included.
        addresses: Their `host:port`, chief first.
        has_chief_task: Whether the cluster names a `chief` task (else worker 0 is the chief).
    """

    task_type: str
    task_index: int
    workers: int
    addresses: tuple[str, ...]
    has_chief_task: bool = False

    @property
    def is_chief(self) -> bool:
        """The one worker that logs, writes outputs and registers."""
        if self.has_chief_task:
            return self.task_type == "chief"
        return self.task_index == 0

    def describe(self) -> str:
        """One line for the log and the run's tags."""
        role = "chief" if self.is_chief else f"{self.task_type} {self.task_index}"
        return f"{role} of {self.workers} workers ({', '.join(self.addresses)})"


def cluster_role(environment: Mapping[str, str]) -> ClusterRole | None:
    """This process's role, or None when it trains alone (no `TF_CONFIG`, or a cluster of one).

    Args:
        environment: The process environment.

    Returns:
        The role.

    Raises:
        ClusterConfigError: `TF_CONFIG` is not JSON, lacks `cluster` or `task`, names a task the cluster does
            not have, or holds parameter servers or evaluators (this pipeline trains with
            MultiWorkerMirroredStrategy only).
    """
    text = environment.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ClusterConfigError(f"TF_CONFIG is not JSON ({error.msg} at character {error.pos})") from None
    cluster, task = (config.get(key) if isinstance(config, dict) else None for key in ("cluster", "task"))
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ClusterConfigError('TF_CONFIG needs "cluster" and "task": {"cluster": {"worker": [...]}, "task": {...}}')
    other = sorted(set(cluster) - {"chief", "worker"})
    if other:
        raise ClusterConfigError(
            f"TF_CONFIG's cluster holds {', '.join(other)}; training here uses MultiWorkerMirroredStrategy, "
            "whose cluster is a chief and workers only"
        )
    chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
    if len(chiefs) > 1:
        raise ClusterConfigError(f"TF_CONFIG names {len(chiefs)} chiefs; a cluster has at most one")
    task_type, task_index = task.get("type"), task.get("index", 0)
    tasks = {"chief": chiefs, "worker": workers}
    if task_type not in tasks or not isinstance(task_index, int) or not 0 <= task_index < len(tasks[task_type]):
        raise ClusterConfigError(
            f"TF_CONFIG's task {task!r} is not in its cluster ({len(chiefs)} chief, {len(workers)} workers)"
        )
    if len(chiefs) + len(workers) < 2:
        return None
    return ClusterRole(
        task_type=task_type,
        task_index=task_index,
        workers=len(chiefs) + len(workers),
        addresses=tuple(chiefs + workers),
        has_chief_task=bool(chiefs),
    )
