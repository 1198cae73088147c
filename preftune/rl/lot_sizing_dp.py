"""Exact dynamic programming on a small lot-sizing instance (pure): the optimal policy and the exact
expected return of any policy, stochastic or not.

Backward induction over t = T-1 .. 0 with the post-decision split of online.md §14:
    V^x_t(s^x) = E_d[ -lost(s^x, d) - holding(s^x, d) + V_{t+1}(s'(s^x, d)) ],
    Q_t(s, a)  = -setup_cost(s, a) + V^x_t(s^x(s, a)),      V_t(s) = max_a Q_t(s, a),   V_T = 0,
undiscounted, as the costs of the paper's tables are. The optimum of the instance is E_{s_0}[V_0(s_0)]
over the environment's reset distribution.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

from preftune.rl.lot_sizing import LotSizing, exogenous, feasible_actions, post_decision

State = tuple[tuple[int, ...], tuple[int, ...]]  # (inventory, setup)


def states(instance: LotSizing) -> list[State]:
    """Every state the environment can be in after a step: inventory 0..Imax_i, any setup 0..I."""
    levels = [range(cap + 1) for cap in instance.max_inventory]
    setups = [range(instance.n_items + 1)] * instance.n_machines
    return [(inv, setup) for inv in itertools.product(*levels) for setup in itertools.product(*setups)]


def initial_distribution(instance: LotSizing) -> list[tuple[State, float]]:
    """The reset distribution: inventories uniform on 0..Imax_i - 1, setups uniform over producible items."""
    levels = [range(cap) for cap in instance.max_inventory]
    choices = [[i + 1 for i, units in enumerate(row) if units > 0] for row in instance.production]
    weight = 1.0
    for options in [*levels, *choices]:
        weight /= len(options)
    return [((inv, setup), weight) for inv in itertools.product(*levels) for setup in itertools.product(*choices)]


@dataclass
class Solution:
    """values[t][s] = V_t(s); post_values[t][s^x] = V^x_t(s^x); policy[t][s] = an optimal action."""

    values: list[dict] = field(default_factory=list)
    post_values: list[dict] = field(default_factory=list)
    policy: list[dict] = field(default_factory=list)
    optimum: float = 0.0  # E over the reset distribution of V_0

    def action(self, t: int, state: State) -> tuple[int, ...]:
        return self.policy[t][state]


class _Backward:
    """Shared backward induction: the post-decision value is computed once per (t, s^x) and cached."""

    def __init__(self, instance: LotSizing):
        self.instance, self.demands = instance, instance.demand_distribution()
        self.actions = feasible_actions(instance)

    def post_value(self, inventory: tuple[int, ...], setup: tuple[int, ...], following: dict, cache: dict) -> float:
        key = (inventory, setup)
        if key not in cache:
            total = 0.0
            for demand, p in self.demands:
                nxt, lost, holding = exogenous(self.instance, inventory, demand)
                total += p * (-lost - holding + following.get((nxt, setup), 0.0))
            cache[key] = total
        return cache[key]

    def q_values(self, state: State, following: dict, cache: dict) -> dict:
        out = {}
        for action in self.actions:
            inventory, setup, cost = post_decision(self.instance, *state, action)
            out[action] = -cost + self.post_value(inventory, setup, following, cache)
        return out


def solve(instance: LotSizing) -> Solution:
    """The optimal values and policy of `instance` by backward induction (ties: the first feasible action)."""
    backward, every = _Backward(instance), states(instance)
    solution, following = Solution(), {}
    for _ in range(instance.horizon):
        cache, values, policy = {}, {}, {}
        for state in every:
            q = backward.q_values(state, following, cache)
            policy[state] = max(q, key=q.get)
            values[state] = q[policy[state]]
        solution.values.insert(0, values)
        solution.post_values.insert(0, cache)
        solution.policy.insert(0, policy)
        following = values
    solution.optimum = sum(p * solution.values[0][s] for s, p in initial_distribution(instance))
    return solution


def evaluate(instance: LotSizing, probabilities: Callable[[int, State], dict]) -> float:
    """Exact expected total reward of a policy from the reset distribution: probabilities(t, state)
    gives {action: probability} (a deterministic policy puts 1 on one action)."""
    backward, every = _Backward(instance), states(instance)
    following: dict = {}
    for t in reversed(range(instance.horizon)):
        cache, values = {}, {}
        for state in every:
            q = backward.q_values(state, following, cache)
            values[state] = sum(p * q[tuple(a)] for a, p in probabilities(t, state).items())
        following = values
    return sum(p * following[s] for s, p in initial_distribution(instance))
