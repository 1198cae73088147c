"""DPO: Direct Preference Optimization (Rafailov et al., NeurIPS 2023, arXiv 2305.18290)."""
from __future__ import annotations

from preftune.methods.common import log_ratios, neg_log_sigmoid
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


@register(
    name="dpo", seed=None, family="offline-pairwise", input_kind="pairwise", needs_reference=True,
    status="stable", paper="Rafailov et al. 2023, Direct Preference Optimization, arXiv 2305.18290",
    taxonomy=taxonomy(["pairwise", "sentence-level"], ["offline"], ["fixed-reference", "reverse-kl"]),
)
def dpo(policy: Logps, reference: Logps, *, beta: float = 0.1) -> MethodOutput:
    """Bradley-Terry logistic loss on the implicit reward beta * log pi/pi_ref.

    Equation (7) of the paper: L = -log sigmoid(h), h = beta * (Delta_w - Delta_l), with
    Delta_y = log pi(y|x) - log pi_ref(y|x) summed over response tokens.
    beta: 0.1 (paper: 0.1 for dialogue, 0.5 for TL;DR). Shapes: (B, 2) in, (B,) loss.
    """
    rewards = beta * log_ratios(policy, reference)
    margin = rewards[:, 0] - rewards[:, 1]
    return MethodOutput(neg_log_sigmoid(margin), rewards, pairwise_metrics(rewards[:, 0], rewards[:, 1]))


@tabular_check("dpo")
def dpo_tabular_check(fn=dpo):
    """offline.md §1 Test: under Bradley-Terry labels the expected-loss optimum satisfies
    beta (Delta_i - Delta_j) = r_i - r_j, i.e. pi* ~ pi_ref exp(r/beta) (DPO paper Eq. 4)."""
    from preftune.tabular.checks import optimum_matches_reward

    return [optimum_matches_reward("dpo", fn, params={"beta": 0.1}, beta=0.1)]
