"""pipeline/tracking/lifecycle.py: a tracked run ends FINISHED, FAILED or KILLED with its reason, whatever ends it
(an error, Ctrl-C, SIGTERM, or a SIGKILL that the next run notices)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking import lifecycle
from pipeline.tracking.runs import RunReference, TrackingLookupError
from tests.tracking.conftest import open_run

REPO = Path(__file__).resolve().parents[2]


def test_successful_run_ends_finished(store: str, tmp_path: Path) -> None:
    with open_run(store, tmp_path, run_name="ok") as run:
        run.log_params({f"p{index}": str(index) for index in range(250)})
        run.set_tags({"device.kind": "cpu"})
    finished = MlflowClient(store).get_run(run.run_id)
    assert finished.info.status == "FINISHED"
    assert len(finished.data.params) == 250
    assert finished.data.params["p249"] == "249"
    assert finished.data.tags["device.kind"] == "cpu"
    assert finished.info.run_name == "ok"


def test_failing_run_ends_failed_with_its_reason_and_reraises(store: str, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), open_run(store, tmp_path) as run:
        raise RuntimeError("boom\nsecond line of detail")
    failed = MlflowClient(store).get_run(run.run_id)
    assert failed.info.status == "FAILED"
    assert failed.data.tags[lifecycle.ERROR_TAG] == "RuntimeError: boom"


def test_ctrl_c_ends_the_run_killed(store: str, tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), open_run(store, tmp_path) as run:
        raise KeyboardInterrupt
    killed = MlflowClient(store).get_run(run.run_id)
    assert killed.info.status == "KILLED"
    assert killed.data.tags[lifecycle.END_REASON_TAG] == "interrupted (Ctrl-C)"


def test_a_run_whose_process_died_is_closed_killed_by_the_next(store: str, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from pipeline.tracking import lifecycle, models, queries, registry, runs
        with lifecycle.tracked_run(tracking_uri={store!r}, experiment="tests",
                                  artifact_dir=Path({str(tmp_path)!r})) as run:
            print(run.run_id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == -signal.SIGKILL
    orphan_id = result.stdout.split()[0]
    client = MlflowClient(store)
    assert client.get_run(orphan_id).info.status == "RUNNING"
    with open_run(store, tmp_path) as run:
        pass
    orphan = client.get_run(orphan_id)
    assert orphan.info.status == "KILLED"
    assert orphan.data.tags[lifecycle.END_REASON_TAG].startswith("process ")
    assert "died without ending the run (SIGKILL or out of memory)" in orphan.data.tags[lifecycle.END_REASON_TAG]
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_resumed_run_failing_ends_failed(store: str, tmp_path: Path) -> None:
    with open_run(store, tmp_path) as run:
        reference = lifecycle.run_reference(run, store)
    with pytest.raises(KeyError), lifecycle.tracked_run(tracking_uri=store, resume=reference):
        raise KeyError("missing")
    assert MlflowClient(store).get_run(reference.run_id).info.status == "FAILED"


def test_sigterm_ends_the_run_killed(store: str, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal, time
        from pathlib import Path
        from pipeline.tracking import lifecycle, models, queries, registry, runs
        with lifecycle.tracked_run(tracking_uri={store!r}, experiment="tests",
                                  artifact_dir=Path({str(tmp_path)!r})) as run:
            print(run.run_id, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    # The handler turned the signal into an error that ended the run, then the script: exit code 1, not -15.
    assert result.returncode == 1, result.stderr
    assert result.stderr.rstrip().endswith("_TerminatedError: terminated by signal 15")
    run_id = result.stdout.split()[0]
    terminated = MlflowClient(store).get_run(run_id)
    assert terminated.info.status == "KILLED"
    assert terminated.data.tags[lifecycle.END_REASON_TAG] == "terminated by signal 15"


def _experiment_kind(store: str, name: str) -> str | None:
    return MlflowClient(store).get_experiment_by_name(name).tags.get("mlflow.experimentKind")


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_a_new_experiment_opens_in_the_model_training_view(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MLflow's UI opens an experiment tagged custom_model_development on its runs table, not the GenAI overview.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.17 refuses folder stores without it
    store = f"sqlite:///{tmp_path / 'mlflow.db'}" if kind == "sqlite" else (tmp_path / "mlruns").as_uri()
    with open_run(store, tmp_path):
        pass
    assert _experiment_kind(store, "tests") == "custom_model_development"


@pytest.mark.parametrize("before", [None, "genai_development_inferred"])
def test_an_experiment_in_use_is_tagged_as_model_training(store: str, tmp_path: Path, before: str | None) -> None:
    # Made before the tag existed, or tagged by the UI's own guess: tagged when a run opens in it, or reopens.
    client = MlflowClient(store)
    client.create_experiment("tests", tags={} if before is None else {"mlflow.experimentKind": before})
    with open_run(store, tmp_path) as run:
        pass
    assert _experiment_kind(store, "tests") == "custom_model_development"
    experiment_id = client.get_run(run.run_id).info.experiment_id
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "genai_development")
    with lifecycle.tracked_run(tracking_uri=store, resume=lifecycle.run_reference(run, store)):
        pass
    assert _experiment_kind(store, "tests") == "custom_model_development"


def test_a_run_reopened_after_it_failed_loses_the_reason_of_its_earlier_end(store: str, tmp_path: Path) -> None:
    with pytest.raises(KeyError), open_run(store, tmp_path) as run:
        raise KeyError("missing")
    reference = lifecycle.find_run(store, run.run_id)
    assert reference is not None and reference.run_id == run.run_id
    with lifecycle.tracked_run(tracking_uri=store, resume=reference):
        pass
    reopened = MlflowClient(store).get_run(run.run_id)
    assert reopened.info.status == "FINISHED"
    assert lifecycle.ERROR_TAG not in reopened.data.tags


def test_find_run_is_none_for_a_run_the_store_does_not_hold(store: str, tmp_path: Path) -> None:
    with open_run(store, tmp_path) as run:
        pass
    MlflowClient(store).delete_run(run.run_id)
    assert lifecycle.find_run(store, run.run_id) is None
    assert lifecycle.find_run(store, "0123456789abcdef0123456789abcdef") is None


def test_reopening_a_run_the_store_does_not_hold_is_one_line(store: str, tmp_path: Path) -> None:
    # The store was deleted and made again (rm mlflow.db) after train wrote build/run.json.
    gone = RunReference(run_id="0123456789abcdef0123456789abcdef", experiment_id="2", tracking_uri=store)
    with (
        pytest.raises(
            TrackingLookupError,
            match=r"^MLflow run 0123456789abcdef0123456789abcdef, which train logged this model to "
            rf"\(build/run.json\), is not in {re.escape(store)} \(deleted, or another store since\); "
            r"train again: dvc repro -f -s train, then dvc repro$",
        ),
        lifecycle.tracked_run(tracking_uri=store, resume=gone),
    ):
        pass


def test_a_failure_while_the_server_is_away_keeps_its_own_error(tmp_path: Path, store: str) -> None:
    from mlflow.exceptions import MlflowException

    with open_run(store, tmp_path) as run:
        pass

    class AwayClient(MlflowClient):
        def set_tag(self, *arguments, **options):
            raise MlflowException("API request to http://127.0.0.1:9/api/2.0/mlflow/runs/set-tag failed with exception")

    # The run's own error, not a second one from reporting it to a server that is gone.
    lifecycle._end(AwayClient(store), run.run_id, "FAILED", {lifecycle.ERROR_TAG: "x"})
    assert MlflowClient(store).get_run(run.run_id).info.status == "FINISHED"


def _open_runs_at_once(store: str, tmp_path: Path, count: int) -> list[subprocess.CompletedProcess[str]]:
    """`count` processes that each open a tracked run on `store` at the same instant (they wait for one file)."""
    go_file = tmp_path / "go"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from pipeline.tracking import lifecycle
        print("ready", flush=True)
        while not Path({str(go_file)!r}).exists():
            time.sleep(0.005)
        with lifecycle.tracked_run(tracking_uri={store!r}, experiment="queued",
                                  artifact_dir=Path({str(tmp_path / "artifacts")!r})) as run:
            print(run.run_id, flush=True)
    """)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(count)
    ]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
        go_file.touch()
        outputs = [child.communicate(timeout=120) for child in children]
    finally:
        for child in children:
            child.kill()
    return [
        subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
        for child, (stdout, stderr) in zip(children, outputs, strict=True)
    ]


