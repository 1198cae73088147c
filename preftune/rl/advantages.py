"""Advantage and return estimators (pure): group-normalised rewards (GRPO), weighted aspect rewards,
GAE (PPO), discounted Monte-Carlo returns (PDPPO), reverse cumulative sums (OREO) and Monte-Carlo
step values (DAPO's critic labels).

Per-token tensors are (..., T) with a boolean `mask` that is True on response tokens; the tokens of a
response are contiguous (right padding), which is what the collated batches give.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def masked_mean(values: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Mean of `values` over the positions where `mask` is True (0 where there are none)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over the masked positions of the whole tensor (PPO's advantage whitening)."""
    selected = values[mask]
    if selected.numel() < 2:
        return torch.where(mask, values - selected.mean() if selected.numel() else values, torch.zeros_like(values))
    centred = values - selected.mean()
    return torch.where(mask, centred * torch.rsqrt(selected.var(unbiased=False) + eps), torch.zeros_like(values))


def group_normalised(rewards: Tensor, group: Tensor, eps: float = 1e-4, scale: bool = True) -> Tensor:
    """GRPO's advantage (DeepSeekMath §4.1.2): A_i = (R_i - mean_g R) / (std_g R + eps) within each group g.

    rewards: (B,) one reward per sampled response; group: (B,) integer id of the prompt it answers.
    std is the unbiased standard deviation (Bessel-corrected, as TRL's GRPO); a group whose rewards are
    all equal gets zero advantages. scale=False keeps only the centring (Dr. GRPO's choice).
    """
    ids, index = torch.unique(group, return_inverse=True)
    count = torch.zeros(len(ids), dtype=rewards.dtype, device=rewards.device).index_add_(0, index, torch.ones_like(rewards))
    mean = torch.zeros_like(count).index_add_(0, index, rewards) / count
    centred = rewards - mean[index]
    if not scale:
        return centred
    square = torch.zeros_like(count).index_add_(0, index, centred ** 2)
    std = (square / (count - 1).clamp_min(1.0)).sqrt()[index]
    return torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))


def combine_aspects(aspects: Tensor, weights: Sequence[float] | Tensor | None, group: Tensor | None = None,
                    normalise: str = "none", eps: float = 1e-4) -> Tensor:
    """The scalar reward R = sum_k w_k r_k of (B, A) per-aspect rewards (uniform weights when None).

    normalise "group" first standardises each aspect within its group (MO-GRPO, Ichihara et al. 2025,
    arXiv 2509.22047), so an aspect with a larger spread cannot dominate the sum; "none" is the plain
    weighted sum of the multi-objective GRPO paper (online.md §13).
    """
    if aspects.dim() != 2:
        raise ValueError(f"aspect rewards must be (B, A), got shape {tuple(aspects.shape)}")
    count = aspects.shape[1]
    w = torch.full((count,), 1.0 / count, dtype=aspects.dtype, device=aspects.device) if weights is None \
        else torch.as_tensor(weights, dtype=aspects.dtype, device=aspects.device)
    if w.shape != (count,):
        raise ValueError(f"{count} reward aspects but {w.numel()} weights {w.tolist()}")
    if normalise == "group":
        if group is None:
            raise ValueError("per-aspect group normalisation needs the group of every response")
        aspects = torch.stack([group_normalised(aspects[:, k], group, eps) for k in range(count)], dim=1)
    elif normalise != "none":
        raise ValueError(f"aspect normalisation must be 'none' or 'group', got {normalise!r}")
    return aspects @ w


def last_token_reward(score: Tensor, mask: Tensor) -> Tensor:
    """(B, T) zeros with `score` (B,) on each row's last response token (the sequence reward's place)."""
    positions = torch.arange(mask.shape[-1], device=mask.device)
    last = torch.where(mask, positions, torch.full_like(positions, -1)).amax(-1, keepdim=True)
    return torch.where(positions == last, score.unsqueeze(-1), torch.zeros_like(score).unsqueeze(-1))


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, Eq. 16) over the response tokens.

    delta_t = r_t + gamma V_{t+1} - V_t with V = 0 after the last token; A_t = delta_t + gamma lambda A_{t+1};
    returns_t = A_t + V_t (the value targets). All (B, T); zero where `mask` is False.
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[..., 0])
    next_advantage = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        live = mask[..., t]
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        current = delta + gamma * lam * next_advantage
        advantages[..., t] = torch.where(live, current, torch.zeros_like(current))
        # Padding after a response carries nothing back into it.
        next_value = torch.where(live, values[..., t], torch.zeros_like(next_value))
        next_advantage = advantages[..., t]
    return advantages, (advantages + values) * mask


def discounted_returns(rewards: Sequence[float], dones: Sequence[bool], gamma: float) -> list[float]:
    """Monte-Carlo returns G_t = r_t + gamma G_{t+1}, restarting after every episode end (`dones[t]`)."""
    out, running = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        if dones[t]:
            running = 0.0
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def reverse_cumsum(values: Tensor, mask: Tensor) -> Tensor:
    """acc_t = sum_{i >= t} values_i over the masked positions (OREO's accumulated log-ratio), (..., T)."""
    values = values * mask
    return values.flip(-1).cumsum(-1).flip(-1) * mask


def monte_carlo_value(outcomes: Sequence[float]) -> float:
    """A step prefix's value label: the mean outcome of its Monte-Carlo completions (DAPO Stage A)."""
    if not outcomes:
        raise ValueError("a Monte-Carlo value needs at least one completion")
    return sum(outcomes) / len(outcomes)
