"""A Keras callback that logs every epoch's metrics to the tracking run at the global epoch number.

Why its own module: it is the one part of the tracking that needs Keras, and the rest of
`pipeline.tracking` is imported by console commands that only query runs (`tl-compare`), which should
not pay for TensorFlow's start-up. The train stage makes one for its run.

A tracking server that goes away mid-training does not stop training: the epochs it did not take are kept
in order and sent with the next epoch that it answers, and `finish` waits a bounded time for the last ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras

from pipeline.tracking.runs import TrackingUnavailableError, is_unavailable

if TYPE_CHECKING:
    from pipeline.tracking.runs import TrackedRun
    from pipeline.training.history import PhaseRecord


class EpochLogger(keras.callbacks.Callback):
    """Logs every epoch's metrics at the global epoch number, one batch call per epoch.

    Why not `mlflow.keras.MlflowCallback`: its step restarts at 0 with every `fit`, so the phases
    of fine-tuning would overwrite each other. `pipeline.training.recipe` passes `initial_epoch`, so the
    epoch Keras reports here is already global.

    Args:
        run: The run.
        logged_steps: Epochs the run already holds (a resumed run): they are not logged again, so that
            an epoch logged before the kill and trained again after it stays one step of each metric.
        print_line: Where the lines about a tracking server going away and coming back go.
    """

    def __init__(
        self, run: TrackedRun, *, logged_steps: set[int] | None = None, print_line: Callable[[str], None] = print
    ) -> None:
        super().__init__()
        self._run = run
        self._phase_index: int | None = None
        self._logged = set(logged_steps or ())
        self._pending: list[tuple[int, dict[str, float]]] = []
        self._away_since: float | None = None
        self._print = print_line
        self._compiled: dict[str, tuple[str, str]] = {}
        self._pending_tags: dict[str, str] = {}

    @property
    def pending(self) -> int:
        """Epochs kept because the tracking server did not take them yet."""
        return len(self._pending)

    def catch_up(self, rows: list[dict[str, Any]]) -> int:
        """Logs the epochs of a resumed history that the run does not hold yet; returns how many.

        Why: a process killed between its checkpoint and its next log call leaves epochs the checkpoint
        has and the run lacks (and a tracking server that was away loses the ones it did not answer).
        """
        missing = [row for row in rows if int(row["epoch"]) not in self._logged]
        for row in missing:
            metrics = {key: float(value) for key, value in row.items() if key not in ("epoch", "phase_name")}
            self._queue(int(row["epoch"]), metrics)
        self._send()
        return len(missing)

    def begin_phase(self, phase: PhaseRecord) -> None:
        """Remembers the phase, logged as metric `phase` with each of its epochs (`fine_tune` calls it).

        Also tags what the phase's compiled model runs with (`device.xla`, `device.xla_reason`,
        `device.precision`, `device.replicas`, read from the model after compile): one value when every phase so
        far agrees, else one per phase (`frozen: false; unfreeze_top_2: true`).
        """
        self._phase_index = phase.index
        if phase.xla is None:
            return
        self._compiled[phase.name] = (str(phase.xla).lower(), phase.xla_reason)
        self._pending_tags.update(
            {
                "device.xla": self._per_phase(0),
                "device.xla_reason": self._per_phase(1),
                "device.precision": phase.precision,
                "device.replicas": str(phase.replicas),
            }
        )
        self._send()

    def _per_phase(self, position: int) -> str:
        values = {name: compiled[position] for name, compiled in self._compiled.items()}
        if len(set(values.values())) == 1:
            return next(iter(values.values()))
        return "; ".join(f"{name}: {value}" for name, value in values.items())

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch in self._logged:
            return
        metrics = {key: float(value) for key, value in (logs or {}).items()}
        if self._phase_index is not None:
            metrics["phase"] = float(self._phase_index)
        if metrics:
            self._queue(epoch, metrics)
            self._send()

    def finish(self, *, wait_seconds: float, retry_every: float = 5.0) -> None:
        """Sends the epochs still kept, waiting up to `wait_seconds` for an away server to answer.

        Raises:
            TrackingUnavailableError: The server did not answer in time; the message says how many epochs
                the run lacks (a resumed run logs them from its checkpoint).
        """
        deadline = time.monotonic() + wait_seconds
        self._send()
        while (self._pending or self._pending_tags) and time.monotonic() < deadline:
            time.sleep(min(retry_every, max(0.0, deadline - time.monotonic())))
            self._send()
        if self._pending:
            raise TrackingUnavailableError(
                f"the tracking server {self._run.client.tracking_uri} did not answer for {wait_seconds:g} s after "
                f"training ended (tracking.reconnect_seconds); {len(self._pending)} epoch(s) of run "
                f"{self._run.run_id} are not logged yet. The checkpoint is kept: rerun once the server answers, "
                "and train resumes the run and logs them"
            )

    def _queue(self, epoch: int, metrics: dict[str, float]) -> None:
        self._pending.append((epoch, metrics))
        self._logged.add(epoch)

    def _send(self) -> None:
        """Sends the kept tags, then the kept epochs in order, until the server does not answer (the rest is kept)."""
        while self._pending_tags or self._pending:
            epoch, metrics = self._pending[0] if self._pending else (None, {})
            try:
                if self._pending_tags:
                    self._run.set_tags(self._pending_tags)
                    self._pending_tags = {}
                    continue
                self._run.log_metrics(metrics, step=epoch)
            except Exception as error:
                if not is_unavailable(error):
                    raise
                if self._away_since is None:
                    self._away_since = time.monotonic()
                    where = f"at epoch {epoch + 1}" if epoch is not None else "as a phase starts"
                    self._print(
                        f"tracking server not answering {where}; training goes on and its epochs are "
                        "kept to be sent when it answers"
                    )
                return
            self._pending.pop(0)
        if self._away_since is not None:
            self._print(
                f"tracking server answering again after {time.monotonic() - self._away_since:.0f} s; the epochs "
                "kept meanwhile are logged"
            )
            self._away_since = None
