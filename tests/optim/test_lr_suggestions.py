"""The suggestion rules of the LR range test, on curves made by hand: the smoothing, steepest and valley."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from pipeline.optim.lr_suggestions import smooth, suggest_steepest, suggest_valley
from tests.optim.conftest import closed_form_smoothing

# 61 LRs from 1e-6 to 1, ten per decade: index 10 * (d + 6) is 10**d.
RATES = [float(rate) for rate in np.logspace(-6, 0, 61)]
LOG_RATES = np.log10(RATES)


def test_module_imports_neither_keras_nor_tensorflow() -> None:
    code = "import sys, pipeline.optim.lr_suggestions; print(sorted({'keras', 'tensorflow'} & set(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_smoothing_matches_the_closed_form_of_the_corrected_average() -> None:
    losses = [2.0, 1.0, 4.0, 3.0, 0.5, 2.5]
    for beta in (0.0, 0.9, 0.98):
        np.testing.assert_allclose(smooth(losses, beta=beta), closed_form_smoothing(losses, beta), rtol=1e-12)
    # The correction makes the first point the first loss, not (1 - beta) times it.
    assert smooth(losses, beta=0.9)[0] == 2.0
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\); received 1.0"):
        smooth(losses, beta=1.0)


@pytest.mark.parametrize("centre", [-4, -3, -2])
def test_steepest_is_the_inflection_of_a_smooth_step(centre: int) -> None:
    # loss = 1 - 0.4 tanh(log10 lr - centre): its slope against log lr is steepest exactly at 10**centre.
    losses = 1.0 - 0.4 * np.tanh(LOG_RATES - centre)
    assert suggest_steepest(RATES, losses) == RATES[10 * (centre + 6)]


def test_steepest_ignores_the_warm_up_and_the_one_sided_last_point() -> None:
    # A cliff in the first tenth (the average settling) and the fastest fall at the very end: both left out.
    losses = 1.0 - 0.4 * np.tanh(LOG_RATES + 3)
    losses[:3] += [3.0, 1.5, 0.0]
    falling_end = 2.0 - np.exp(3 * LOG_RATES)  # monotone; the fall keeps accelerating up to the last point
    assert suggest_steepest(RATES, falling_end) == RATES[-2]
    assert suggest_steepest(RATES, losses) == RATES[30]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_ends_the_curve_for_both_rules(bad: float) -> None:
    step = list(1.0 - 0.4 * np.tanh(LOG_RATES + 3))
    bowl = list((LOG_RATES + 2) ** 2)  # falls over points 0..40, then rises
    step[45:] = [bad] * 16
    bowl[30:] = [bad, *bowl[31:]]
    assert suggest_steepest(RATES, step) == RATES[30]
    # Cut at point 30: the fall is 0..29 and two thirds down it is 19 (it would be 27 across the gap).
    assert suggest_valley(RATES, bowl) == RATES[19]


def test_valley_is_two_thirds_down_the_longest_fall() -> None:
    assert suggest_valley(RATES, (LOG_RATES + 2) ** 2) == RATES[27]  # fall 0..40: 0 + round(80 / 3)
    rates = [10.0**exponent for exponent in range(-8, 2)]
    # Falls 1..7 (the longest run, past a shorter one 0..0), then rises: 1 + round(12 / 3) = 5.
    assert suggest_valley(rates, [2.0, 2.1, 1.9, 1.6, 1.2, 0.9, 0.7, 0.6, 0.8, 3.0]) == 1e-3
    # A monotone fall: the whole curve is the valley, round(18 / 3) = 6.
    assert suggest_valley(rates, [10.0 - index for index in range(10)]) == rates[6]


def test_rules_refuse_curves_they_cannot_read() -> None:
    with pytest.raises(
        ValueError, match="has 3 finite points before it ends or diverges; a suggestion needs at least 5"
    ):
        suggest_valley([1e-3, 1e-2, 1e-1], [1.0, 0.5, 0.4])
    with pytest.raises(ValueError, match="smoothed_losses has 2 finite points"):
        suggest_steepest(RATES[:8], [1.0, 0.9, math.nan, 0.5, 0.4, 0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="same length; received 61 and 3"):
        suggest_steepest(RATES, [1.0, 0.5, 0.4])
    with pytest.raises(ValueError, match=r"positive and increasing; received \[0.1, 0.01,"):
        suggest_valley([0.1, 0.01, 0.001, 0.0001, 1e-05], [5.0, 4.0, 3.0, 2.0, 1.0])
    rising = list(np.linspace(1.0, 2.0, 61))
    with pytest.raises(ValueError, match="never falls between LR 3.98e-06 and 0.794"):
        suggest_steepest(RATES, rising)
    with pytest.raises(ValueError, match="never falls from one point to the next"):
        suggest_valley(RATES, rising)
