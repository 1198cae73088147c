"""KTO: model alignment as prospect-theoretic optimisation (Ethayarajh et al., ICML 2024, arXiv 2402.01306)."""
from __future__ import annotations

import torch

from preftune.methods.common import log_ratios
from preftune.methods.registry import register, taxonomy
from preftune.records import Logps, MethodOutput


@register(
    name="kto", seed=None, family="offline-pointwise", input_kind="pointwise", needs_reference=True,
    status="stable", extras=("label",),
    paper="Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization, arXiv 2402.01306",
    taxonomy=taxonomy(["pointwise", "unpaired"], ["offline"], ["fixed-reference", "reverse-kl"]),
)
def kto(policy: Logps, reference: Logps, *, label, beta: float = 0.1, desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0) -> MethodOutput:
    """Prospect-theoretic value of the implicit reward against a KL reference point z0.

    r = log pi(y|x)/pi_ref(y|x) for the completion (response 0) and
      desirable:   L = lambda_D * (1 - sigmoid(beta * (r - z0)))
      undesirable: L = lambda_U * (1 - sigmoid(beta * (z0 - r)))
    z0 = max(0, mean over the batch of log pi/pi_ref of mismatched completions), detached
    (Eq. 8 of the paper); the data layer puts the mismatched completion y' of another prompt in
    response 1. With K = 1 (no mismatched completion) z0 = 0.
    label: (B,) bool, True for a desirable completion. beta 0.1, lambda_D = lambda_U = 1.
    """
    ratios = log_ratios(policy, reference)
    if ratios.shape[1] > 1:
        z0 = ratios[:, 1].detach().mean().clamp_min(0)
    else:
        z0 = torch.zeros((), dtype=ratios.dtype, device=ratios.device)
    r = ratios[:, 0]
    label = label.bool()
    loss = torch.where(label, desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
                       undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))))
    rewards = beta * ratios
    metrics = {"kl_reference_point": z0.expand_as(r),
               "accuracy": torch.where(label, r > z0, r < z0).float()}
    return MethodOutput(loss, rewards, metrics)
