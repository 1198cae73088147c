"""NCA: noise-contrastive alignment with explicit rewards (Chen et al., NeurIPS 2024, arXiv 2402.05369)."""
from __future__ import annotations

import torch

from preftune.methods.common import log_ratios, neg_log_sigmoid
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


@register(
    name="nca_pair", seed=None, family="offline-pairwise", input_kind="pairwise", needs_reference=True,
    status="stable", paper="Chen et al. 2024, Noise Contrastive Alignment of Language Models with Explicit "
                           "Rewards, arXiv 2402.05369",
    taxonomy=taxonomy(["pairwise"], ["offline"], ["fixed-reference", "noise-contrastive"], ["likelihood"]),
)
def nca_pair(policy: Logps, reference: Logps, *, beta: float = 0.01) -> MethodOutput:
    """Noise-contrastive classification of each response on its own absolute reward r = beta * Delta.

    The NCA loss of §4 for K responses with explicit rewards s_i and target weights
    w_i = softmax(s / alpha)_i is  -sum_i [w_i log sigmoid(r_i) + (1/K) log sigmoid(-r_i)]; pairwise
    preference data is K = 2 with w = (1, 0) for (chosen, rejected), which gives
        L = l(r_w) + l(-r_w)/2 + l(-r_l)/2,   l(z) = -log sigmoid(z).
    Unlike DPO it is not a function of r_w - r_l alone: each reward is pulled towards an absolute
    level, which keeps the chosen likelihood from falling (the paper's §4 claim). At pi = pi_ref its
    gradient is exactly half of DPO's. beta: 0.01, the authors' UltraFeedback recipe.
    Shapes: (B, 2) in, (B,) loss.
    """
    rewards = beta * log_ratios(policy, reference)
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    loss = neg_log_sigmoid(chosen) + 0.5 * neg_log_sigmoid(-chosen) + 0.5 * neg_log_sigmoid(-rejected)
    return MethodOutput(loss, rewards, pairwise_metrics(chosen, rejected))


@tabular_check("nca_pair")
def nca_pair_tabular_check(fn=nca_pair):
    """On the free pair (pair_checks: both log-ratios free) labelled 0 > 1 with probability p, the
    expected loss separates per response and is minimised at the absolute rewards
    beta Delta_0* = log(2p), beta Delta_1* = log(2(1-p)) (pair_checks.nca_pair_optimal_rewards). beta = 1
    so that the optimum lies inside the simplex (the closed form holds for any beta)."""
    from preftune.tabular.checks import compare_vectors, log_ratio, method_loss
    from preftune.tabular.pair_checks import free_pair_optimum, nca_pair_optimal_rewards

    beta, p = 1.0, 0.8
    bandit, optimum = free_pair_optimum(method_loss("nca_pair", fn, beta=beta), p)
    expected = torch.tensor(nca_pair_optimal_rewards(p), dtype=torch.float64)
    return [compare_vectors("nca_pair", f"free-pair optimum beta*Delta = (log 2p, log 2(1-p)), p = {p}",
                            expected, beta * log_ratio(bandit, optimum.logp)[:2], 1e-9, labels=["y0", "y1"])]