# Two queued DVC experiments (`dvc queue start -j 2`) start their first stage on a store that does not exist yet.
def test_pipelines_opening_a_new_sqlite_store_at_once_all_get_their_run(store: str, tmp_path: Path) -> None:
    assert not (tmp_path / "mlflow.db").exists()
    results = _open_runs_at_once(store, tmp_path, 2)
    for result in results:
        assert result.returncode == 0, result.stderr
    client = MlflowClient(store)
    (experiment,) = [item for item in client.search_experiments() if item.name == "queued"]
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_id for run in runs) == sorted(result.stdout.split()[-1] for result in results)
    assert {run.info.status for run in runs} == {"FINISHED"}


def test_an_experiment_another_pipeline_created_since_the_lookup_is_used(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing = MlflowClient(store).create_experiment("tests", artifact_location=(tmp_path / "artifacts").as_uri())
    lookups: list[str] = []
    lookup = MlflowClient.get_experiment_by_name

    def before_the_other_created_it(client: MlflowClient, name: str):
        lookups.append(name)
        return None if len(lookups) == 1 else lookup(client, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", before_the_other_created_it)
    with open_run(store, tmp_path) as run:
        pass
    assert lookups == ["tests", "tests"]  # not found, the creation refused, then found
    assert MlflowClient(store).get_run(run.run_id).info.experiment_id == existing
