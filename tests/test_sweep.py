"""The over-optimisation curve of the KL sweep (eval/sweep.py, offline.md §13)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from preftune.eval.sweep import fit_overopt_curve, overopt_curve


@pytest.mark.parametrize("alpha, beta", [(0.5, 0.2), (1.2, 0.6), (0.05, 0.02)])
def test_fit_recovers_known_parameters_from_noisy_points(alpha, beta):
    rng = np.random.default_rng(0)
    d = np.linspace(0.05, 3 * math.exp(alpha / beta - 1), 60)
    reward = overopt_curve(d, alpha, beta) + rng.normal(0.0, 0.01 * beta * math.exp(alpha / beta - 1), d.shape)
    fit = fit_overopt_curve(d, reward)
    assert fit.alpha == pytest.approx(alpha, rel=0.05) and fit.beta == pytest.approx(beta, rel=0.05)
    assert fit.d_star == pytest.approx(math.exp(alpha / beta - 1), rel=0.05)


def test_analytic_peak_is_the_numeric_argmax_of_the_fitted_curve():
    rng = np.random.default_rng(1)
    d = rng.uniform(0.0, 6.0, 40)
    fit = fit_overopt_curve(d, overopt_curve(d, 0.8, 0.5) + rng.normal(0, 0.02, d.shape))
    grid = np.linspace(1e-6, 20, 2_000_001)
    values = overopt_curve(grid, fit.alpha, fit.beta)
    assert fit.d_star == pytest.approx(grid[np.argmax(values)], abs=1e-4)
    assert fit.r_star == pytest.approx(values.max(), abs=1e-9)
    assert fit.r_star == pytest.approx(fit.beta * fit.d_star)


def test_exact_points_fit_exactly_and_d_zero_is_the_origin():
    d = np.array([0.0, 0.5, 1.0, 2.0, 4.0])
    fit = fit_overopt_curve(d, overopt_curve(d, 0.3, 0.1))
    assert (fit.alpha, fit.beta) == pytest.approx((0.3, 0.1), abs=1e-12) and fit.rmse < 1e-12
    assert overopt_curve(np.array([0.0]), 1.0, 1.0)[0] == 0.0


def test_a_curve_still_rising_has_no_interior_peak():
    d = np.linspace(0.1, 3, 20)
    fit = fit_overopt_curve(d, 0.4 * d + 0.1 * d * np.log(d))  # beta = -0.1
    assert fit.beta == pytest.approx(-0.1) and fit.d_star is None and fit.r_star is None


def test_too_few_points_is_an_error():
    with pytest.raises(ValueError, match="two points"):
        fit_overopt_curve([0.0, 1.0], [0.0, 0.2])
