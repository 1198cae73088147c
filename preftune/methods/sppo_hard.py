"""SPPO with hard labels: self-play preference optimisation (Wu et al. 2024, arXiv 2405.00675), offline pairwise form."""
from __future__ import annotations

import torch

from preftune.methods.common import log_ratios
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


@register(
    name="sppo_hard", seed=None, family="offline-pairwise", input_kind="pairwise", needs_reference=True,
    status="stable", paper="Wu et al. 2024, Self-Play Preference Optimization for Language Model Alignment, "
                           "arXiv 2405.00675",
    taxonomy=taxonomy(["pairwise"], ["offline", "self-play"], ["fixed-reference", "squared-loss"],
                      ["likelihood"]),
)
def sppo_hard(policy: Logps, reference: Logps, *, beta: float = 0.001) -> MethodOutput:
    """Squared regression of each response's log-ratio onto its SPPO target, with hard win probabilities.

    SPPO's update (Algorithm 1, Eq. 4.7) regresses log(pi(y)/pi_t(y)) onto eta (P(y > pi_t) - 1/2).
    With the hard labels of a preference pair, P = 1 for the winner and 0 for the loser, and
    eta = 1/beta:
        L = (Delta_w - 1/(2 beta))^2 + (Delta_l + 1/(2 beta))^2
    on sequence-summed log-ratios against the reference (the previous iterate pi_t when SPPO is
    run iteratively). Both targets are absolute, not a margin: the identity
    L = (1/2)(Delta_w - Delta_l - 1/beta)^2 + (1/2)(Delta_w + Delta_l)^2 shows it is half an IPO
    loss with target margin 1/beta plus a penalty on the pair's total log-ratio.
    beta: 0.001 (eta = 1000), the authors' scripts; the authors' trainer halves the sum, which
    changes the scale but not the optimum. The soft-probability SPPO is the online `sppo`.
    Shapes: (B, 2) in, (B,) loss.
    """
    ratios = log_ratios(policy, reference)
    target = 1 / (2 * beta)
    loss = (ratios[:, 0] - target) ** 2 + (ratios[:, 1] + target) ** 2
    rewards = beta * ratios
    return MethodOutput(loss, rewards, pairwise_metrics(rewards[:, 0], rewards[:, 1]))


@tabular_check("sppo_hard")
def sppo_hard_tabular_check(fn=sppo_hard):
    """On the free pair (pair_checks: both log-ratios free) labelled 0 > 1 with probability p the
    expected loss separates per response, minimised at Delta_0* = (2p-1)/(2 beta) = -Delta_1*
    (pair_checks.sppo_hard_optimal_log_ratios): the hard targets +-1/(2 beta) for p = 1 and SPPO's soft
    target (1/beta)(p - 1/2) for p = 0.8. beta = 1 keeps the optimum inside the simplex."""
    from preftune.tabular.checks import compare_vectors, log_ratio, method_loss
    from preftune.tabular.pair_checks import free_pair_optimum, sppo_hard_optimal_log_ratios

    beta = 1.0
    results = []
    for p in (1.0, 0.8):
        bandit, optimum = free_pair_optimum(method_loss("sppo_hard", fn, beta=beta), p)
        expected = torch.tensor(sppo_hard_optimal_log_ratios(p, beta), dtype=torch.float64)
        results.append(compare_vectors("sppo_hard", f"free-pair optimum Delta = +-(2p-1)/(2 beta), p = {p:g}",
                                       expected, log_ratio(bandit, optimum.logp)[:2], 1e-9, labels=["y0", "y1"]))
    return results
