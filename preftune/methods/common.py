"""Small primitives shared by several method files (offline.md §0 notation)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from preftune.records import Logps


def log_ratios(policy: Logps, reference: Logps) -> Tensor:
    """(B, K) sequence log-ratios log pi(y|x) - log pi_ref(y|x): the implicit reward over beta."""
    return policy.sum - reference.sum


def neg_log_sigmoid(z: Tensor) -> Tensor:
    """l(z) = -log sigmoid(z), computed stably (never log(sigmoid(z)))."""
    return -F.logsigmoid(z)


def log_odds(mean_logp: Tensor, max_prob: float = 1 - 1e-7) -> Tensor:
    """log(p / (1 - p)) of the geometric-mean token probability p = exp(mean log-prob) (ORPO, ASFT).

    exp(mean) is clamped below 1 so that log1p(-p) stays finite for a response the model is certain of.
    """
    p = mean_logp.exp().clamp(max=max_prob)
    return mean_logp - torch.log1p(-p)


def response_nll(policy: Logps, index: int = 0) -> Tensor:
    """(B,) token-mean negative log-likelihood of one response per example (the SFT term)."""
    return -policy.mean[:, index]


def score_margin(scores: Tensor, name: str) -> Tensor:
    """Chosen-minus-rejected margin of per-response scores given as a data extra.

    scores: (B, 2) or (B, 2, M) scores of the chosen (response 0) and rejected (response 1)
    response under one or M reward models; returns (B,) or (B, M). `name` names the extra in errors.
    """
    if scores.dim() < 2 or scores.shape[1] != 2:
        raise ValueError(f"data extra '{name}' must hold one score per response of the pair, shape (B, 2) or "
                         f"(B, 2, M); got shape {tuple(scores.shape)}")
    return scores[:, 0] - scores[:, 1]
