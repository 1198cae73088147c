"""The stochastic lot-sizing environment and its exact dynamic programme (online.md §14)."""
from __future__ import annotations

import numpy as np
import pytest

from preftune.rl.lot_sizing import LotSizingEnv, exogenous, feasible_actions, post_decision, small_instance
from preftune.rl.lot_sizing_dp import evaluate, initial_distribution, solve, states


def test_post_decision_pays_setup_and_loses_units_only_on_a_changeover():
    inst = small_instance()
    assert post_decision(inst, (3, 5), (1,), (1,)) == ((7, 5), (1,), 0.0)      # already set up for item 1
    assert post_decision(inst, (3, 5), (1,), (2,)) == ((3, 8), (2,), 2.0)      # changeover: cost 2, lose 1 unit
    assert post_decision(inst, (3, 5), (2,), (0,)) == ((3, 5), (0,), 0.0)      # idle drops the setup
    assert post_decision(inst, (3, 5), (0,), (2,)) == ((3, 8), (2,), 2.0)      # so the next production pays again


def test_exogenous_loses_unmet_demand_caps_and_holds():
    inst = small_instance()
    inventory, lost, holding = exogenous(inst, (2, 14), (4, 1))
    assert inventory == (0, 10) and lost == pytest.approx(6.0) and holding == pytest.approx(1.0)


def test_environment_episode_has_the_horizon_and_reward_is_minus_costs():
    env = LotSizingEnv(small_instance(), seed=3)
    observation = env.reset()
    assert observation.shape == (env.observation_size,) == (4,)
    total, done, steps = 0.0, False, 0
    while not done:
        observation, reward, done, info = env.step((1,))
        assert reward == pytest.approx(-(info["setup_costs"] + info["lost_sales"] + info["holding_costs"]))
        total, steps = total + reward, steps + 1
    assert steps == 5 and observation[-1] == 1.0
    with pytest.raises(RuntimeError, match="call reset"):
        env.step((1,))
    with pytest.raises(ValueError, match="cannot make"):
        post_decision(small_instance(production=((4, 0),)), (0, 0), (1,), (2,))


def test_reset_draws_the_documented_initial_distribution():
    env = LotSizingEnv(small_instance(), seed=0)
    seen = {env.decode(env.reset()) for _ in range(3000)}
    support = {s for s, _ in initial_distribution(env.instance)}
    assert seen <= support and len(seen) > 0.9 * len(support)
    assert sum(p for _, p in initial_distribution(env.instance)) == pytest.approx(1.0)


def test_dp_optimum_beats_simple_policies_and_evaluate_agrees_with_solve():
    inst = small_instance()
    solution = solve(inst)
    assert len(states(inst)) == 11 * 11 * 3
    assert evaluate(inst, lambda t, s: {solution.action(t, s): 1.0}) == pytest.approx(solution.optimum, abs=1e-12)
    uniform = {a: 1 / 3 for a in feasible_actions(inst)}
    assert evaluate(inst, lambda t, s: uniform) < solution.optimum - 5
    assert evaluate(inst, lambda t, s: {(0,): 1.0}) < solution.optimum - 10
    assert -7.2 < solution.optimum < -7.0  # -7.10195 when written


def test_environment_checks_of_pdppo_pass():
    from preftune.rl.lot_sizing_checks import environment_checks

    assert all(r.passed for r in environment_checks())
