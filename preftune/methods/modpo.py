"""MODPO: multi-objective DPO with margin reward models (Zhou et al., ACL Findings 2024, arXiv 2310.03708)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from preftune.methods.common import log_ratios, neg_log_sigmoid, score_margin
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


def weighted_score_margin(margin_scores: Tensor, margin_weights: float | Sequence[float] | None,
                          objective_weight: float) -> Tensor:
    """(B,) w_-k^T (r_-k(y_w) - r_-k(y_l)) from (B, 2) scores of one margin model or (B, 2, M) of M of them.

    margin_weights None means one margin model weighted 1 - objective_weight (w on the simplex).
    """
    margins = score_margin(margin_scores, "margin_scores")
    if margins.dim() == 1:
        margins = margins.unsqueeze(-1)
    if margin_weights is None:
        margin_weights = [1 - objective_weight]
    weights = torch.as_tensor([margin_weights] if isinstance(margin_weights, (int, float)) else list(margin_weights),
                              dtype=margins.dtype, device=margins.device)
    if weights.numel() != margins.shape[-1]:
        raise ValueError(f"modpo: {margins.shape[-1]} margin reward model(s) in margin_scores but "
                         f"{weights.numel()} margin_weights")
    return margins @ weights


@register(
    name="modpo", seed="modpo", family="offline-multiobjective", input_kind="pairwise", needs_reference=True,
    extras=("margin_scores",), status="stable",
    paper="Zhou et al. 2024, Beyond One-Preference-Fits-All Alignment: Multi-Objective Direct Preference "
          "Optimization, ACL Findings 2024, arXiv 2310.03708",
    taxonomy=taxonomy(["pairwise", "reward-model-scores"], ["offline", "multi-objective"],
                      ["fixed-reference", "reverse-kl"]),
)
def modpo(policy: Logps, reference: Logps, *, margin_scores: Tensor, beta: float = 0.1, objective_weight: float = 0.5,
          margin_weights: float | list[float] | None = None, loss_type: str = "sigmoid") -> MethodOutput:
    """DPO on objective k's preferences with the other objectives' reward margins subtracted.

    offline.md §15: z = (1/w_k) [beta Delta_w - beta Delta_l - w_-k^T (r_-k(x, y_w) - r_-k(x, y_l))],
    L = l(z) (loss_type "sigmoid") or max(0, 1 - z) ("hinge"). The optimum makes the policy optimal
    for the weighted reward: beta Delta_i = w_k r_k,i + w_-k^T r_-k,i + C.
    margin_scores: (B, 2) scores of the chosen and rejected response under one margin reward model
    (any frozen RM, a DPO implicit reward beta (lp_k - lpr), or a rule such as -length), or
    (B, 2, M) under M of them; a data extra, e.g. `data.extra_columns: [{margin_scores: [col_w, col_l]}]`.
    objective_weight: w_k of the objective whose preferences label the pairs. margin_weights:
    w_-k, one per margin model; None means 1 - w_k (w on the simplex, the paper's safety recipe
    w = (better, safer)); the length-penalty recipe uses w = (1, w). beta: 0.1; the paper sweeps
    w in {0.1, 0.5, 0.9}. objective_weight = 1 with margin weight 0 is DPO.
    Shapes: (B, 2) in, (B,) loss. Rewards: beta * log-ratios.
    """
    if objective_weight <= 0:
        raise ValueError(f"modpo: objective_weight (w_k) must be positive, got {objective_weight}")
    rewards = beta * log_ratios(policy, reference)
    margin = weighted_score_margin(margin_scores, margin_weights, objective_weight).to(rewards.dtype)
    z = (rewards[:, 0] - rewards[:, 1] - margin) / objective_weight
    if loss_type == "sigmoid":
        loss = neg_log_sigmoid(z)
    elif loss_type == "hinge":
        loss = torch.relu(1 - z)
    else:
        raise ValueError(f"modpo: loss_type must be 'sigmoid' or 'hinge', got {loss_type!r}")
    metrics = pairwise_metrics(rewards[:, 0], rewards[:, 1])
    metrics["margin_reward"], metrics["modpo_margin"] = margin, z
    return MethodOutput(loss, rewards, metrics)


@tabular_check("modpo")
def modpo_tabular_check(fn=modpo):
    """offline.md §15 Tests. (1) Bradley-Terry labels from r_k on the standard bandit, exact margin scores
    r_-k as data extras: the optimum satisfies beta (Delta_i - Delta_j) = (w_k r_k + w_-k r_-k)_i - (...)_j,
    for one margin model (w = (0.3, 0.7)) and for two (w_k = 0.6, w_-k = (0.5, -0.2)). (2) w = (1, 0):
    DPO's optimum r_k. (3) Hinge variant on a pair labelled 0 > 1 w.p. p: the expected loss is
    minimised exactly where z = 1, i.e. beta (Delta_0 - Delta_1) = w_k + w_-k (r_-k,0 - r_-k,1)."""
    from dataclasses import replace

    from preftune.tabular.bandit import Bandit
    from preftune.tabular.checks import (DEFAULT_REWARDS, PAIR_P, PAIR_REF, compare, method_loss,
                                         optimum_matches_reward, pair_log_ratio_margin, with_response_extras)
    from preftune.tabular.expected import optimise_two_response_policy, single_pair_dataset

    beta = 0.5
    r_k = torch.tensor(DEFAULT_REWARDS, dtype=torch.float64)
    r_other = torch.tensor([-0.5, 0.8, 0.2, -0.1], dtype=torch.float64)
    r_third = torch.tensor([0.3, -0.6, 1.0, 0.0], dtype=torch.float64)
    cases = [
        ("one margin model, w = (0.3, 0.7)", r_other, dict(objective_weight=0.3), 0.3 * r_k + 0.7 * r_other),
        ("two margin models, w = (0.6; 0.5, -0.2)", torch.stack([r_other, r_third], -1),
         dict(objective_weight=0.6, margin_weights=[0.5, -0.2]), 0.6 * r_k + 0.5 * r_other - 0.2 * r_third),
        ("w = (1, 0) is DPO", r_other, dict(objective_weight=1.0), r_k),
    ]
    results = []
    for label, scores, weights, target in cases:
        result = optimum_matches_reward("modpo", fn, params=dict(beta=beta, **weights), beta=beta,
                                        response_extras={"margin_scores": scores}, target=target)
        results.append(replace(result, property=f"{label}, t = w_k r_k + w_-k r_-k: {result.property}"))

    w_k, pair_scores = 0.4, torch.tensor([0.2, -0.9], dtype=torch.float64)
    bandit = Bandit.create(PAIR_REF)
    data = with_response_extras(single_pair_dataset(PAIR_P), {"margin_scores": pair_scores})
    optimum = optimise_two_response_policy(method_loss("modpo", fn, beta=beta, objective_weight=w_k,
                                                       loss_type="hinge"), bandit, data)
    results.append(compare("modpo", f"hinge, p = {PAIR_P}, w = ({w_k}, {1 - w_k:g}): optimum at z = 1",
                           w_k + (1 - w_k) * float(pair_scores[0] - pair_scores[1]),
                           beta * pair_log_ratio_margin(bandit, optimum.logp), 1e-6))
    return results
