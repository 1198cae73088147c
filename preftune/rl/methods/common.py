"""Primitives shared by the reinforcement-learning losses (online.md §0, §9-14).

Per-token tensors are (B, K, T) like `Logps.tokens`, with the response mask of the policy's record;
for rollouts K = 1. Every function returns unreduced values; the losses say how they reduce.
"""
from __future__ import annotations

import torch
from torch import Tensor

from preftune.records import Logps


def require_tokens(name: str, **records: Logps) -> None:
    """The RL losses work on per-token log-probs: say which record lacks them, and for which method."""
    for label, record in records.items():
        if record is None or record.tokens is None:
            raise ValueError(f"{name} needs per-token log-probs of the {label} (Logps.tokens)")


def ratio(policy: Tensor, old: Tensor) -> Tensor:
    """rho = pi_theta / pi_old per token, from log-probs (the importance ratio of PPO's surrogate)."""
    return torch.exp(policy - old)


def clipped_surrogate(policy: Tensor, old: Tensor, advantages: Tensor, clip_eps: float,
                      clip_eps_high: float | None = None) -> Tensor:
    """PPO's per-token loss -min(rho A, clip(rho, 1 - eps, 1 + eps_high) A) (Schulman et al. 2017, Eq. 7).

    clip_eps_high: the upper clip range when it differs from the lower one (None: symmetric).
    """
    rho = ratio(policy, old.detach())
    clipped = rho.clamp(1.0 - clip_eps, 1.0 + (clip_eps if clip_eps_high is None else clip_eps_high))
    return -torch.minimum(rho * advantages, clipped * advantages)


def clip_fraction(policy: Tensor, old: Tensor, mask: Tensor, clip_eps: float) -> Tensor:
    """(B,) fraction of response tokens whose ratio lies outside the clip range (a PPO health metric)."""
    outside = ((ratio(policy, old) - 1.0).abs() > clip_eps).to(policy.dtype)
    return token_mean(outside.detach(), mask)


def k3(policy: Tensor, reference: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref) per sampled token: e^{ref - theta} - (ref - theta) - 1 >= 0."""
    log_ratio = reference - policy
    return torch.exp(log_ratio) - log_ratio - 1.0


def token_mean(values: Tensor, mask: Tensor) -> Tensor:
    """(B,) the per-token values averaged over each example's response tokens (all its K responses)."""
    mask = mask.to(values.dtype)
    dims = tuple(range(1, values.dim()))
    return (values * mask).sum(dims) / mask.sum(dims).clamp_min(1.0)


def value_loss(values: Tensor, returns: Tensor, old_values: Tensor | None = None,
               clip: float | None = None) -> Tensor:
    """Per-token 1/2 (V - G)^2; with `clip` the PPO form max((V - G)^2, (V_old + clip(V - V_old, +-c) - G)^2) / 2."""
    loss = (values - returns) ** 2
    if clip is not None and old_values is not None:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    return 0.5 * loss


def response_positions(mask: Tensor) -> Tensor:
    """(B, K, T) index of each token within its response (0, 1, 2, ...), -1 outside the response."""
    return torch.where(mask, mask.long().cumsum(-1) - 1, torch.full_like(mask, -1, dtype=torch.long))
