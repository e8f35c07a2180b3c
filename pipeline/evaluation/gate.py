"""The champion gate: which numbers it compares, and the decision to move `@champion` or not.

Why: `models:/NAME@champion` is what users deploy, so a retrain may replace it only when it is better,
and "better" must compare like with like. A score stored on the champion's version was measured on
whatever test split its run had: change `data.subset_size` or `data.seed` and the two numbers come
from different images. So the evaluate stage scores the current champion on the challenger's own test
split (`pipeline.evaluation.metrics.score_champion`) and records both in a `Comparison`; the register stage
decides on those two numbers (`decide`).

The rule: the challenger becomes champion when its score on the configured metric beats both the
champion's score on the same test split and the best of the baselines `tracking.gate_baselines` lists
by more than `tracking.champion_margin`: `challenger - max(champion, best baseline) > margin`,
strictly, so a tie keeps the champion in place; and, unless `tracking.champion_alpha` is null, when
the difference is real: McNemar's exact test on the images exactly one of the two gets right gives a
p-value below `champion_alpha`, against the champion and against that best baseline, with more of
those images on the challenger's side. One image more right out of 7,000 is chance, not a better model
(`pipeline.evaluation.significance`). Evaluate computes the paired counts (`PairedTest`), since it
holds every model's predictions on the same images; this module only reads them.

The baselines, all scored on the same test split, are the majority class (always answering the
split's most frequent class: a model that learned nothing never becomes champion, not even of an empty
registry), the linear probe (logistic regression on the frozen pretrained backbone's features: a
fine-tuned model worse than that is not a champion) and the pixel baseline (logistic regression on
downsampled raw pixels), see `pipeline.evaluation.baselines`.

It never moves the alias when it cannot compare honestly:
- the champion could not be scored on this split (another task's classes, no class names recorded,
  another input kind, or it failed to load): a deployed model is not replaced by one that answers a
  different question; such a model belongs under another `tracking.registered_model`, or the alias
  can be moved by hand;
- the champion changed between evaluate and register (another pipeline registered meanwhile, or
  evaluate's result was reused by DVC after the registry moved): the comparison is stale;
- a baseline the gate is told to compare with was not scored by evaluate (a comparison written with
  other settings): the floor is unknown.

What it decides on is a `pipeline.evaluation.comparison.Comparison`, which the register stage reads as JSON.
This module holds no TensorFlow or MLflow import.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.evaluation.comparison import BASELINE_TITLES, GATE_METRICS, ChampionScores, Comparison, PairedTest


@dataclass(frozen=True)
class GateDecision:
    """Whether the challenger becomes champion, on which numbers, and why in one sentence.

    Attributes:
        promote: Whether `@champion` moves to the challenger.
        metric: The metric compared (higher is better).
        margin: How much the challenger had to win by.
        challenger: The challenger's score.
        baseline: The best score of the gate's baselines on the same split: the floor.
        champion: The champion's score on the same split; None when there was none, or not comparable.
        champion_version: The champion the evaluate stage scored; None when the registry had none.
        reason: The decision in words, with the numbers.
        baseline_name: Which baseline set the floor (`majority`, `probe` or `pixels`).
        alpha: The significance level of McNemar's test (`tracking.champion_alpha`); None: no test.
        champion_test: McNemar's test against the champion; None without a comparable champion.
        baseline_test: McNemar's test against the floor's baseline; None when not recorded.
        rule: The rule applied, in words.
    """

    promote: bool
    metric: str
    margin: float
    challenger: float
    baseline: float
    champion: float | None
    champion_version: str | None
    reason: str
    baseline_name: str = "majority"
    alpha: float | None = None
    champion_test: PairedTest | None = None
    baseline_test: PairedTest | None = None
    rule: str = ""

    def tags(self) -> dict[str, str]:
        """The decision as model-version tags: the numbers, McNemar's counts and p-values, the rule, the reason."""
        tags = {
            "gate.decision": "champion" if self.promote else "not champion",
            "gate.reason": self.reason,
            "gate.rule": self.rule,
            "gate.metric": self.metric,
            "gate.margin": str(self.margin),
            "gate.alpha": "none" if self.alpha is None else str(self.alpha),
            f"gate.challenger_{self.metric}": str(self.challenger),
            f"gate.champion_{self.metric}": "none" if self.champion is None else str(self.champion),
            f"gate.baseline_{self.metric}": str(self.baseline),
            "gate.baseline": self.baseline_name,
            "gate.champion_version": self.champion_version or "none",
        }
        for rival, test in (("champion", self.champion_test), ("baseline", self.baseline_test)):
            if test is not None:
                tags[f"gate.{rival}_discordant"] = f"{test.challenger_only} vs {test.other_only}"
                tags[f"gate.{rival}_p_value"] = f"{test.p_value:.6g}"
        return tags

    def version_tags(self) -> dict[str, str]:
        """The tags of the registered version: the challenger's test score, then the decision (`tags`)."""
        return {f"test_{self.metric}": str(self.challenger), **self.tags()}

    def run_tags(self) -> dict[str, str]:
        """The decision in short, for the run: champion or not, and why."""
        return {"gate.decision": self.tags()["gate.decision"], "gate.reason": self.reason}


