"""BCO: binary classifier optimisation for LLM alignment (Jung et al., ACL 2025, arXiv 2404.04656), paired form."""
from __future__ import annotations

import torch

from preftune.methods.common import log_ratios, neg_log_sigmoid
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.methods.state import RunningMean
from preftune.records import Logps, MethodOutput, pairwise_metrics


@register(
    name="bco_pair", seed=None, family="offline-pairwise", input_kind="pairwise", needs_reference=True,
    status="stable", state=RunningMean,
    paper="Jung et al. 2024, Binary Classifier Optimization for Large Language Model Alignment, arXiv 2404.04656",
    taxonomy=taxonomy(["pairwise", "binary-feedback"], ["offline"], ["fixed-reference", "reward-shift"]),
)
def bco_pair(policy: Logps, reference: Logps, *, beta: float = 0.1, reward_shift: float | None = None,
             state: RunningMean | None = None) -> MethodOutput:
    """Binary classifier on the implicit reward r = beta * Delta: chosen is class 1, rejected class 0.

    L = l(r_w - delta) + l(-(r_l - delta)),  l(z) = -log sigmoid(z)  (the paper's BCE loss with its
    reward shift delta). The paper's Theorem 1: for every delta this upper-bounds DPO's loss
    l(r_w - r_l), since sigmoid(a) sigmoid(b) <= sigmoid(a + b); the shift tightens the bound.
    delta is the running mean of all rewards (chosen and rejected) seen in training, detached:
    - inside a training objective, `state` is a RunningMean kept across batches and processes and
      checkpointed (methods/state.py); the current batch is added before it is used;
    - called without a state (unit tests, the tabular engine), delta is this batch's mean reward;
    - reward_shift: a fixed delta instead (0 gives the plain binary cross-entropy, before the shift).
    beta: 0.1 (the value of public implementations; the paper's own could not be read). Metrics: reward_shift (delta) besides margin/accuracy. Shapes: (B, 2) in, (B,) loss.
    """
    rewards = beta * log_ratios(policy, reference)
    if reward_shift is not None:
        shift = torch.full((), reward_shift, dtype=rewards.dtype, device=rewards.device)
    elif state is not None:
        shift = state.update(rewards)
    else:
        shift = rewards.detach().mean()
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    loss = neg_log_sigmoid(chosen - shift) + neg_log_sigmoid(shift - rejected)
    metrics = pairwise_metrics(chosen, rejected)
    metrics["reward_shift"] = shift.expand_as(chosen)
    return MethodOutput(loss, rewards, metrics)


@tabular_check("bco_pair")
def bco_pair_tabular_check(fn=bco_pair):
    """Two exact properties on the free pair (pair_checks: both log-ratios free), labelled 0 > 1 w.p. p:

    1. Fixed shift delta: the expected loss separates into two logistic losses with soft label p, so
       beta Delta_0* = delta + logit(p) and beta Delta_1* = delta - logit(p)
       (pair_checks.bco_pair_optimal_rewards).
    2. Batch-mean shift (no state, delta = mean reward of the batch, detached): every point with
       beta Delta = (c + logit p, c - logit p) is a fixed point, since the batch mean is then c itself:
       the expected gradient vanishes there for any level c (checked at c = 0.2).
    """
    from preftune.tabular.bandit import Bandit
    from preftune.tabular.checks import compare, compare_vectors, log_ratio, method_loss
    from preftune.tabular.pair_checks import (FREE_PAIR_REF, bco_pair_optimal_rewards, expected_loss_gradient,
                                              free_pair_dataset, free_pair_optimum)

    beta, p, shift = 1.0, 0.8, -0.5  # delta < 0 keeps the optimum inside the simplex
    bandit, optimum = free_pair_optimum(method_loss("bco_pair", fn, beta=beta, reward_shift=shift), p)
    expected = torch.tensor(bco_pair_optimal_rewards(p, shift), dtype=torch.float64)
    results = [compare_vectors("bco_pair", f"free-pair optimum beta*Delta = delta +- logit(p), delta = {shift}, p = {p}",
                               expected, beta * log_ratio(bandit, optimum.logp)[:2], 1e-9, labels=["y0", "y1"])]
    level = 0.2
    bandit = Bandit.create(FREE_PAIR_REF)
    fixed_point = bandit.ref_logp.clone()
    fixed_point[0, :2] += torch.tensor(bco_pair_optimal_rewards(p, level), dtype=torch.float64) / beta
    _, grad = expected_loss_gradient(method_loss("bco_pair", fn, beta=beta), bandit, free_pair_dataset(p), fixed_point)
    results.append(compare("bco_pair", f"batch-mean shift: zero expected gradient at beta*Delta = c +- logit(p), c = {level}",
                           0.0, float(grad.abs().max()), 1e-15))
    return results
