"""Small pieces shared by the diffusion method files (diffusion.md §0, §8)."""
from __future__ import annotations

import torch
from torch import Tensor

from preftune.diffusion.records import Denoise, Steps
from preftune.methods.registry import taxonomy

FAMILY = "diffusion"


def diffusion_taxonomy(data=(), framework=(), constraint=()):
    """Survey-taxonomy tags of a diffusion method; the model-property axis is always 'diffusion'."""
    return taxonomy(list(data), list(framework), list(constraint), ["diffusion"])


def error_gap(policy: Denoise, reference: Denoise) -> Tensor:
    """(B, K) Delta = E_theta - E_ref at the same (t, eps): minus the implicit log-ratio (diffusion.md §0)."""
    if policy.error.shape != reference.error.shape:
        raise ValueError(f"policy and reference errors differ in shape: {tuple(policy.error.shape)} vs "
                         f"{tuple(reference.error.shape)}")
    return policy.error - reference.error


def require_samples(record: Denoise | Steps, k: int, method: str) -> None:
    if record.num_samples != k:
        raise ValueError(f"{method} takes {k} samples per example, got {record.num_samples}")


def ppo_clip_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """PPO's clipped surrogate, elementwise: max(-A r, -A clip(r, 1 - clip, 1 + clip)), r = exp(logp - old).

    The log-ratio is capped at 30 before exp (r ~ 1e13) so that a step with a tiny std cannot overflow
    to inf and turn the gradient into nan; below the cap the values are PPO's exactly.
    """
    ratio = torch.exp((logp - old_logp).clamp(max=30.0))
    return torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip))


def group_advantages(rewards: Tensor, groups: Tensor, clip: float = 5.0, global_std: bool = True,
                     eps: float = 1e-4) -> Tensor:
    """Per-prompt normalised rewards (DDPO, Flow-GRPO, AWM; diffusion.md §8).

    A_i = clip((r_i - mean of i's group) / (std + eps), +-clip); the std is over all samples
    (global_std, as Flow-GRPO and AWM default) or within the group.
    rewards: (N,) floats; groups: (N,) integer group ids (one per prompt/condition).
    """
    rewards = rewards.double()
    ids, inverse = torch.unique(groups, return_inverse=True)
    counts = torch.zeros(len(ids), dtype=rewards.dtype).index_add_(0, inverse, torch.ones_like(rewards))
    means = torch.zeros(len(ids), dtype=rewards.dtype).index_add_(0, inverse, rewards) / counts
    centred = rewards - means[inverse]
    if global_std:
        std = rewards.std(unbiased=False).expand_as(rewards)
    else:
        var = torch.zeros(len(ids), dtype=rewards.dtype).index_add_(0, inverse, centred ** 2) / counts
        std = var.sqrt()[inverse]
    return (centred / (std + eps)).clamp(-clip, clip).float()


def pair_metrics(inside: Tensor) -> dict[str, Tensor]:
    """The pairwise diagnostics every DPO-style diffusion method logs: margin and implicit accuracy."""
    inside = inside.detach()
    return {"margin": inside, "accuracy": (inside > 0).float()}
