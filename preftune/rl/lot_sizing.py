"""The stochastic discrete lot-sizing environment of PDPPO (online.md §14; official `SimplePlant`), pure numpy.

I items, M machines, horizon T. State: inventory levels (one per item) and machine setups (0 = idle,
i = set up for item i). Action: one item (or 0, idle) per machine. A step has two parts:

1. post-decision, deterministic (`post_decision`): a machine told to make item i pays the setup cost
   c_s[m][i] and loses l_s[m][i] units if it was not already set up for i, then adds prod[m][i] - loss
   to item i's inventory; an idle machine drops its setup (its next production pays setup again);
2. exogenous (`exogenous`): binomial demand d_i ~ Bin(n, p) is served from inventory; unmet demand
   costs c_ls[i] per unit and is lost; inventory above Imax_i is discarded (after demand, as the
   official code); holding costs h_i per unit left.

Reward = -(setup + lost-sales + holding costs). Episodes last T steps; a reset draws inventories
uniformly from 0..Imax_i - 1 and each machine's setup among the items it can make, as the official
environment. The observation is (inventory, setup) and, by default, the time t/T: the official code
leaves t out; on a short horizon the optimal action depends on the time left, so we include it [R].
The class has gym's reset/step interface without depending on gym, so any RL code can drive it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class LotSizing:
    """One instance: production[m][i] units per step (0: machine m cannot make item i), costs, capacities."""

    production: tuple[tuple[int, ...], ...]
    setup_costs: tuple[tuple[float, ...], ...]
    setup_loss: tuple[tuple[int, ...], ...]
    holding_costs: tuple[float, ...]
    lost_sales_costs: tuple[float, ...]
    max_inventory: tuple[int, ...]
    demand_n: int = 4
    demand_p: float = 0.4
    horizon: int = 5

    @property
    def n_items(self) -> int:
        return len(self.holding_costs)

    @property
    def n_machines(self) -> int:
        return len(self.production)

    @property
    def action_sizes(self) -> list[int]:
        """MultiDiscrete sizes: I + 1 choices (idle or an item) per machine."""
        return [self.n_items + 1] * self.n_machines

    def demand_distribution(self) -> list[tuple[tuple[int, ...], float]]:
        """Every demand vector with its probability (independent binomials per item)."""
        from math import comb

        single = [comb(self.demand_n, k) * self.demand_p ** k * (1 - self.demand_p) ** (self.demand_n - k)
                  for k in range(self.demand_n + 1)]
        out = [((), 1.0)]
        for _ in range(self.n_items):
            out = [(d + (k,), p * q) for d, p in out for k, q in enumerate(single) if q > 0]
        return out


def small_instance(**overrides) -> LotSizing:
    """online.md §14's small instance: I = 2, M = 1, prod = [[4, 4]], Imax = 10, h = .1, c_ls = 3, c_s = 2, l_s = 1,
    d ~ Bin(4, .4), T = 5 (small enough for the exact dynamic programme of lot_sizing_dp.py)."""
    base = dict(production=((4, 4),), setup_costs=((2.0, 2.0),), setup_loss=((1, 1),), holding_costs=(0.1, 0.1),
                lost_sales_costs=(3.0, 3.0), max_inventory=(10, 10), demand_n=4, demand_p=0.4, horizon=5)
    return LotSizing(**{**base, **overrides})


def post_decision(instance: LotSizing, inventory: Sequence[int], setup: Sequence[int],
                  action: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...], float]:
    """The deterministic half of a step: (inventory after production, new setups, setup cost paid)."""
    inventory, setup, cost = list(inventory), list(setup), 0.0
    for m, item in enumerate(action):
        item = int(item)
        if item == 0:
            setup[m] = 0
            continue
        if instance.production[m][item - 1] == 0:
            raise ValueError(f"machine {m} cannot make item {item}")
        loss = 0
        if setup[m] != item:
            cost += instance.setup_costs[m][item - 1]
            loss = instance.setup_loss[m][item - 1]
        setup[m] = item
        inventory[item - 1] += instance.production[m][item - 1] - loss
    return tuple(inventory), tuple(setup), cost


def exogenous(instance: LotSizing, inventory: Sequence[int], demand: Sequence[int]) -> tuple[tuple[int, ...], float, float]:
    """The random half of a step: (next inventory, lost-sales cost, holding cost) for a demand vector."""
    out, lost, holding = [], 0.0, 0.0
    for i, (level, d) in enumerate(zip(inventory, demand)):
        level -= d
        if level < 0:
            lost += -level * instance.lost_sales_costs[i]
            level = 0
        level = min(level, instance.max_inventory[i])
        holding += level * instance.holding_costs[i]
        out.append(level)
    return tuple(out), lost, holding


def feasible_actions(instance: LotSizing) -> list[tuple[int, ...]]:
    """Every joint action whose machines only make items they can make."""
    per_machine = [[0] + [i + 1 for i, units in enumerate(row) if units > 0] for row in instance.production]
    actions = [()]
    for choices in per_machine:
        actions = [a + (c,) for a in actions for c in choices]
    return actions


class LotSizingEnv:
    """reset(seed) -> observation; step(action) -> (observation, reward, done, info), as gym environments."""

    def __init__(self, instance: LotSizing | None = None, observe_time: bool = True, seed: int | None = None):
        self.instance = instance or small_instance()
        self.observe_time = observe_time
        self.rng = np.random.default_rng(seed)
        self.inventory: tuple[int, ...] = (0,) * self.instance.n_items
        self.setup: tuple[int, ...] = (0,) * self.instance.n_machines
        self.t = 0

    @property
    def observation_size(self) -> int:
        return self.instance.n_items + self.instance.n_machines + int(self.observe_time)

    def observation(self, inventory=None, setup=None, t=None) -> np.ndarray:
        """(inventory, setup[, t/T]) as float32; any part may be given to encode another (e.g. post-decision) state."""
        parts = [np.asarray(self.inventory if inventory is None else inventory, dtype=np.float32),
                 np.asarray(self.setup if setup is None else setup, dtype=np.float32)]
        if self.observe_time:
            parts.append(np.asarray([(self.t if t is None else t) / self.instance.horizon], dtype=np.float32))
        return np.concatenate(parts)

    def decode(self, observation: Sequence[float]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(inventory, setup) back from an observation (the agent's view of the state)."""
        n, m = self.instance.n_items, self.instance.n_machines
        values = [int(round(float(x))) for x in observation]
        return tuple(values[:n]), tuple(values[n:n + m])

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        inst = self.instance
        self.inventory = tuple(int(self.rng.integers(0, cap)) for cap in inst.max_inventory)
        self.setup = tuple(int(self.rng.choice([i + 1 for i, units in enumerate(row) if units > 0]))
                           for row in inst.production)
        self.t = 0
        return self.observation()

    def step(self, action: Sequence[int]) -> tuple[np.ndarray, float, bool, dict]:
        if self.t >= self.instance.horizon:
            raise RuntimeError("the episode is over: call reset()")
        after, setup, setup_cost = post_decision(self.instance, self.inventory, self.setup, action)
        demand = tuple(int(d) for d in self.rng.binomial(self.instance.demand_n, self.instance.demand_p,
                                                          size=self.instance.n_items))
        self.inventory, lost, holding = exogenous(self.instance, after, demand)
        self.setup = setup
        self.t += 1
        info = {"post_decision": (after, setup), "demand": demand, "setup_costs": setup_cost, "lost_sales": lost,
                "holding_costs": holding}
        return self.observation(), -(setup_cost + lost + holding), self.t == self.instance.horizon, info
