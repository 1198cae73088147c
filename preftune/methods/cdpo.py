"""cDPO: DPO with label smoothing (Mitchell 2023, "A note on DPO with noisy preferences")."""
from __future__ import annotations

from preftune.methods.common import log_ratios, neg_log_sigmoid
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


@register(
    name="cdpo", seed=None, family="offline-pairwise", input_kind="pairwise", needs_reference=True,
    status="stable", paper="Mitchell 2023, A note on DPO with noisy preferences and relationship to IPO",
    taxonomy=taxonomy(["pairwise", "noisy-labels"], ["offline"], ["fixed-reference", "reverse-kl"]),
)
def cdpo(policy: Logps, reference: Logps, *, beta: float = 0.1, label_smoothing: float = 0.1) -> MethodOutput:
    """DPO whose label is flipped with probability epsilon: L = (1-eps) l(h) + eps l(-h).

    label_smoothing (eps): assumed flip rate, 0.1 typical; eps = 0 is DPO. The minimiser of a
    single pair is h* = log((1-eps)/eps), so the margin stays finite (offline.md §1).
    """
    rewards = beta * log_ratios(policy, reference)
    margin = rewards[:, 0] - rewards[:, 1]
    loss = (1 - label_smoothing) * neg_log_sigmoid(margin) + label_smoothing * neg_log_sigmoid(-margin)
    return MethodOutput(loss, rewards, pairwise_metrics(rewards[:, 0], rewards[:, 1]))


@tabular_check("cdpo")
def cdpo_tabular_check(fn=cdpo):
    """offline.md §1 Test: on one pair the optimum is h* = logit((1-eps) p + eps (1-p)), which is
    log((1-eps)/eps) for a hard label (p = 1); with eps = 0 the optimum is DPO's."""
    from preftune.tabular.checks import (compare, method_loss, optimum_matches_reward, pair_log_ratio_margin,
                                         pair_optimum)
    from preftune.tabular.closed_forms import smoothed_logistic_optimal_margin

    beta, eps = 0.1, 0.1
    results = []
    for p in (1.0, 0.8):
        bandit, optimum = pair_optimum(method_loss("cdpo", fn, beta=beta, label_smoothing=eps), p=p)
        results.append(compare("cdpo", f"pair optimum h* = logit((1-e)p + e(1-p)), e = {eps}, p = {p:g}",
                               smoothed_logistic_optimal_margin(eps, p),
                               beta * pair_log_ratio_margin(bandit, optimum.logp), 1e-9))
    results.append(optimum_matches_reward("cdpo", fn, params={"beta": beta, "label_smoothing": 0.0}, beta=beta))
    return results
