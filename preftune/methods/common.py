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
