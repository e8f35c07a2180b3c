"""What the champion gate compares, all measured by the evaluate stage on one test split: the new model's
scores, each baseline's and the champion's, with McNemar's test of the new model against each of them.

Why a module of its own: `reports/champion_comparison.json` is written by evaluate and read by register, and
the scoring code (`pipeline.evaluation.metrics`, `baselines`) builds its parts; the rule applied to it lives in
`pipeline.evaluation.gate`. No TensorFlow or MLflow import.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.runtime import atomic

GATE_METRICS = ("accuracy", "macro_f1")
# How the decision's reason names each baseline of `pipeline.params.baselines.BASELINE_NAMES`.
BASELINE_TITLES = {
    "majority": "the majority-class baseline",
    "probe": "the linear probe",
    "pixels": "the pixel baseline",
}


@dataclass(frozen=True)
class PairedTest:
    """McNemar's exact test of the challenger against another model on the same test images.

    Attributes:
        challenger_only: Images the challenger gets right and the other model wrong.
        other_only: Images the other model gets right and the challenger wrong.
        p_value: Two-sided exact p-value of that split (1.0 when no image is discordant).
    """

    challenger_only: int
    other_only: int
    p_value: float

    def significant(self, alpha: float) -> bool:
        """Whether the challenger gets more images right than the other, beyond chance at `alpha`."""
        return self.challenger_only > self.other_only and self.p_value < alpha

    def describe(self) -> str:
        """The counts and the p-value in words: "120 vs 20 images, p 3.1e-19"."""
        return f"{self.challenger_only} vs {self.other_only} images, p {self.p_value:.2g}"


def _paired(document: dict[str, Any] | None) -> PairedTest | None:
    return None if document is None else PairedTest(**document)


@dataclass(frozen=True)
class ChampionScores:
    """The registry's champion scored on the challenger's test split, or why it could not be.

    Attributes:
        version: The champion's version number.
        scores: Its test scores (`accuracy`, `macro_f1`, `loss`, `examples`); None when not comparable.
        reason: Why it could not be scored; empty when it was.
        paired: McNemar's test of the challenger against it; None when not scored (or by an older evaluate).
    """

    version: str
    scores: dict[str, float] | None
    reason: str = ""
    paired: PairedTest | None = None


@dataclass(frozen=True)
class BaselineScores:
    """A baseline scored on the challenger's test split, and what it used.

    Attributes:
        scores: Its test scores (`accuracy`, `macro_f1`, and for the fitted baselines `loss`, `examples`).
        description: What it is and fitted on, in words ("always Sandal", "logistic regression on ...").
        details: What it used, as numbers and names (the majority's `class_name`; the fitted baselines'
            `train_images`, `dimension`, `solver`, `seconds`, ...).
        paired: McNemar's test of the challenger against it; None from an older evaluate.
    """

    scores: dict[str, float]
    description: str
    details: dict[str, Any] = field(default_factory=dict)
    paired: PairedTest | None = None

    def title(self, name: str) -> str:
        """How the gate's reason names it: the majority-class baseline with its class."""
        title = BASELINE_TITLES.get(name, name)
        return f"{title} ({self.details['class_name']})" if name == "majority" else title


@dataclass(frozen=True)
class Comparison:
    """Everything the gate compares, all measured on one test split by the evaluate stage.

    Attributes:
        class_names: The challenger's classes, by label index.
        challenger: The new model's test scores.
        baselines: Each baseline scored, by name (`majority` always; `probe` and `pixels` when enabled).
        champion: The champion's scores on the same split; None when the registry had no champion.
        challenger_right: Which test images the challenger gets right, in the manifest's order, as the hex
            of `numpy.packbits` (`pipeline.evaluation.significance.pack_right`): the register stage tests a
            champion promoted meanwhile against it without scoring the challenger again.
        rule: The gate's rule evaluate scored for (`describe_rule`), in words.
    """

    class_names: list[str]
    challenger: dict[str, float]
    baselines: dict[str, BaselineScores]
    champion: ChampionScores | None
    challenger_right: str = ""
    rule: str = ""

    def write(self, path: Path) -> None:
        """Writes the comparison as JSON (the evaluate stage's `reports/champion_comparison.json`)."""
        atomic.write_text(path, json.dumps(asdict(self), indent=2) + "\n")

    def run_metrics(self) -> dict[str, float]:
        """The numbers as run metrics: `test_*` of the challenger, the baselines' (`baseline_metrics`), and
        `champion_test_*` when the champion was scored."""
        metrics = {f"test_{key}": float(value) for key, value in self.challenger.items()}
        metrics.update(self.baseline_metrics())
        if self.champion is not None and self.champion.scores is not None:
            metrics.update({f"champion_test_{key}": float(self.champion.scores[key]) for key in GATE_METRICS})
        return metrics

    def baseline_metrics(self) -> dict[str, float]:
        """The baselines' scores as flat metrics, for the run and reports/metrics.json.

        `baseline_test_accuracy` and `baseline_test_macro_f1` are the majority class's (the names runs have
        always had); `probe_test_*` and `pixels_test_*` the fitted baselines', with their `*_seconds`.
        """
        metrics: dict[str, float] = {}
        for name, baseline in self.baselines.items():
            prefix = "baseline" if name == "majority" else name
            metrics.update({f"{prefix}_test_{key}": float(baseline.scores[key]) for key in GATE_METRICS})
            if "seconds" in baseline.details:
                metrics[f"{prefix}_seconds"] = float(baseline.details["seconds"])
        return metrics

    def best_baseline(self, metric: str, names: Sequence[str] | None = None) -> tuple[str, float]:
        """The baseline with the highest `metric` among `names` (default: all scored); the first wins a tie.

        Raises:
            KeyError: A name that was not scored.
        """
        listed = list(self.baselines) if names is None else list(names)
        best = max(listed, key=lambda name: float(self.baselines[name].scores[metric]))
        return best, float(self.baselines[best].scores[metric])

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
        baselines = {
            name: BaselineScores(**{**scores, "paired": _paired(scores.get("paired"))})
            for name, scores in document.pop("baselines").items()
        }
        if champion is not None:
            champion = ChampionScores(**{**champion, "paired": _paired(champion.get("paired"))})
        return cls(**document, baselines=baselines, champion=champion)