def describe_rule(*, metric: str, margin: float, alpha: float | None, baselines: Sequence[str]) -> str:
    """The gate's rule in one sentence, as the decision and `reports/champion_comparison.json` state it."""
    floor = baselines[0] if len(baselines) == 1 else f"the best of {', '.join(baselines)}"
    rule = f"{metric} above max(@champion on the same test split, {floor}) by more than {margin:g}"
    if alpha is None:
        return f"{rule}; no significance test (tracking.champion_alpha is null)"
    return f"{rule}, and McNemar's exact p < {alpha:g} against each, with more images right"


def decide(
    comparison: Comparison,
    *,
    metric: str,
    margin: float,
    alpha: float | None,
    current_champion: str | None,
    baselines: Sequence[str],
) -> GateDecision:
    """Applies the gate's rule (see the module) to a comparison.

    Args:
        comparison: What the evaluate stage measured.
        metric: `accuracy` or `macro_f1`.
        margin: The challenger must beat max(champion, best baseline) by more than this (>= 0).
        alpha: McNemar's test against the champion and that baseline must give p below this; None: no test.
        current_champion: The version `@champion` points at now; compared with the one evaluate scored.
        baselines: The baselines whose best score is the floor (`tracking.gate_baselines`), at least one.

    Returns:
        The decision.

    Raises:
        ValueError: An unknown metric, a negative margin, an alpha outside (0, 1), or no baseline.
    """
    if metric not in GATE_METRICS:
        raise ValueError(f"the gate compares one of {', '.join(GATE_METRICS)}, not {metric!r}")
    if margin < 0:
        raise ValueError(f"champion margin must be >= 0, got {margin}")
    if alpha is not None and not 0.0 < alpha < 1.0:
        raise ValueError(f"champion alpha must be between 0 and 1 (exclusive) or None, got {alpha}")
    if not baselines:
        raise ValueError(f"the gate needs at least one baseline of {', '.join(BASELINE_TITLES)}")
    value = float(comparison.challenger[metric])
    missing = [name for name in baselines if name not in comparison.baselines]
    floor_name, floor = ("majority", 0.0) if missing else comparison.best_baseline(metric, baselines)
    scored = comparison.champion
    scored_version = None if scored is None else scored.version
    champion_value = None if scored is None or scored.scores is None else float(scored.scores[metric])
    champion_test = None if champion_value is None else scored.paired
    baseline_test = None if missing else comparison.baselines[floor_name].paired
    rule = describe_rule(metric=metric, margin=margin, alpha=alpha, baselines=baselines)

    def decision(promote: bool, reason: str) -> GateDecision:
        return GateDecision(
            promote=promote,
            metric=metric,
            margin=margin,
            challenger=value,
            baseline=floor,
            champion=champion_value,
            champion_version=scored_version,
            reason=reason,
            baseline_name=floor_name,
            alpha=alpha,
            champion_test=champion_test,
            baseline_test=baseline_test,
            rule=rule,
        )

    rerun = "Rerun the evaluation (dvc repro -f -s evaluate, then dvc repro)"
    if missing:
        return decision(
            False,
            f"not compared: tracking.gate_baselines lists {', '.join(missing)}, which evaluate did not score "
            f"(it scored {', '.join(comparison.baselines)}). {rerun} with those baselines enabled in "
            "evaluate.baselines",
        )
    if scored_version != current_champion:
        now = "no @champion" if current_champion is None else f"@champion is v{current_champion}"
        then = "an empty registry" if scored_version is None else f"v{scored_version}"
        return decision(
            False,
            f"not compared: {now} but evaluate scored {then}; the registry changed in between. "
            f"{rerun} to compare with the current champion",
        )
    if scored is not None and scored.scores is None:
        return decision(
            False,
            f"@champion v{scored.version} stays: it could not be scored on this test split ({scored.reason}). "
            "A model of another task belongs under another tracking.registered_model; or move the alias by hand",
        )
    floor_title = comparison.baselines[floor_name].title(floor_name)
    tested = [(baseline_test, floor_title)]
    if champion_value is not None:
        tested.insert(0, (champion_test, f"@champion v{scored_version}"))
    if alpha is not None and any(test is None for test, _ in tested):
        return decision(
            False,
            "not compared: evaluate recorded no McNemar counts (a comparison written by an earlier pipeline), "
            f"and tracking.champion_alpha is {alpha:g}. {rerun}, or set tracking.champion_alpha: null",
        )
    rivals: list[tuple[float, str]] = []
    if champion_value is not None:
        rivals.append((champion_value, f"@champion v{scored_version} {champion_value:.4f} on the same test split"))
    for name in baselines:
        score = float(comparison.baselines[name].scores[metric])
        rivals.append((score, f"{comparison.baselines[name].title(name)} {score:.4f}"))
    if not value - max(score for score, _ in rivals) > margin:
        unbeaten = " or ".join(text for score, text in rivals if not value - score > margin)
        return decision(False, f"{metric} {value:.4f} does not beat {unbeaten} by more than the margin {margin:g}")
    # The champion (when there is one) and the floor: the other baselines are below it.
    beaten = [rivals[0][1]] if champion_value is not None else []
    beaten.append(f"{floor_title} {floor:.4f}" + ("" if len(baselines) == 1 else f" (best of {', '.join(baselines)})"))
    beats = f"{metric} {value:.4f} beats {' and '.join(beaten)} by more than the margin {margin:g}"
    if alpha is None:
        return decision(True, f"{beats}; no significance test (tracking.champion_alpha is null)")
    counts = "; ".join(f"against {title} {test.describe()}" for test, title in tested)
    chance = [title for test, title in tested if not test.significant(alpha)]
    if chance:
        return decision(
            False,
            f"{beats}, but not beyond chance against {' or '.join(chance)}: McNemar's exact test on the images "
            f"only one of the two gets right, {counts} (alpha {alpha:g})",
        )
    return decision(True, f"{beats}, beyond chance: McNemar's exact test {counts} (alpha {alpha:g})")


