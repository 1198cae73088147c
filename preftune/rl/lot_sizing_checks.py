"""The environment half of PDPPO's exact check (online.md §14 Tests (i)-(iii)): the agent's post-decision
model, the dynamic-programming optimum against simulation, and V^x against V(s') under deterministic demand."""
from __future__ import annotations

import math

import numpy as np

from preftune.methods.registry import CheckResult
from preftune.rl.lot_sizing import LotSizingEnv, exogenous, feasible_actions, post_decision, small_instance
from preftune.rl.lot_sizing_dp import solve


def post_decision_mismatches(steps: int = 500, seed: int = 0) -> int:
    """Random steps where the agent's s^x (from its observation and action) differs from the environment's."""
    env = LotSizingEnv(small_instance(), seed=seed)
    rng = np.random.default_rng(seed + 1)
    actions = feasible_actions(env.instance)
    mismatches, observation = 0, env.reset()
    for _ in range(steps):
        action = actions[int(rng.integers(len(actions)))]
        inventory, setup = env.decode(observation)
        agent = post_decision(env.instance, inventory, setup, action)[:2]
        observation, _, done, info = env.step(action)
        mismatches += agent != info["post_decision"]
        if done:
            observation = env.reset()
    return mismatches


def simulated_return(solution, episodes: int = 3000, seed: int = 0) -> tuple[float, float]:
    """Mean and standard error of the undiscounted return of the DP policy over simulated episodes."""
    env = LotSizingEnv(small_instance(), seed=seed)
    totals = np.empty(episodes)
    for e in range(episodes):
        observation, total, done = env.reset(), 0.0, False
        while not done:
            action = solution.action(env.t, env.decode(observation))
            observation, reward, done, _ = env.step(action)
            total += reward
        totals[e] = total
    return float(totals.mean()), float(totals.std() / math.sqrt(episodes))


def post_value_gap(instance, solution=None) -> float:
    """Largest |V^x_t(s^x) - [exogenous reward + V_{t+1}(s')]| over post-decision states, demand fixed at its
    mean (n p rounded): zero when demand is deterministic, the expectation's effect otherwise."""
    solution = solution or solve(instance)
    demand = (round(instance.demand_n * instance.demand_p),) * instance.n_items
    worst = 0.0
    for t in range(instance.horizon):
        following = solution.values[t + 1] if t + 1 < instance.horizon else {}
        for (inventory, setup), post in solution.post_values[t].items():
            nxt, lost, holding = exogenous(instance, inventory, demand)
            worst = max(worst, abs(post - (-lost - holding + following.get((nxt, setup), 0.0))))
    return worst


def environment_checks() -> list[CheckResult]:
    solution = solve(small_instance())
    mean, error = simulated_return(solution)
    results = [
        CheckResult("pdppo", "agent's post-decision state != the environment's (of 500 random steps)", 0.0,
                    post_decision_mismatches(), 0.0),
        CheckResult("pdppo", f"DP optimum of the small instance ({solution.optimum:.4f}) vs its policy simulated, "
                             "in standard errors", 4.0, abs(mean - solution.optimum) / error, 0.0, bound="<="),
        CheckResult("pdppo", "deterministic demand (p = 1): V^x(s^x) = exogenous reward + V(s')", 0.0,
                    post_value_gap(small_instance(demand_p=1.0)), 1e-12),
        CheckResult("pdppo", "Bin(4, .4) demand: V^x(s^x) differs from the same at the mean demand", 1e-3,
                    post_value_gap(small_instance(), solution), 0.0, bound=">="),
    ]
    return results
