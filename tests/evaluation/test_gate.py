"""The champion gate's rule: beat max(champion on the same split, best listed baseline) by more than the margin."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.evaluation.gate import BaselineScores, ChampionScores, Comparison, GateDecision, decide

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
    decision = decide(_comparison(0.75), metric="accuracy", margin=0.0, current_champion=None, baselines=MAJORITY)
    assert decision == GateDecision(
        promote=True,
        metric="accuracy",
        margin=0.0,
        challenger=0.75,
        baseline=0.1,
        champion=None,
        champion_version=None,
        reason="accuracy 0.7500 beats the majority-class baseline (a) 0.1000 by more than the margin 0",
    )


def test_a_useless_model_never_becomes_champion_of_an_empty_registry() -> None:
    decision = decide(_comparison(0.1), metric="accuracy", margin=0.0, current_champion=None, baselines=MAJORITY)
    assert decision.promote is False
    assert decision.reason == (
        "accuracy 0.1000 does not beat the majority-class baseline (a) 0.1000 by more than the margin 0"
    )


def test_the_challenger_must_beat_the_champion_scored_on_the_same_split() -> None:
    worse = decide(
        _comparison(0.7, champion=_champion(0.8)),
        metric="accuracy",
        margin=0.0,
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
        current_champion="3",
        baselines=MAJORITY,
    )
    assert better.promote is True
    assert better.reason == (
        "accuracy 0.9000 beats @champion v3 0.8000 on the same test split and the majority-class baseline (a) "
        "0.1000 by more than the margin 0"
    )


def test_a_tie_keeps_the_champion() -> None:
    tie = decide(
        _comparison(0.8, champion=_champion(0.8)),
        metric="accuracy",
        margin=0.0,
        current_champion="3",
        baselines=MAJORITY,
    )
    assert tie.promote is False


def test_the_margin_is_respected() -> None:
    comparison = _comparison(0.875, champion=_champion(0.75))
    assert (
        decide(comparison, metric="accuracy", margin=0.125, current_champion="3", baselines=MAJORITY).promote is False
    )
    assert (
        decide(comparison, metric="accuracy", margin=0.0625, current_champion="3", baselines=MAJORITY).promote is True
    )
    decision = decide(
        _comparison(0.25, baseline=0.125), metric="accuracy", margin=0.25, current_champion=None, baselines=MAJORITY
    )
    assert decision.reason == (
        "accuracy 0.2500 does not beat the majority-class baseline (a) 0.1250 by more than the margin 0.25"
    )


def test_the_configured_metric_is_compared() -> None:
    # Accuracy would win (0.9 > 0.8), macro F1 does not (0.45 < 0.5).
    comparison = _comparison(0.9, champion=ChampionScores("3", {"accuracy": 0.8, "macro_f1": 0.5}))
    decision = decide(comparison, metric="macro_f1", margin=0.0, current_champion="3", baselines=MAJORITY)
    assert (decision.promote, decision.challenger, decision.champion, decision.baseline) == (False, 0.45, 0.5, 0.05)


def test_a_champion_that_could_not_be_scored_stays() -> None:
    champion = ChampionScores("3", None, "its classes (2 classes: x, y) are not this run's (2 classes: a, b)")
    decision = decide(
        _comparison(0.99, champion=champion), metric="accuracy", margin=0.0, current_champion="3", baselines=MAJORITY
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
    decision = decide(comparison, metric="accuracy", margin=0.0, current_champion=current, baselines=MAJORITY)
    assert decision.promote is False
    assert decision.reason.startswith(says)
    assert "dvc repro -f -s evaluate" in decision.reason


def test_tags_hold_the_decision_and_both_numbers() -> None:
    decision = decide(
        _comparison(0.7, champion=_champion(0.8)),
        metric="accuracy",
        margin=0.0,
        current_champion="3",
        baselines=MAJORITY,
    )
    assert decision.tags() == {
        "gate.decision": "not champion",
        "gate.reason": decision.reason,
        "gate.metric": "accuracy",
        "gate.margin": "0.0",
        "gate.challenger_accuracy": "0.7",
        "gate.champion_accuracy": "0.8",
        "gate.baseline_accuracy": "0.1",
        "gate.baseline": "majority",
        "gate.champion_version": "3",
    }


def test_unknown_metric_and_negative_margin_are_refused() -> None:
    with pytest.raises(ValueError, match="the gate compares one of accuracy, macro_f1, not 'loss'"):
        decide(_comparison(0.5), metric="loss", margin=0.0, current_champion=None, baselines=MAJORITY)
    with pytest.raises(ValueError, match="champion margin must be >= 0, got -0.1"):
        decide(_comparison(0.5), metric="accuracy", margin=-0.1, current_champion=None, baselines=MAJORITY)


@pytest.mark.parametrize("champion", [None, _champion(0.8), ChampionScores("2", None, "it failed to load")])
def test_comparison_round_trips_through_json(tmp_path: Path, champion: ChampionScores | None) -> None:
    comparison = _comparison(0.75, champion=champion)
    comparison.write(tmp_path / "reports" / "champion_comparison.json")
    assert Comparison.read(tmp_path / "reports" / "champion_comparison.json") == comparison


def test_a_model_below_the_linear_probe_is_not_champion() -> None:
    # It beats the majority class (0.1) and the pixels (0.6), not logistic regression on its own frozen features.
    comparison = _comparison(0.8, probe=0.85, pixels=0.6)
    decision = decide(comparison, metric="accuracy", margin=0.0, current_champion=None, baselines=ALL)
    assert (decision.promote, decision.baseline, decision.baseline_name) == (False, 0.85, "probe")
    assert decision.reason == "accuracy 0.8000 does not beat the linear probe 0.8500 by more than the margin 0"
    assert (decision.tags()["gate.baseline"], decision.tags()["gate.baseline_accuracy"]) == ("probe", "0.85")


def test_every_unbeaten_baseline_is_named() -> None:
    comparison = _comparison(0.55, probe=0.85, pixels=0.6)
    decision = decide(comparison, metric="accuracy", margin=0.0, current_champion=None, baselines=ALL)
    assert decision.reason == (
        "accuracy 0.5500 does not beat the linear probe 0.8500 or the pixel baseline 0.6000 by more than the margin 0"
    )


def test_beating_every_baseline_names_the_best_one() -> None:
    comparison = _comparison(0.9, probe=0.6, pixels=0.85)
    decision = decide(comparison, metric="accuracy", margin=0.0, current_champion=None, baselines=ALL)
    assert (decision.promote, decision.baseline, decision.baseline_name) == (True, 0.85, "pixels")
    assert decision.reason == (
        "accuracy 0.9000 beats the pixel baseline 0.8500 (best of majority, probe, pixels) by more than the margin 0"
    )
    with_champion = decide(
        _comparison(0.9, champion=_champion(0.8), probe=0.6, pixels=0.85),
        metric="accuracy",
        margin=0.0,
        current_champion="3",
        baselines=ALL,
    )
    assert with_champion.reason == (
        "accuracy 0.9000 beats @champion v3 0.8000 on the same test split and the pixel baseline 0.8500 (best of "
        "majority, probe, pixels) by more than the margin 0"
    )


def test_only_the_listed_baselines_are_the_floor() -> None:
    comparison = _comparison(0.8, probe=0.85, pixels=0.6)
    decision = decide(
        comparison, metric="accuracy", margin=0.0, current_champion=None, baselines=["majority", "pixels"]
    )
    assert (decision.promote, decision.baseline, decision.baseline_name) == (True, 0.6, "pixels")
    # The margin applies to the floor as to the champion: 0.8 - 0.6 is not above 0.25.
    held = decide(comparison, metric="accuracy", margin=0.25, current_champion=None, baselines=["majority", "pixels"])
    assert held.reason == "accuracy 0.8000 does not beat the pixel baseline 0.6000 by more than the margin 0.25"


def test_the_floor_follows_the_metric() -> None:
    # Macro F1 is half the accuracy in these comparisons: the probe's 0.425 against the model's 0.4.
    comparison = _comparison(0.8, probe=0.85)
    decision = decide(comparison, metric="macro_f1", margin=0.0, current_champion=None, baselines=["probe"])
    assert (decision.promote, decision.challenger, decision.baseline) == (False, 0.4, 0.425)


def test_a_listed_baseline_that_evaluate_did_not_score_blocks_the_gate() -> None:
    decision = decide(_comparison(0.99), metric="accuracy", margin=0.0, current_champion=None, baselines=ALL)
    assert decision.promote is False
    assert decision.reason.startswith(
        "not compared: tracking.gate_baselines lists probe, pixels, which evaluate did not score (it scored majority)."
    )


def test_the_gate_needs_a_baseline() -> None:
    with pytest.raises(ValueError, match="the gate needs at least one baseline of majority, probe, pixels"):
        decide(_comparison(0.5), metric="accuracy", margin=0.0, current_champion=None, baselines=[])


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
