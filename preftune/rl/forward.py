"""Forward passes of the RL update: per-token log-probs (the library's fast path when nothing else is
needed), and, when a loss asks, the per-token entropy, the full next-token distributions (for an exact
KL) and the last hidden states (for a value head on the policy's backbone). Everything is (B, K, T...)
aligned with `Logps.tokens`: position t holds what the model says about response token t.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from preftune.data.collate import Batch
from preftune.fastpath import FastPathOptions, batch_logps
from preftune.records import Logps


@dataclass
class PolicyForward:
    logps: Logps
    entropy: Tensor | None = None     # (B, K, T)
    log_probs: Tensor | None = None   # (B, K, T, V)
    hidden: Tensor | None = None      # (B, K, T, H)


def policy_forward(model, batch: Batch, *, entropy: bool = False, distribution: bool = False, hidden: bool = False,
                   fast: FastPathOptions | None = None) -> PolicyForward:
    if not (entropy or distribution or hidden):
        return PolicyForward(batch_logps(model, batch, token_level=True, options=fast))
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                output_hidden_states=hidden)
    shape = (batch.num_examples, batch.num_responses, batch.input_ids.shape[1] - 1)
    mask = batch.response_mask[:, 1:].reshape(shape)
    log_probs = torch.log_softmax(out.logits[:, :-1].float(), -1)
    picked = log_probs.gather(-1, batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1).reshape(shape)
    result = PolicyForward(Logps.from_tokens(picked, mask))
    if entropy:
        values = -(log_probs.exp() * log_probs).sum(-1).reshape(shape)
        result.entropy = torch.where(mask, values, torch.zeros_like(values))
    if distribution:
        result.log_probs = log_probs.reshape(*shape, -1)
    if hidden:
        result.hidden = out.hidden_states[-1][:, :-1].reshape(*shape, -1)
    return result


@torch.no_grad()
def next_token_log_probs(model, batch: Batch) -> Tensor:
    """(B, K, T, V) a frozen model's full next-token log-probs at the response positions (for exact KL)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    log_probs = torch.log_softmax(out.logits[:, :-1].float(), -1)
    return log_probs.reshape(batch.num_examples, batch.num_responses, batch.input_ids.shape[1] - 1, -1)


def exact_kl(policy_log_probs: Tensor, reference_log_probs: Tensor, mask: Tensor) -> Tensor:
    """(B, K, T) KL(pi(.|s_t) || pi_ref(.|s_t)) summed over the vocabulary, zero off the response."""
    kl = (policy_log_probs.exp() * (policy_log_probs - reference_log_probs)).sum(-1)
    return torch.where(mask, kl, torch.zeros_like(kl))


def value_forward(value_model, batch: Batch, shape_like: Tensor) -> Tensor:
    """(B, K, T, outputs) a separate value model's values at the state before each response token."""
    values = value_model(batch.input_ids, batch.attention_mask)[:, :-1]
    return values.reshape(*shape_like.shape, -1)
