"""pipeline/tracking/seed_groups.py: a group's runs, and its parent run, created once and updated after."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking import runs, seed_groups

GROUP = "0123456789ab"


def _experiment(store: str, tmp_path: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(store)
    return client, client.create_experiment("seeds", artifact_location=(tmp_path / "artifacts").as_uri())


def _member(client: MlflowClient, experiment_id: str, group: str, seed: int, status: str, start: int) -> str:
    run_id = client.create_run(
        experiment_id,
        start_time=start,
        run_name=f"seed-{seed}",
        tags={**seed_groups.member_tags(group, seed, 42), "git.commit": "c0ffee"},
    ).info.run_id
    client.log_metric(run_id, "test_accuracy", 0.9 + seed / 100)
    client.set_terminated(run_id, status=status)
    return run_id


def test_member_tags() -> None:
    assert seed_groups.member_tags(GROUP, 3, 42) == {
        "seed_group": GROUP,
        "seed_group.seed": "3",
        "seed_group.data_seed": "42",
    }


def test_group_runs_oldest_first_whatever_their_status(store: str, tmp_path: Path) -> None:
    client, experiment_id = _experiment(store, tmp_path)
    second = _member(client, experiment_id, GROUP, 2, "FAILED", start=2_000)
    first = _member(client, experiment_id, GROUP, 1, "FINISHED", start=1_000)
    _member(client, experiment_id, "ffffffffffff", 1, "FINISHED", start=3_000)
    client.create_run(experiment_id, run_name="untagged")
    assert seed_groups.group_runs(store, "seeds", GROUP) == [
        seed_groups.GroupRun(first, "seed-1", "FINISHED", 1_000, "1", "42", "c0ffee", {"test_accuracy": 0.91}),
        seed_groups.GroupRun(second, "seed-2", "FAILED", 2_000, "2", "42", "c0ffee", {"test_accuracy": 0.92}),
    ]
    assert seed_groups.group_runs(store, "seeds", "aaaaaaaaaaaa") == []
    assert seed_groups.experiment_groups(store, "seeds") == {GROUP: 2, "ffffffffffff": 1}
    with pytest.raises(runs.TrackingLookupError, match="no experiment 'nope' in .*; experiments there: .*seeds"):
        seed_groups.group_runs(store, "nope", GROUP)


def test_the_parent_is_created_once_updated_after_and_never_a_member(store: str, tmp_path: Path) -> None:
    client, experiment_id = _experiment(store, tmp_path)
    members = [_member(client, experiment_id, GROUP, seed, "FINISHED", start=seed * 1_000) for seed in (1, 2)]
    parent_id, created = seed_groups.record_parent(
        store,
        "seeds",
        GROUP,
        members=members,
        metrics={"n": 2.0, "test_accuracy_mean": 0.915, "test_accuracy_std": math.nan},
        tags={"seed_group.summary": "two runs"},
        artifacts={"seed_group/summary.md": "# first\n"},
        note="# first\n",
    )
    assert created
    members.append(_member(client, experiment_id, GROUP, 3, "KILLED", start=3_000))
    again, created = seed_groups.record_parent(
        store,
        "seeds",
        GROUP,
        members=members,
        metrics={"n": 2.0, "test_accuracy_mean": 0.915, "test_accuracy_std": 0.007},
        tags={"seed_group.summary": "three runs"},
        artifacts={"seed_group/summary.md": "# second\n"},
        note="# second\n",
    )
    assert (again, created) == (parent_id, False)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == f"seed group {GROUP}"
    assert parent.data.metrics == {"n": 2.0, "test_accuracy_mean": 0.915, "test_accuracy_std": 0.007}
    assert {key: value for key, value in parent.data.tags.items() if key.startswith(("seed_group", "mlflow.note"))} == {
        "seed_group.parent": GROUP,
        "seed_group.members": ",".join(members),
        "seed_group.summary": "three runs",
        "mlflow.note.content": "# second\n",
    }
    mlflow.set_tracking_uri(store)
    assert mlflow.artifacts.load_text(f"runs:/{parent_id}/seed_group/summary.md") == "# second\n"
    assert [client.get_run(member).data.tags["mlflow.parentRunId"] for member in members] == [parent_id] * 3
    # The parent holds no member tag: the group is still its three runs.
    assert [run.run_id for run in seed_groups.group_runs(store, "seeds", GROUP)] == members
    assert seed_groups.experiment_groups(store, "seeds") == {GROUP: 3}
    assert len(client.search_runs([experiment_id])) == 4


def test_a_long_member_list_is_cut_to_a_tag_value() -> None:
    run_ids = [f"{index:032x}" for index in range(200)]
    listed = seed_groups._within_limit(run_ids)
    assert len(listed) <= 5000
    kept = listed.split(" ... ")[0].split(",")
    assert kept == run_ids[: len(kept)]
    assert listed.endswith(f" ... ({200 - len(kept)} more in seed_group/runs.csv)")
    assert seed_groups._within_limit(run_ids[:3]) == ",".join(run_ids[:3])
