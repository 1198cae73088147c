"""SimPO: simple preference optimisation with a reference-free reward (Meng, Xia, Chen, NeurIPS 2024, arXiv 2405.14734)."""
from __future__ import annotations

import torch

from preftune.methods.common import neg_log_sigmoid, response_nll
from preftune.methods.registry import register, taxonomy
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
