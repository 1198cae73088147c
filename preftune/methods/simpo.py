"""SimPO: simple preference optimisation with a reference-free reward (Meng, Xia, Chen, NeurIPS 2024, arXiv 2405.14734)."""
from __future__ import annotations

import torch

from preftune.methods.common import neg_log_sigmoid, response_nll
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


@register(
    name="simpo", seed="simpo", family="offline-pairwise", input_kind="pairwise", needs_reference=False,
    status="stable", paper="Meng, Xia, Chen 2024, SimPO: Simple Preference Optimization with a "
                           "Reference-Free Reward, arXiv 2405.14734",
    taxonomy=taxonomy(["pairwise"], ["offline"], ["reference-free", "length-normalised", "margin"],
                      ["length"]),
)
def simpo(policy: Logps, *, beta: float = 2.0, gamma_beta_ratio: float = 0.5, label_smoothing: float = 0.0,
          loss_type: str = "sigmoid", sft_weight: float = 0.0) -> MethodOutput:
    """Length-normalised reward beta * mean log pi(y|x) with a target margin gamma.

    z = beta * (avg(y_w) - avg(y_l)) - gamma, written as beta * [(avg_w - avg_l) - gamma/beta]
    as in the official code; L = l(z) (offline.md §2).
    beta: 2.0 (official configs use 2.0-10). gamma_beta_ratio: gamma/beta, 0.5 is the repo's
    recommended starting point (its dataclass default is 0.25). label_smoothing eps gives
    (1-eps) l(z) + eps l(-z). loss_type "hinge" uses max(0, 1 - z). sft_weight adds
    sft_weight * NLL(y_w) (default 0).
    """
    z = beta * (policy.chosen_mean - policy.rejected_mean - gamma_beta_ratio)
    if loss_type == "sigmoid":
        loss = (1 - label_smoothing) * neg_log_sigmoid(z) + label_smoothing * neg_log_sigmoid(-z)
    elif loss_type == "hinge":
        loss = torch.relu(1 - z)
    else:
        raise ValueError(f"simpo: loss_type must be 'sigmoid' or 'hinge', got {loss_type!r}")
    if sft_weight:
        loss = loss + sft_weight * response_nll(policy, 0)
    rewards = beta * policy.mean
    return MethodOutput(loss, rewards, pairwise_metrics(rewards[:, 0], rewards[:, 1]))


@tabular_check("simpo")
def simpo_tabular_check(fn=simpo):
    """offline.md §2 Tests, on a pair with lengths 3 and 7 so that sums and means differ:
    label smoothing eps puts the optimum at z* = log((1-eps)/eps) (Test 3); with soft labels p the
    margin gamma gives u* = beta (avg_0 - avg_1) = the root of (1-p) a^2 + (1-2p) e^gamma a - p = 0,
    a = e^u (closed_forms.margin_logistic_optimal_margin); repeating y_w's tokens leaves avg, hence
    the loss, unchanged (Test 1, on the toy token LM)."""
    from preftune.tabular.checks import PAIR_P, compare, compare_vectors, method_loss, pair_logp_margin, \
        pair_optimum
    from preftune.tabular.closed_forms import margin_logistic_optimal_margin, smoothed_logistic_optimal_margin
    from preftune.tabular.tokens import TokenLM, repeat_response_tokens

    beta, ratio, eps = 2.0, 0.5, 0.1
    gamma = beta * ratio
    bandit, optimum = pair_optimum(method_loss("simpo", fn, beta=beta, gamma_beta_ratio=ratio, label_smoothing=eps),
                                   p=1.0)
    z = beta * pair_logp_margin(bandit, optimum.logp, normalise=True) - gamma
    results = [compare("simpo", f"label smoothing e = {eps}: optimum z* = log((1-e)/e)",
                       smoothed_logistic_optimal_margin(eps), z, 1e-9)]
    bandit, optimum = pair_optimum(method_loss("simpo", fn, beta=beta, gamma_beta_ratio=ratio), p=PAIR_P)
    results.append(compare("simpo", f"soft label p = {PAIR_P}, gamma = {gamma:g}: optimum beta*(avg_0 - avg_1)",
                           margin_logistic_optimal_margin(PAIR_P, gamma),
                           beta * pair_logp_margin(bandit, optimum.logp, normalise=True), 1e-9))
    lm = TokenLM()
    record = lm.records(lm.random_tables(torch.Generator().manual_seed(0)), [[(1, 2, 3), (4, 1)], [(2,), (3, 3, 1, 4)]])
    loss = method_loss("simpo", fn, beta=beta, gamma_beta_ratio=ratio)
    results.append(compare_vectors("simpo", "loss unchanged when y_w's token log-probs are repeated (token LM)",
                                   loss(record, None, {}), loss(repeat_response_tokens(record, 0), None, {}), 1e-12))
    return results