def decider(
    comparison: Comparison,
    *,
    metric: str,
    margin: float,
    alpha: float | None,
    baselines: Sequence[str],
    rescore: Callable[[str], ChampionScores],
) -> Callable[[str | None], GateDecision]:
    """The gate's rule against whoever is champion when the registration's turn comes.

    Why: the evaluate stage scored the champion of its moment; another pipeline may have promoted a
    model since (two pipelines registering to one name at once). Refusing then would let whichever
    registered first stay champion, better or not; so the new champion is scored now on this run's
    test split (`rescore`) and the rule applied to it, like with like.

    Args:
        comparison: What the evaluate stage measured.
        metric: `accuracy` or `macro_f1`.
        margin: See `decide`.
        alpha: See `decide`.
        baselines: See `decide`.
        rescore: A champion version -> its scores on this run's test split, with McNemar's test against the
            challenger (`metrics.score_champion`).

    Returns:
        The champion version now (None: none) -> the decision.
    """

    def decide_now(current_champion: str | None) -> GateDecision:
        scored = comparison.champion
        compared = comparison
        if current_champion != (None if scored is None else scored.version):
            champion = None if current_champion is None else rescore(current_champion)
            compared = dataclasses.replace(comparison, champion=champion)
        return decide(
            compared,
            metric=metric,
            margin=margin,
            alpha=alpha,
            current_champion=current_champion,
            baselines=baselines,
        )

    return decide_now
