"""MADPO: margin-adaptive DPO with instance weights from a reward model (Rho 2025, arXiv 2510.05342)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from preftune.methods.common import log_ratios, neg_log_sigmoid, score_margin
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics

# tau = log(0.999 / 0.001): the margin at which the reward model is 99.9% sure (official notebook).
DEFAULT_TAU = math.log(0.999 / 0.001)


def madpo_scale(abs_margin: Tensor, c_max: float, c_min: float, lam: float, tau: float) -> Tensor:
    """c(|m|) = c_min + (c_max - c_min) / (1 + ((c_max - 1)/(1 - c_min)) exp(lam (|m| - tau))).

    A logistic schedule with c(tau) = 1, written as c_min + (c_max - c_min) sigmoid(-(log k + lam (|m| - tau)))
    with k = (c_max - 1)/(1 - c_min), which stays finite for any margin. When c_max or c_min is 1
    the schedule is constant 1 (its limit), so the weight below is 1: DPO.
    """
    if not c_min <= 1.0 <= c_max:
        raise ValueError(f"madpo needs c_min <= 1 <= c_max, got c_min={c_min}, c_max={c_max}")
    if c_max == 1.0 or c_min == 1.0:
        return torch.ones_like(abs_margin)
    log_k = math.log((c_max - 1) / (1 - c_min))
    return c_min + (c_max - c_min) * torch.sigmoid(-(log_k + lam * (abs_margin - tau)))


def madpo_weight(margin: Tensor, c_max: float, c_min: float, lam: float, tau: float) -> Tensor:
    """w(m) = sigmoid(c m) / sigmoid(m) for m > -tau, else 1 (detached; offline.md §8)."""
    margin = margin.detach()
    c = madpo_scale(margin.abs(), c_max, c_min, lam, tau)
    weight = torch.exp(F.logsigmoid(c * margin) - F.logsigmoid(margin))
    return torch.where(margin > -tau, weight, torch.ones_like(weight))


@register(
    name="madpo", seed="madpo", family="offline-pairwise", input_kind="pairwise", needs_reference=True,
    extras=("rm_scores",), status="stable",
    paper="Rho 2025, MADPO: Margin-Adaptive Direct Preference Optimization, arXiv 2510.05342",
    taxonomy=taxonomy(["pairwise", "reward-model-scores", "data-quality"], ["offline"],
                      ["fixed-reference", "reverse-kl", "instance-weighting"]),
)
def madpo(policy: Logps, reference: Logps, *, rm_scores: Tensor, beta: float = 0.1, c_max: float = 2.0,
          c_min: float = 0.5, lam: float = 1.0, tau: float = DEFAULT_TAU) -> MethodOutput:
    """DPO with a per-pair weight from a frozen reward model's margin: L = w(m) * l(h).

    offline.md §8: m = r(x, y_w) - r(x, y_l) is the reward-model margin in the labelled direction,
    c(|m|) the logistic schedule of `madpo_scale` (c(tau) = 1, c -> c_max for small |m|, c -> c_min
    for large |m|), and w(m) = sigmoid(c m)/sigmoid(m) if m > -tau else 1, detached. Hard but
    correctly ordered pairs (0 < m < tau) get w > 1, easy pairs (m > tau) w < 1, pairs the RM
    strongly contradicts (m <= -tau) keep w = 1. On a pair whose labels follow the RM
    (P(y_w > y_l) = sigmoid(m)), the optimum is h* = c(|m|) m: an adaptive target margin.
    rm_scores: (B, 2) reward-model scores of the chosen and rejected response, a data extra
    (e.g. `data.extra_columns: [{rm_scores: [chosen_score, rejected_score]}]`; a dataset that
    stores only the margin m can write rm_scores = [m, 0]).
    Defaults (official notebook): beta 0.1, c_max 2, c_min = 1/c_max = 0.5, lam 1,
    tau = log(0.999/0.001) ~ 6.907. c_max = c_min = 1 is DPO. Shapes: (B, 2) in, (B,) loss.
    """
    margin = score_margin(rm_scores, "rm_scores").to(policy.sum.dtype)
    weight = madpo_weight(margin, c_max, c_min, lam, tau)
    rewards = beta * log_ratios(policy, reference)
    h = rewards[:, 0] - rewards[:, 1]
    metrics = pairwise_metrics(rewards[:, 0], rewards[:, 1])
    metrics["instance_weight"], metrics["rm_margin"] = weight, margin
    return MethodOutput(weight * neg_log_sigmoid(h), rewards, metrics)


@tabular_check("madpo")
def madpo_tabular_check(fn=madpo):
    """offline.md §8. (1) Adaptive margin: a pair whose labels follow the reward model, P(0 > 1) =
    sigmoid(m), with exact RM scores. Its expected loss p w(m) l(h) + (1-p) w(-m) l(-h) is minimised
    at h* = log[p w(m) / ((1-p) w(-m))]; with the paper's w this is h* = c(|m|) m when |m| < tau
    (both orders weighted), and h* = m + log sigmoid(c m) - log sigmoid(m) when m > tau (the reversed
    order has m <= -tau, weight 1). c is written here from the paper's formula. (2) c_max = c_min = 1:
    DPO's Bradley-Terry optimum beta (Delta_i - Delta_j) = r_i - r_j, with the RM scores as data extras."""
    from preftune.tabular.checks import (DEFAULT_REWARDS, PAIR_REF, compare, method_loss, optimum_matches_reward,
                                         pair_log_ratio_margin, with_response_extras)
    from preftune.tabular.bandit import Bandit
    from preftune.tabular.expected import optimise_policy, single_pair_dataset

    beta, c_max, c_min, lam, tau = 0.5, 2.0, 0.5, 1.0, DEFAULT_TAU
    params = dict(beta=beta, c_max=c_max, c_min=c_min, lam=lam, tau=tau)

    def c_of(m: float) -> float:
        return c_min + (c_max - c_min) / (1 + (c_max - 1) / (1 - c_min) * math.exp(lam * (abs(m) - tau)))

    def log_sigmoid(x: float) -> float:
        return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))

    results = []
    for m, expected, regime in ((1.5, c_of(1.5) * 1.5, "0 < m < tau: h* = c(m) m"),
                                (3.0, c_of(3.0) * 3.0, "0 < m < tau: h* = c(m) m"),
                                (8.0, 8.0 + log_sigmoid(c_of(8.0) * 8.0) - log_sigmoid(8.0),
                                 "m > tau: h* = m + log s(c m) - log s(m)")):
        p = 1 / (1 + math.exp(-m))
        bandit = Bandit.create(PAIR_REF)
        data = with_response_extras(single_pair_dataset(p), {"rm_scores": torch.tensor([m, 0.0])})
        optimum = optimise_policy(method_loss("madpo", fn, **params), bandit, data)
        results.append(compare("madpo", f"RM-consistent pair, m = {m:g}, {regime}", expected,
                               beta * pair_log_ratio_margin(bandit, optimum.logp), 1e-9))
    results.append(optimum_matches_reward("madpo", fn, params=dict(params, c_max=1.0, c_min=1.0), beta=beta,
                                          response_extras={"rm_scores": torch.tensor(DEFAULT_REWARDS)}))
    return results
