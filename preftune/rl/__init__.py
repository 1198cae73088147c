"""Reinforcement-learning hybrids of the catalogue (online.md §9-14): multi-objective GRPO, RTO, DAPO,
OREO, MCTS-DPO and PDPPO, with the PPO and GRPO they build on.

Two layers live in this package (docs/rl.md):

- pure parts, on the methods layer, importing nothing above it: `methods/` (the losses, registered
  in the same registry as preftune/methods with family "rl"), `advantages.py` (group-normalised
  advantages, GAE, Monte-Carlo returns and step values), `tree.py` (MCTS nodes, PUCT, backup,
  sibling pairs), `segment.py` (reasoning steps in token ids), `lot_sizing.py` (the stochastic
  lot-sizing environment) and `lot_sizing_dp.py` (its exact dynamic-programming optimum);
- the rest, on the loops' layer: rollouts, value models, the `preftune rl` loop and its per-method
  data makers, value-guided search, and the actor-critic training on the lot-sizing environment.

This file imports nothing, so importing a pure module never pulls in the loops.
"""
