"""cDPO: DPO with label smoothing (Mitchell 2023, "A note on DPO with noisy preferences")."""
from __future__ import annotations

from preftune.methods.common import log_ratios, neg_log_sigmoid
from preftune.methods.registry import register, taxonomy
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
