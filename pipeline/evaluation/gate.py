"""The champion gate: which numbers it compares, and the decision to move `@champion` or not.

Why: `models:/NAME@champion` is what users deploy, so a retrain may replace it only when it is better,
and "better" must compare like with like. A score stored on the champion's version was measured on
whatever test split its run had: change `data.subset_size` or `data.seed` and the two numbers come
from different images. So the evaluate stage scores the current champion on the challenger's own test
split (`pipeline.evaluation.metrics.score_champion`) and records both in a `Comparison`; the register stage
decides on those two numbers (`decide`).

The rule: the challenger becomes champion when its score on the configured metric beats both the
champion's score on the same test split and the majority-class baseline (always answering the
split's most frequent class) by more than `tracking.champion_margin`:
`challenger - max(champion, baseline) > margin`, strictly, so a tie keeps the champion in place and a
model that learned nothing never becomes champion, not even of an empty registry.

It never moves the alias when it cannot compare honestly:
- the champion could not be scored on this split (another task's classes, no class names recorded,
  another input kind, or it failed to load): a deployed model is not replaced by one that answers a
  different question; such a model belongs under another `tracking.registered_model`, or the alias
  can be moved by hand;
- the champion changed between evaluate and register (another pipeline registered meanwhile, or
  evaluate's result was reused by DVC after the registry moved): the comparison is stale.

This module holds no TensorFlow or MLflow import: the register stage reads the comparison as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GATE_METRICS = ("accuracy", "macro_f1")


@dataclass(frozen=True)
class ChampionScores:
    """The registry's champion scored on the challenger's test split, or why it could not be.

    Attributes:
        version: The champion's version number.
        scores: Its test scores (`accuracy`, `macro_f1`, `loss`, `examples`); None when not comparable.
        reason: Why it could not be scored; empty when it was.
    """

    version: str
    scores: dict[str, float] | None
    reason: str = ""


@dataclass(frozen=True)
class Comparison:
    """Everything the gate compares, all measured on one test split by the evaluate stage.

    Attributes:
        class_names: The challenger's classes, by label index.
        challenger: The new model's test scores.
        baseline: The majority-class baseline's scores (`accuracy`, `macro_f1`).
        majority_class: The class the baseline always answers.
        champion: The champion's scores on the same split; None when the registry had no champion.
    """

    class_names: list[str]
    challenger: dict[str, float]
    baseline: dict[str, float]
    majority_class: str
    champion: ChampionScores | None

    def write(self, path: Path) -> None:
        """Writes the comparison as JSON (the evaluate stage's `reports/champion_comparison.json`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    def run_metrics(self) -> dict[str, float]:
        """The numbers as run metrics: `test_*` of the challenger, `baseline_test_*`, and `champion_test_*` when
        the champion was scored."""
        metrics = {f"test_{key}": float(value) for key, value in self.challenger.items()}
        metrics.update({f"baseline_test_{key}": float(value) for key, value in self.baseline.items()})
        if self.champion is not None and self.champion.scores is not None:
            metrics.update({f"champion_test_{key}": float(self.champion.scores[key]) for key in GATE_METRICS})
        return metrics

    def compared_with(self) -> str:
        """Which champion was scored, in words (the run's tag `gate.compared_with`)."""
        if self.champion is None:
            return "no champion"
        if self.champion.scores is None:
            return f"v{self.champion.version}, not comparable: {self.champion.reason}"
        return f"v{self.champion.version}"

    @classmethod
    def read(cls, path: Path) -> Comparison:
        """Reads a comparison written by `write`."""
        document: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
        champion = document.pop("champion")
        return cls(**document, champion=None if champion is None else ChampionScores(**champion))


@dataclass(frozen=True)
class GateDecision:
    """Whether the challenger becomes champion, on which numbers, and why in one sentence.

    Attributes:
        promote: Whether `@champion` moves to the challenger.
        metric: The metric compared (higher is better).
        margin: How much the challenger had to win by.
        challenger: The challenger's score.
        baseline: The majority-class baseline's score on the same split.
        champion: The champion's score on the same split; None when there was none, or not comparable.
        champion_version: The champion the evaluate stage scored; None when the registry had none.
        reason: The decision in words, with the numbers.
    """

    promote: bool
    metric: str
    margin: float
    challenger: float
    baseline: float
    champion: float | None
    champion_version: str | None
    reason: str

    def tags(self) -> dict[str, str]:
        """The decision as model-version tags: both numbers (and the baseline's) and the reason."""
        return {
            "gate.decision": "champion" if self.promote else "not champion",
            "gate.reason": self.reason,
            "gate.metric": self.metric,
            "gate.margin": str(self.margin),
            f"gate.challenger_{self.metric}": str(self.challenger),
            f"gate.champion_{self.metric}": "none" if self.champion is None else str(self.champion),
            f"gate.baseline_{self.metric}": str(self.baseline),
            "gate.champion_version": self.champion_version or "none",
        }

    def version_tags(self) -> dict[str, str]:
        """The tags of the registered version: the challenger's test score, then the decision (`tags`)."""
        return {f"test_{self.metric}": str(self.challenger), **self.tags()}

    def run_tags(self) -> dict[str, str]:
        """The decision in short, for the run: champion or not, and why."""
        return {"gate.decision": self.tags()["gate.decision"], "gate.reason": self.reason}


def decide(comparison: Comparison, *, metric: str, margin: float, current_champion: str | None) -> GateDecision:
    """Applies the gate's rule (see the module) to a comparison.

    Args:
        comparison: What the evaluate stage measured.
        metric: `accuracy` or `macro_f1`.
        margin: The challenger must beat max(champion, baseline) by more than this (>= 0).
        current_champion: The version `@champion` points at now; compared with the one evaluate scored.

    Returns:
        The decision.

    Raises:
        ValueError: An unknown metric or a negative margin.
    """
    if metric not in GATE_METRICS:
        raise ValueError(f"the gate compares one of {', '.join(GATE_METRICS)}, not {metric!r}")
    if margin < 0:
        raise ValueError(f"champion margin must be >= 0, got {margin}")
    value = float(comparison.challenger[metric])
    baseline = float(comparison.baseline[metric])
    scored = comparison.champion
    scored_version = None if scored is None else scored.version
    champion_value = None if scored is None or scored.scores is None else float(scored.scores[metric])

    def decision(promote: bool, reason: str) -> GateDecision:
        return GateDecision(
            promote=promote,
            metric=metric,
            margin=margin,
            challenger=value,
            baseline=baseline,
            champion=champion_value,
            champion_version=scored_version,
            reason=reason,
        )

    if scored_version != current_champion:
        now = "no @champion" if current_champion is None else f"@champion is v{current_champion}"
        then = "an empty registry" if scored_version is None else f"v{scored_version}"
        return decision(
            False,
            f"not compared: {now} but evaluate scored {then}; the registry changed in between. "
            "Rerun the evaluation (dvc repro -f -s evaluate, then dvc repro) to compare with the current champion",
        )
    if scored is not None and scored.scores is None:
        return decision(
            False,
            f"@champion v{scored.version} stays: it could not be scored on this test split ({scored.reason}). "
            "A model of another task belongs under another tracking.registered_model; or move the alias by hand",
        )
    rivals = [(baseline, f"the majority-class baseline ({comparison.majority_class}) {baseline:.4f}")]
    if champion_value is not None:
        rivals.insert(0, (champion_value, f"@champion v{scored_version} {champion_value:.4f} on the same test split"))
    promote = value - max(score for score, _ in rivals) > margin
    if promote:
        beaten = " and ".join(text for _, text in rivals)
        return decision(True, f"{metric} {value:.4f} beats {beaten} by more than the margin {margin:g}")
    unbeaten = " or ".join(text for score, text in rivals if not value - score > margin)
    return decision(False, f"{metric} {value:.4f} does not beat {unbeaten} by more than the margin {margin:g}")
