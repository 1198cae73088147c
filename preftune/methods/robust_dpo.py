"""rDPO: provably robust DPO under label noise (Chowdhury, Kini, Natarajan, ICML 2024, arXiv 2403.00409)."""
from __future__ import annotations

import torch

from preftune.methods.common import log_ratios, neg_log_sigmoid
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


@register(
    name="robust", seed=None, family="offline-pairwise", input_kind="pairwise", needs_reference=True,
    status="stable", paper="Chowdhury et al. 2024, Provably Robust DPO, arXiv 2403.00409",
    taxonomy=taxonomy(["pairwise", "noisy-labels"], ["offline"], ["fixed-reference", "reverse-kl"]),
)
def robust(policy: Logps, reference: Logps, *, beta: float = 0.1, label_smoothing: float = 0.1) -> MethodOutput:
    """Unbiased DPO loss under a known flip rate eps: L = [(1-eps) l(h) - eps l(-h)] / (1 - 2 eps).

    Unbiasedness: (1-eps) L(h) + eps L(-h) = l(h) for every h, so in expectation over flipped
    labels it is the clean DPO loss. label_smoothing (eps) must lie in [0, 0.5); eps = 0 is DPO.
    """
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"robust: label_smoothing must lie in [0, 0.5), got {label_smoothing}")
    rewards = beta * log_ratios(policy, reference)
    margin = rewards[:, 0] - rewards[:, 1]
    loss = ((1 - label_smoothing) * neg_log_sigmoid(margin)
            - label_smoothing * neg_log_sigmoid(-margin)) / (1 - 2 * label_smoothing)
    return MethodOutput(loss, rewards, pairwise_metrics(rewards[:, 0], rewards[:, 1]))


@tabular_check("robust")
def robust_tabular_check(fn=robust):
    """offline.md §1 Test: (1-eps) L(h) + eps L(-h) = l(h) for every h, to machine precision; hence
    the optimum under labels flipped at rate eps is the clean DPO optimum beta (Delta_i - Delta_j) = r_i - r_j."""
    from preftune.tabular.checks import compare_vectors, grid, losses_at_log_ratio_margins, method_loss, \
        optimum_matches_reward

    beta, eps = 0.1, 0.2
    loss = method_loss("robust", fn, beta=beta, label_smoothing=eps)
    h = grid(-8.0, 8.0, 33)
    as_labelled, _ = losses_at_log_ratio_margins(loss, h / beta)
    flipped, _ = losses_at_log_ratio_margins(loss, -h / beta)
    clean = -torch.nn.functional.logsigmoid(h)
    return [
        compare_vectors("robust", f"unbiased: (1-e)L(h) + eL(-h) = -log sigmoid(h), e = {eps}, h in [-8, 8]",
                        clean, (1 - eps) * as_labelled + eps * flipped, 1e-12,
                        labels=[f"h={v:g}" for v in h.tolist()]),
        optimum_matches_reward("robust", fn, params={"beta": beta, "label_smoothing": eps}, beta=beta,
                               flip_rate=eps),
    ]
