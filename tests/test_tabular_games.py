"""Equilibria of the preference game against the numbers of online.md §16."""
import pytest
import torch

from preftune.tabular import (PreferenceModel, bradley_terry_fit, dpo_optimal_policy, duality_gap, exploitability,
                              kl_divergence, nash_equilibrium, nash_mp_step, regularised_equilibrium)

SECTION16 = PreferenceModel.from_matrix([[0.5, 0.9, 0.4], [0.1, 0.5, 0.7], [0.6, 0.3, 0.5]])
REF = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)


def test_nash_of_rock_paper_scissors_is_uniform():
    pi = nash_equilibrium(PreferenceModel.rock_paper_scissors())
    assert torch.allclose(pi, torch.full((3,), 1 / 3, dtype=torch.float64), atol=1e-12)


def test_nash_of_section16_matrix_is_two_one_four_sevenths():
    pi = nash_equilibrium(SECTION16)
    assert torch.allclose(pi, torch.tensor([2 / 7, 1 / 7, 4 / 7], dtype=torch.float64), atol=1e-12)
    assert exploitability(SECTION16, pi) == pytest.approx(0, abs=1e-12)
    # A * pi = 0 for the skew-symmetric A = P - 1/2: every response ties with the equilibrium.
    assert torch.allclose(SECTION16.win_rate(pi), torch.full((3,), 0.5, dtype=torch.float64), atol=1e-12)


def test_nash_of_transitive_preferences_is_the_condorcet_winner():
    P = PreferenceModel.bradley_terry([0.2, 1.0, -0.4])
    assert torch.allclose(nash_equilibrium(P), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("beta, expected, unregularised_exploitability",
                         [(0.1, (0.7137, 0.0373, 0.2490), 0.064), (0.05, (0.5454, 0.0333, 0.4213), None)])
def test_regularised_equilibrium_of_section16(beta, expected, unregularised_exploitability):
    pi = regularised_equilibrium(SECTION16, REF, beta)
    assert torch.allclose(pi, torch.tensor(expected, dtype=torch.float64), atol=5e-5)
    # The defining fixed point pi ~ pi_ref exp(P(y > pi)/beta), to the iteration's tolerance.
    fixed_point = torch.softmax(REF.log() + SECTION16.win_rate(pi) / beta, dim=0)
    assert torch.allclose(pi, fixed_point, atol=1e-11)
    assert exploitability(SECTION16, pi, beta, REF) == pytest.approx(0, abs=1e-12)
    if unregularised_exploitability is not None:
        assert exploitability(SECTION16, pi) == pytest.approx(unregularised_exploitability, abs=5e-4)


def test_regularised_exploitability_is_positive_away_from_equilibrium_and_gap_is_twice_it():
    for policy in (REF, torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)):
        gap = duality_gap(SECTION16, policy, 0.1, REF)
        assert gap > 1e-3 and gap == pytest.approx(2 * exploitability(SECTION16, policy, 0.1, REF))
    assert exploitability(SECTION16, torch.tensor([1.0, 0, 0], dtype=torch.float64)) == pytest.approx(0.1)


def test_nash_mp_contracts_faster_than_its_bound():
    """online.md §5b: KL(pi* || pi_k) shrinks per iteration by about 0.69 at step 2, beta 0.1, below 1/(1 + 0.2)."""
    beta, step = 0.1, 2.0
    target = regularised_equilibrium(SECTION16, REF, beta)
    log_pi, kls = REF.log(), []
    for _ in range(20):
        log_pi = nash_mp_step(SECTION16, log_pi, REF.log(), beta, step)
        kls.append(kl_divergence(target, log_pi.exp()))
    ratio = kls[-1] / kls[-2]
    assert ratio == pytest.approx(0.69, abs=0.02) and ratio < 1 / (1 + step * beta)


def test_bradley_terry_fit_recovers_rewards_and_fits_section16():
    r = torch.tensor([0.9, -0.6, -0.3], dtype=torch.float64)
    assert torch.allclose(bradley_terry_fit(PreferenceModel.bradley_terry(r)), r - r.mean(), atol=1e-10)
    assert torch.allclose(bradley_terry_fit(SECTION16), torch.tensor([0.41, -0.28, -0.14], dtype=torch.float64),
                          atol=0.01)


def test_dpo_on_the_bt_fit_of_an_intransitive_matrix_is_exploitable():
    """online.md §16: DPO's optimum on the BT fit collapses on item 0 with exploitability about .10,
    against .064 for the regularised equilibrium at the same beta."""
    pi = dpo_optimal_policy(REF, bradley_terry_fit(SECTION16), 0.1)
    assert pi[0] > 0.99
    assert exploitability(SECTION16, pi) == pytest.approx(0.10, abs=0.005)
