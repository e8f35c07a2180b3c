"""The champion gate's rule: beat max(champion on the same split, best listed baseline) by more than the margin."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from pipeline.evaluation.comparison import BaselineScores, ChampionScores, Comparison, PairedTest
from pipeline.evaluation.gate import GateDecision, decide
from pipeline.evaluation.metrics import paired_test
from pipeline.evaluation.significance import pack_right, unpack_right

MAJORITY = ["majority"]
ALL = ["majority", "probe", "pixels"]


def _fitted(accuracy: float, description: str) -> BaselineScores:
    scores = {"accuracy": accuracy, "macro_f1": accuracy / 2, "loss": 0.6, "examples": 40}
    return BaselineScores(scores, description, {"train_images": 20, "dimension": 8, "solver": "lbfgs", "seconds": 0.5})


def _comparison(
    challenger: float,
    baseline: float = 0.1,
    champion: ChampionScores | None = None,
    *,
    probe: float | None = None,
    pixels: float | None = None,
) -> Comparison:
    baselines = {
        "majority": BaselineScores({"accuracy": baseline, "macro_f1": baseline / 2}, "always a", {"class_name": "a"})
    }
    if probe is not None:
        baselines["probe"] = _fitted(probe, "logistic regression on 8 frozen tiny features of 20 training images")
    if pixels is not None:
        baselines["pixels"] = _fitted(pixels, "logistic regression on 4x4 grey pixels of 20 training images")
    return Comparison(
        class_names=["a", "b"],
        challenger={"accuracy": challenger, "macro_f1": challenger / 2, "loss": 0.5, "examples": 40},
        baselines=baselines,
        champion=champion,
    )


def _champion(accuracy: float, version: str = "3") -> ChampionScores:
    return ChampionScores(version, {"accuracy": accuracy, "macro_f1": accuracy / 2, "loss": 0.7, "examples": 40})


def test_an_empty_registry_takes_a_model_that_beats_the_baseline() -> None:
    decision = decide(
        _comparison(0.75), metric="accuracy", margin=0.0, alpha=None, current_champion=None, baselines=MAJORITY
    )
    assert decision == GateDecision(
        promote=True,
        metric="accuracy",
        margin=0.0,
        alpha=None,
        challenger=0.75,
        baseline=0.1,
        champion=None,
        champion_version=None,
        reason="accuracy 0.7500 beats the majority-class baseline (a) 0.1000 by more than the margin 0"
        "; no significance test (tracking.champion_alpha is null)",
        rule="accuracy above max(@champion on the same test split, majority) by more than 0; no significance test "
        "(tracking.champion_alpha is null)",
    )


def test_a_useless_model_never_becomes_champion_of_an_empty_registry() -> None:
    decision = decide(
        _comparison(0.1), metric="accuracy", margin=0.0, alpha=None, current_champion=None, baselines=MAJORITY
    )
    assert decision.promote is False
    assert decision.reason == (
        "accuracy 0.1000 does not beat the majority-class baseline (a) 0.1000 by more than the margin 0"
    )


def test_the_challenger_must_beat_the_champion_scored_on_the_same_split() -> None:
    worse = decide(
        _comparison(0.7, champion=_champion(0.8)),
        metric="accuracy",
        margin=0.0,
        alpha=None,
        current_champion="3",
        baselines=MAJORITY,
    )
    assert (worse.promote, worse.champion, worse.champion_version) == (False, 0.8, "3")
    assert worse.reason == (
        "accuracy 0.7000 does not beat @champion v3 0.8000 on the same test split by more than the margin 0"
    )
    better = decide(
        _comparison(0.9, champion=_champion(0.8)),
        metric="accuracy",
        margin=0.0,
        alpha=None,
        current_champion="3",
        baselines=MAJORITY,
    )
    assert better.promote is True
    assert better.reason == (
        "accuracy 0.9000 beats @champion v3 0.8000 on the same test split and the majority-class baseline (a) "
        "0.1000 by more than the margin 0; no significance test (tracking.champion_alpha is null)"
    )


def test_a_tie_keeps_the_champion() -> None:
    tie = decide(
        _comparison(0.8, champion=_champion(0.8)),
        metric="accuracy",
        margin=0.0,
        alpha=None,
        current_champion="3",
        baselines=MAJORITY,
    )
    assert tie.promote is False


def test_the_margin_is_respected() -> None:
    comparison = _comparison(0.875, champion=_champion(0.75))
    assert (
        decide(
            comparison, metric="accuracy", margin=0.125, alpha=None, current_champion="3", baselines=MAJORITY
        ).promote
        is False
    )
    assert (
        decide(
            comparison, metric="accuracy", margin=0.0625, alpha=None, current_champion="3", baselines=MAJORITY
        ).promote
        is True
    )
    decision = decide(
        _comparison(0.25, baseline=0.125),
        metric="accuracy",
        margin=0.25,
        alpha=None,
        current_champion=None,
        baselines=MAJORITY,
    )
    assert decision.reason == (
        "accuracy 0.2500 does not beat the majority-class baseline (a) 0.1250 by more than the margin 0.25"
    )


def test_the_configured_metric_is_compared() -> None:
    # Accuracy would win (0.9 > 0.8), macro F1 does not (0.45 < 0.5).
    comparison = _comparison(0.9, champion=ChampionScores("3", {"accuracy": 0.8, "macro_f1": 0.5}))
    decision = decide(comparison, metric="macro_f1", margin=0.0, alpha=None, current_champion="3", baselines=MAJORITY)
    assert (decision.promote, decision.challenger, decision.champion, decision.baseline) == (False, 0.45, 0.5, 0.05)


def test_a_champion_that_could_not_be_scored_stays() -> None:
    champion = ChampionScores("3", None, "its classes (2 classes: x, y) are not this run's (2 classes: a, b)")
    decision = decide(
        _comparison(0.99, champion=champion),
        metric="accuracy",
        margin=0.0,
        alpha=None,
        current_champion="3",
        baselines=MAJORITY,
    )
    assert (decision.promote, decision.champion, decision.champion_version) == (False, None, "3")
    assert decision.reason.startswith(
        "@champion v3 stays: it could not be scored on this test split (its classes (2 classes: x, y) are not "
        "this run's (2 classes: a, b)). A model of another task belongs under another tracking.registered_model"
    )


@pytest.mark.parametrize(
    ("scored", "current", "says"),
    [
        (None, "4", "not compared: @champion is v4 but evaluate scored an empty registry;"),
        ("3", "4", "not compared: @champion is v4 but evaluate scored v3;"),
        ("3", None, "not compared: no @champion but evaluate scored v3;"),
    ],
)
def test_a_champion_that_moved_since_evaluate_is_not_replaced(
    scored: str | None, current: str | None, says: str
) -> None:
    comparison = _comparison(0.99, champion=None if scored is None else _champion(0.5, scored))
    decision = decide(
        comparison, metric="accuracy", margin=0.0, alpha=None, current_champion=current, baselines=MAJORITY
    )
    assert decision.promote is False
    assert decision.reason.startswith(says)
    assert "dvc repro -f -s evaluate" in decision.reason


def test_tags_hold_the_decision_and_both_numbers() -> None:
    decision = decide(
        _comparison(0.7, champion=_champion(0.8)),
        metric="accuracy",
        margin=0.0,
        alpha=None,
        current_champion="3",
        baselines=MAJORITY,
    )
    assert decision.tags() == {
        "gate.decision": "not champion",
        "gate.reason": decision.reason,
        "gate.rule": decision.rule,
        "gate.metric": "accuracy",
        "gate.margin": "0.0",
        "gate.alpha": "none",
        "gate.challenger_accuracy": "0.7",
        "gate.champion_accuracy": "0.8",
        "gate.baseline_accuracy": "0.1",
        "gate.baseline": "majority",
        "gate.champion_version": "3",
    }


def test_unknown_metric_and_negative_margin_are_refused() -> None:
    with pytest.raises(ValueError, match="the gate compares one of accuracy, macro_f1, not 'loss'"):
        decide(_comparison(0.5), metric="loss", margin=0.0, alpha=None, current_champion=None, baselines=MAJORITY)
    with pytest.raises(ValueError, match="champion margin must be >= 0, got -0.1"):
        decide(_comparison(0.5), metric="accuracy", margin=-0.1, alpha=None, current_champion=None, baselines=MAJORITY)


@pytest.mark.parametrize("champion", [None, _champion(0.8), ChampionScores("2", None, "it failed to load")])
def test_comparison_round_trips_through_json(tmp_path: Path, champion: ChampionScores | None) -> None:
    comparison = _comparison(0.75, champion=champion)
    comparison.write(tmp_path / "reports" / "champion_comparison.json")
    assert Comparison.read(tmp_path / "reports" / "champion_comparison.json") == comparison


def test_a_model_below_the_linear_probe_is_not_champion() -> None:
    # It beats the majority class (0.1) and the pixels (0.6), not logistic regression on its own frozen features.
    comparison = _comparison(0.8, probe=0.85, pixels=0.6)
    decision = decide(comparison, metric="accuracy", margin=0.0, alpha=None, current_champion=None, baselines=ALL)
    assert (decision.promote, decision.baseline, decision.baseline_name) == (False, 0.85, "probe")
    assert decision.reason == "accuracy 0.8000 does not beat the linear probe 0.8500 by more than the margin 0"
    assert (decision.tags()["gate.baseline"], decision.tags()["gate.baseline_accuracy"]) == ("probe", "0.85")


def test_every_unbeaten_baseline_is_named() -> None:
    comparison = _comparison(0.55, probe=0.85, pixels=0.6)
    decision = decide(comparison, metric="accuracy", margin=0.0, alpha=None, current_champion=None, baselines=ALL)
    assert decision.reason == (
        "accuracy 0.5500 does not beat the linear probe 0.8500 or the pixel baseline 0.6000 by more than the margin 0"
    )


def test_beating_every_baseline_names_the_best_one() -> None:
    comparison = _comparison(0.9, probe=0.6, pixels=0.85)
    decision = decide(comparison, metric="accuracy", margin=0.0, alpha=None, current_champion=None, baselines=ALL)
    assert (decision.promote, decision.baseline, decision.baseline_name) == (True, 0.85, "pixels")
    assert decision.reason == (
        "accuracy 0.9000 beats the pixel baseline 0.8500 (best of majority, probe, pixels) by more than the margin 0"
        "; no significance test (tracking.champion_alpha is null)"
    )
    with_champion = decide(
        _comparison(0.9, champion=_champion(0.8), probe=0.6, pixels=0.85),
        metric="accuracy",
        margin=0.0,
        alpha=None,
        current_champion="3",
        baselines=ALL,
    )
    assert with_champion.reason == (
        "accuracy 0.9000 beats @champion v3 0.8000 on the same test split and the pixel baseline 0.8500 (best of "
        "majority, probe, pixels) by more than the margin 0; no significance test (tracking.champion_alpha is null)"
    )


def test_only_the_listed_baselines_are_the_floor() -> None:
    comparison = _comparison(0.8, probe=0.85, pixels=0.6)
    decision = decide(
        comparison, metric="accuracy", margin=0.0, alpha=None, current_champion=None, baselines=["majority", "pixels"]
    )
    assert (decision.promote, decision.baseline, decision.baseline_name) == (True, 0.6, "pixels")
    # The margin applies to the floor as to the champion: 0.8 - 0.6 is not above 0.25.
    held = decide(
        comparison, metric="accuracy", margin=0.25, alpha=None, current_champion=None, baselines=["majority", "pixels"]
    )
    assert held.reason == "accuracy 0.8000 does not beat the pixel baseline 0.6000 by more than the margin 0.25"


def test_the_floor_follows_the_metric() -> None:
    # Macro F1 is half the accuracy in these comparisons: the probe's 0.425 against the model's 0.4.
    comparison = _comparison(0.8, probe=0.85)
    decision = decide(comparison, metric="macro_f1", margin=0.0, alpha=None, current_champion=None, baselines=["probe"])
    assert (decision.promote, decision.challenger, decision.baseline) == (False, 0.4, 0.425)


def test_a_listed_baseline_that_evaluate_did_not_score_blocks_the_gate() -> None:
    decision = decide(
        _comparison(0.99), metric="accuracy", margin=0.0, alpha=None, current_champion=None, baselines=ALL
    )
    assert decision.promote is False
    assert decision.reason.startswith(
        "not compared: tracking.gate_baselines lists probe, pixels, which evaluate did not score (it scored majority)."
    )


def test_the_gate_needs_a_baseline() -> None:
    with pytest.raises(ValueError, match="the gate needs at least one baseline of majority, probe, pixels"):
        decide(_comparison(0.5), metric="accuracy", margin=0.0, alpha=None, current_champion=None, baselines=[])


def test_run_metrics_hold_every_baseline() -> None:
    metrics = _comparison(0.75, probe=0.5, pixels=0.25).run_metrics()
    assert metrics == {
        "test_accuracy": 0.75,
        "test_macro_f1": 0.375,
        "test_loss": 0.5,
        "test_examples": 40.0,
        "baseline_test_accuracy": 0.1,
        "baseline_test_macro_f1": 0.05,
        "probe_test_accuracy": 0.5,
        "probe_test_macro_f1": 0.25,
        "probe_seconds": 0.5,
        "pixels_test_accuracy": 0.25,
        "pixels_test_macro_f1": 0.125,
        "pixels_seconds": 0.5,
    }


def test_a_comparison_with_every_baseline_round_trips_through_json(tmp_path: Path) -> None:
    comparison = _comparison(0.75, champion=_champion(0.7), probe=0.5, pixels=0.25)
    comparison.write(tmp_path / "comparison.json")
    assert Comparison.read(tmp_path / "comparison.json") == comparison


# McNemar's test in the gate (tracking.champion_alpha): predictions constructed so the p-values are known.
def _right(total: int, right: int, *, offset: int = 0) -> np.ndarray:
    """`total` images of which the `right` ones from `offset` on are answered right."""
    answers = np.zeros(total, dtype=bool)
    answers[offset : offset + right] = True
    return answers


def _tested(challenger_right: np.ndarray, champion_right: np.ndarray, majority_right: np.ndarray) -> Comparison:
    """A comparison whose scores and McNemar counts come from the same constructed answers."""
    examples = len(challenger_right)

    def scores(right: np.ndarray) -> dict[str, float]:
        return {"accuracy": float(right.mean()), "macro_f1": float(right.mean()), "loss": 0.5, "examples": examples}

    majority = BaselineScores(
        {"accuracy": float(majority_right.mean()), "macro_f1": 0.1},
        "always a",
        {"class_name": "a"},
        paired=paired_test(challenger_right, majority_right),
    )
    champion = ChampionScores("3", scores(champion_right), paired=paired_test(challenger_right, champion_right))
    return Comparison(
        class_names=["a", "b"],
        challenger=scores(challenger_right),
        baselines={"majority": majority},
        champion=champion,
        challenger_right=pack_right(challenger_right),
    )


def test_a_one_image_gain_on_7000_images_is_not_promoted() -> None:
    champion = _right(7000, 6500)
    challenger = _right(7000, 6501)  # the same answers, and one image more right
    comparison = _tested(challenger, champion, _right(7000, 700))
    decision = decide(comparison, metric="accuracy", margin=0.0, alpha=0.05, current_champion="3", baselines=MAJORITY)
    assert decision.promote is False
    assert decision.champion_test == PairedTest(challenger_only=1, other_only=0, p_value=1.0)
    assert decision.reason == (
        "accuracy 0.9287 beats @champion v3 0.9286 on the same test split and the majority-class baseline (a) "
        "0.1000 by more than the margin 0, but not beyond chance against @champion v3: McNemar's exact test on the "
        "images only one of the two gets right, against @champion v3 1 vs 0 images, p 1; against the "
        "majority-class baseline (a) 5801 vs 0 images, p 0 (alpha 0.05)"
    )
    # The same comparison under today's rule (no test) promotes it, and says there was no test.
    untested = decide(comparison, metric="accuracy", margin=0.0, alpha=None, current_champion="3", baselines=MAJORITY)
    assert untested.promote is True
    assert untested.reason.endswith("; no significance test (tracking.champion_alpha is null)")


def test_200_against_140_discordant_images_is_promoted() -> None:
    # 6,000 images both get right, then 200 only the challenger gets right, then 140 only the champion.
    challenger = _right(7000, 6200)
    champion = _right(7000, 6000) | _right(7000, 140, offset=6200)
    comparison = _tested(challenger, champion, _right(7000, 700))
    decision = decide(comparison, metric="accuracy", margin=0.0, alpha=0.05, current_champion="3", baselines=MAJORITY)
    expected_p = stats.binomtest(200, 340, 0.5).pvalue
    assert decision.champion_test == PairedTest(challenger_only=200, other_only=140, p_value=expected_p)
    assert expected_p == pytest.approx(0.001341, abs=1e-6)
    assert decision.promote is True
    assert decision.reason == (
        "accuracy 0.8857 beats @champion v3 0.8771 on the same test split and the majority-class baseline (a) "
        "0.1000 by more than the margin 0, beyond chance: McNemar's exact test against @champion v3 200 vs 140 "
        "images, p 0.0013; against the majority-class baseline (a) 5500 vs 0 images, p 0 (alpha 0.05)"
    )
    tags = decision.tags()
    assert (tags["gate.alpha"], tags["gate.champion_discordant"], tags["gate.champion_p_value"]) == (
        "0.05",
        "200 vs 140",
        "0.00134104",
    )
    assert (tags["gate.baseline_discordant"], tags["gate.baseline_p_value"]) == ("5500 vs 0", "0")
    assert tags["gate.rule"] == (
        "accuracy above max(@champion on the same test split, majority) by more than 0, and McNemar's exact "
        "p < 0.05 against each, with more images right"
    )
    # A stricter alpha holds the same challenger back.
    strict = decide(comparison, metric="accuracy", margin=0.0, alpha=0.001, current_champion="3", baselines=MAJORITY)
    assert strict.promote is False


def test_the_floor_baseline_must_be_beaten_beyond_chance_too() -> None:
    # An empty registry: the challenger beats the constant answer on 10 images, loses on 5 (p 0.30).
    majority = _right(100, 60)
    challenger = _right(100, 55) | _right(100, 10, offset=60)
    comparison = dataclasses.replace(_tested(challenger, majority, majority), champion=None)
    decision = decide(comparison, metric="accuracy", margin=0.0, alpha=0.05, current_champion=None, baselines=MAJORITY)
    assert decision.baseline_test == PairedTest(10, 5, stats.binomtest(10, 15, 0.5).pvalue)
    assert (decision.promote, decision.champion_test) == (False, None)
    assert decision.reason == (
        "accuracy 0.6500 beats the majority-class baseline (a) 0.6000 by more than the margin 0, but not beyond "
        "chance against the majority-class baseline (a): McNemar's exact test on the images only one of the two "
        "gets right, against the majority-class baseline (a) 10 vs 5 images, p 0.3 (alpha 0.05)"
    )


def test_more_discordant_images_on_the_other_side_is_never_significant() -> None:
    assert PairedTest(challenger_only=5, other_only=500, p_value=1e-90).significant(0.05) is False
    assert PairedTest(challenger_only=500, other_only=5, p_value=1e-90).significant(0.05) is True


def test_alpha_without_mcnemar_counts_is_not_compared() -> None:
    # A comparison from an earlier evaluate: no paired counts.
    decision = decide(
        _comparison(0.9, champion=_champion(0.8)),
        metric="accuracy",
        margin=0.0,
        alpha=0.05,
        current_champion="3",
        baselines=MAJORITY,
    )
    assert decision.promote is False
    assert decision.reason.startswith("not compared: evaluate recorded no McNemar counts")
    assert decision.reason.endswith("or set tracking.champion_alpha: null")


def test_alpha_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"champion alpha must be between 0 and 1 \(exclusive\) or None, got 1.5"):
        decide(_comparison(0.5), metric="accuracy", margin=0.0, alpha=1.5, current_champion=None, baselines=MAJORITY)


def test_a_comparison_with_mcnemar_counts_round_trips_through_json(tmp_path: Path) -> None:
    challenger = _right(7000, 6200)
    comparison = dataclasses.replace(
        _tested(challenger, _right(7000, 6000), _right(7000, 700)), rule="accuracy above max(...)"
    )
    comparison.write(tmp_path / "comparison.json")
    read = Comparison.read(tmp_path / "comparison.json")
    assert read == comparison
    assert np.array_equal(unpack_right(read.challenger_right, 7000), challenger)
