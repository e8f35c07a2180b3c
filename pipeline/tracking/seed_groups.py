"""Seed groups in the tracking store: the tags of a member run, its group's runs, and the group's parent run.

Why: MLflow cannot aggregate runs into groups (mlflow/mlflow#3762, #7790). A group here is the runs tagged
with one key (`pipeline.params.seed_group`); its aggregate lives on one more run of the experiment, the
parent, which the MLflow UI shows with the members nested under it (`mlflow.parentRunId` on each member).
The parent is found again by its own tag, so that aggregating again updates it instead of adding another.
It never carries the member tag, so it never counts itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE

from pipeline.tracking.runs import TrackingLookupError

# On every run train opens: its group, and its seeds.
GROUP_TAG = "seed_group"
SEED_TAG = "seed_group.seed"
DATA_SEED_TAG = "seed_group.data_seed"
# On the group's parent run: the group it aggregates, and its members' run ids.
PARENT_TAG = "seed_group.parent"
MEMBERS_TAG = "seed_group.members"
# What the UI and `tl-seeds` show besides the seeds (a group spread over commits compares code, too).
GIT_COMMIT_TAG = "git.commit"
# MLflow 3.17 takes 8,000 characters in a tag value; older servers 5,000 (as pipeline.tracking.lifecycle).
_TAG_VALUE_LIMIT = 5000
_METRICS_PER_BATCH = 1000


def member_tags(group: str, seed: int, data_seed: int) -> dict[str, str]:
    """The tags that make a run a member of its seed group.

    Args:
        group: The group key (`pipeline.params.seed_group_key`).
        seed: `train.seed`.
        data_seed: `data.seed`.

    Returns:
        Tag name -> value.
    """
    return {GROUP_TAG: group, SEED_TAG: str(seed), DATA_SEED_TAG: str(data_seed)}


@dataclass(frozen=True)
class GroupRun:
    """One member run of a seed group, free of MLflow types.

    Attributes:
        run_id: The full run id.
        name: The run name.
        status: RUNNING, FINISHED, FAILED, KILLED or SCHEDULED.
        start_ms: Start time, milliseconds since the epoch.
        seed: Its `train.seed` (tag `seed_group.seed`).
        data_seed: Its `data.seed`.
        git_commit: The commit it ran on ("" when not known).
        metrics: The latest value of every metric.
    """

    run_id: str
    name: str
    status: str
    start_ms: int
    seed: str
    data_seed: str
    git_commit: str
    metrics: dict[str, float]


def group_runs(tracking_uri: str, experiment: str, group: str) -> list[GroupRun]:
    """Every active (not deleted) run of a seed group, oldest first, whatever its status.

    Args:
        tracking_uri: The tracking store.
        experiment: The experiment's name.
        group: The group key.

    Returns:
        The runs; empty when no run carries the key.

    Raises:
        TrackingLookupError: No experiment of that name.
    """
    client = MlflowClient(tracking_uri)
    experiment_id = _experiment_id(client, tracking_uri, experiment)
    found = _search(client, experiment_id, f"tags.{GROUP_TAG} = '{group}'")
    return [
        GroupRun(
            run_id=run.info.run_id,
            name=run.info.run_name or "",
            status=run.info.status,
            start_ms=int(run.info.start_time),
            seed=run.data.tags.get(SEED_TAG, ""),
            data_seed=run.data.tags.get(DATA_SEED_TAG, ""),
            git_commit=run.data.tags.get(GIT_COMMIT_TAG, ""),
            metrics={key: float(value) for key, value in run.data.metrics.items()},
        )
        for run in sorted(found, key=lambda run: (run.info.start_time, run.info.run_id))
        if PARENT_TAG not in run.data.tags
    ]


def experiment_groups(tracking_uri: str, experiment: str) -> dict[str, int]:
    """The seed groups of an experiment and how many runs each has, for a message naming the known ones.

    Args:
        tracking_uri: The tracking store.
        experiment: The experiment's name.

    Returns:
        Group key -> member runs, most runs first.

    Raises:
        TrackingLookupError: No experiment of that name.
    """
    client = MlflowClient(tracking_uri)
    counts: dict[str, int] = {}
    for run in _search(client, _experiment_id(client, tracking_uri, experiment), None):
        key = run.data.tags.get(GROUP_TAG)
        if key is not None and PARENT_TAG not in run.data.tags:
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def record_parent(
    tracking_uri: str,
    experiment: str,
    group: str,
    *,
    members: list[str],
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    artifacts: Mapping[str, str],
    note: str,
) -> tuple[str, bool]:
    """Writes a group's aggregate on its parent run, created the first time and updated ever after.

    The members get `mlflow.parentRunId`, so the MLflow UI nests them under the parent. Metrics are logged
    again at step 0 with a newer timestamp, so the latest value is the new aggregate.

    Args:
        tracking_uri: The tracking store.
        experiment: The experiment's name (the members').
        group: The group key.
        members: Every member's run id, counted in the statistics or not.
        metrics: The aggregate metrics (`test_accuracy_mean`, ...).
        tags: More tags of the parent.
        artifacts: Artifact path in the run -> text (`seed_group/summary.md`).
        note: The run's description in the UI (Markdown).

    Returns:
        (The parent's run id, whether it was created now.)

    Raises:
        TrackingLookupError: No experiment of that name.
    """
    import time

    client = MlflowClient(tracking_uri)
    experiment_id = _experiment_id(client, tracking_uri, experiment)
    existing = _search(client, experiment_id, f"tags.`{PARENT_TAG}` = '{group}'")
    created = not existing
    if created:
        run_id = client.create_run(experiment_id, run_name=f"seed group {group}", tags={PARENT_TAG: group}).info.run_id
    else:
        # The oldest, should two aggregations have raced to create one.
        run_id = min(existing, key=lambda run: run.info.start_time).info.run_id
    now = int(time.time() * 1000)
    entries = [Metric(key, float(value), now, 0) for key, value in metrics.items()]
    for start in range(0, len(entries), _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=entries[start : start + _METRICS_PER_BATCH])
    listed = _within_limit(members)
    parent_tags = {
        **tags,
        MEMBERS_TAG: listed,
        MLFLOW_RUN_NAME: f"seed group {group}",
        MLFLOW_RUN_NOTE: note[:_TAG_VALUE_LIMIT],
    }
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in parent_tags.items()])
    for path, text in artifacts.items():
        client.log_text(run_id, text, path)
    for member in members:
        client.set_tag(member, MLFLOW_PARENT_RUN_ID, run_id)
    client.set_terminated(run_id, status="FINISHED")
    return run_id, created


def _within_limit(run_ids: list[str]) -> str:
    """The run ids joined by commas, as many as a tag value holds, then how many more (the artifact has all)."""
    listed: list[str] = []
    for index, run_id in enumerate(run_ids):
        rest = f" ... ({len(run_ids) - index} more in seed_group/runs.csv)"
        if len(",".join([*listed, run_id])) + len(rest) > _TAG_VALUE_LIMIT:
            return ",".join(listed) + rest
        listed.append(run_id)
    return ",".join(listed)


def _experiment_id(client: MlflowClient, tracking_uri: str, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(item.name for item in client.search_experiments())
        raise TrackingLookupError(
            f"no experiment {experiment!r} in {tracking_uri}; experiments there: {', '.join(names) or 'none'}"
        )
    return found.experiment_id


def _search(client: MlflowClient, experiment_id: str, filter_string: str | None) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string or "", page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs
