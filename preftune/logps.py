"""Sequence and token log-probs of responses: one forward pass for all K responses of a batch.

Labels are the input ids shifted by one; only response tokens count (prompt and padding are
masked), so `Logps.sum` is log pi(y|x) summed over the response (offline.md §0).
"""
from __future__ import annotations

import torch
from torch import Tensor

from preftune.data.collate import Batch
from preftune.records import Logps


def token_logps_from_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[target] per position, in float32 for accuracy under bf16 weights.

    Computed as logit[target] - logsumexp(logits), which avoids materialising a second
    (N, T, V) tensor of log-probs.
    """
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logps(model, batch: Batch, token_level: bool = False) -> Logps:
    """Log-probs of every response in `batch` under `model` (one forward over B*K rows).

    Returns a Logps with (B, K) sums and lengths, and (B, K, T-1) per-token log-probs and mask
    when `token_level` is set (a method asked for them).
    """
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    targets = batch.input_ids[:, 1:]
    mask = batch.response_mask[:, 1:]
    per_token = token_logps_from_logits(logits[:, :-1], targets) * mask
    b, k = batch.num_examples, batch.num_responses
    per_token = per_token.view(b, k, -1)
    mask = mask.view(b, k, -1)
    length = mask.sum(-1).to(per_token.dtype)
    if token_level:
        return Logps(sum=per_token.sum(-1), length=length, tokens=per_token, mask=mask)
    return Logps(sum=per_token.sum(-1), length=length)
