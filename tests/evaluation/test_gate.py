"""The champion gate's rule: beat max(champion on the same split, majority baseline) by more than the margin."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.evaluation.gate import ChampionScores, Comparison, GateDecision, decide


def _comparison(challenger: float, baseline: float = 0.1, champion: ChampionScores | None = None) -> Comparison:
    return Comparison(
        class_names=["a", "b"],
        challenger={"accuracy": challenger, "macro_f1": challenger / 2, "loss": 0.5, "examples": 40},
        baseline={"accuracy": baseline, "macro_f1": baseline / 2},
        majority_class="a",
        champion=champion,
    )


def _champion(accuracy: float, version: str = "3") -> ChampionScores:
    return ChampionScores(version, {"accuracy": accuracy, "macro_f1": accuracy / 2, "loss": 0.7, "examples": 40})


def test_an_empty_registry_takes_a_model_that_beats_the_baseline() -> None:
    decision = decide(_comparison(0.75), metric="accuracy", margin=0.0, current_champion=None)
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
    decision = decide(_comparison(0.1), metric="accuracy", margin=0.0, current_champion=None)
    assert decision.promote is False
    assert decision.reason == (
        "accuracy 0.1000 does not beat the majority-class baseline (a) 0.1000 by more than the margin 0"
    )


def test_the_challenger_must_beat_the_champion_scored_on_the_same_split() -> None:
    worse = decide(_comparison(0.7, champion=_champion(0.8)), metric="accuracy", margin=0.0, current_champion="3")
    assert (worse.promote, worse.champion, worse.champion_version) == (False, 0.8, "3")
    assert worse.reason == (
        "accuracy 0.7000 does not beat @champion v3 0.8000 on the same test split by more than the margin 0"
    )
    better = decide(_comparison(0.9, champion=_champion(0.8)), metric="accuracy", margin=0.0, current_champion="3")
    assert better.promote is True
    assert better.reason == (
        "accuracy 0.9000 beats @champion v3 0.8000 on the same test split and the majority-class baseline (a) "
        "0.1000 by more than the margin 0"
    )


def test_a_tie_keeps_the_champion() -> None:
    tie = decide(_comparison(0.8, champion=_champion(0.8)), metric="accuracy", margin=0.0, current_champion="3")
    assert tie.promote is False


def test_the_margin_is_respected() -> None:
    comparison = _comparison(0.875, champion=_champion(0.75))
    assert decide(comparison, metric="accuracy", margin=0.125, current_champion="3").promote is False
    assert decide(comparison, metric="accuracy", margin=0.0625, current_champion="3").promote is True
    decision = decide(_comparison(0.25, baseline=0.125), metric="accuracy", margin=0.25, current_champion=None)
    assert decision.reason == (
        "accuracy 0.2500 does not beat the majority-class baseline (a) 0.1250 by more than the margin 0.25"
    )


def test_the_configured_metric_is_compared() -> None:
    # Accuracy would win (0.9 > 0.8), macro F1 does not (0.45 < 0.5).
    comparison = _comparison(0.9, champion=ChampionScores("3", {"accuracy": 0.8, "macro_f1": 0.5}))
    decision = decide(comparison, metric="macro_f1", margin=0.0, current_champion="3")
    assert (decision.promote, decision.challenger, decision.champion, decision.baseline) == (False, 0.45, 0.5, 0.05)


def test_a_champion_that_could_not_be_scored_stays() -> None:
    champion = ChampionScores("3", None, "its classes (2 classes: x, y) are not this run's (2 classes: a, b)")
    decision = decide(_comparison(0.99, champion=champion), metric="accuracy", margin=0.0, current_champion="3")
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
    decision = decide(comparison, metric="accuracy", margin=0.0, current_champion=current)
    assert decision.promote is False
    assert decision.reason.startswith(says)
    assert "dvc repro -f -s evaluate" in decision.reason


def test_tags_hold_the_decision_and_both_numbers() -> None:
    decision = decide(_comparison(0.7, champion=_champion(0.8)), metric="accuracy", margin=0.0, current_champion="3")
    assert decision.tags() == {
        "gate.decision": "not champion",
        "gate.reason": decision.reason,
        "gate.metric": "accuracy",
        "gate.margin": "0.0",
        "gate.challenger_accuracy": "0.7",
        "gate.champion_accuracy": "0.8",
        "gate.baseline_accuracy": "0.1",
        "gate.champion_version": "3",
    }


def test_unknown_metric_and_negative_margin_are_refused() -> None:
    with pytest.raises(ValueError, match="the gate compares one of accuracy, macro_f1, not 'loss'"):
        decide(_comparison(0.5), metric="loss", margin=0.0, current_champion=None)
    with pytest.raises(ValueError, match="champion margin must be >= 0, got -0.1"):
        decide(_comparison(0.5), metric="accuracy", margin=-0.1, current_champion=None)


@pytest.mark.parametrize("champion", [None, _champion(0.8), ChampionScores("2", None, "it failed to load")])
def test_comparison_round_trips_through_json(tmp_path: Path, champion: ChampionScores | None) -> None:
    comparison = _comparison(0.75, champion=champion)
    comparison.write(tmp_path / "reports" / "champion_comparison.json")
    assert Comparison.read(tmp_path / "reports" / "champion_comparison.json") == comparison
