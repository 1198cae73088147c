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


class _ChunkedHeadLogps(torch.autograd.Function):
    """log softmax(hidden @ weight.T + bias)[target] for N tokens, a chunk of tokens at a time.

    The plain path holds (N, V) logits, their float32 copy and, in backward, their gradient: with a
    32k vocabulary that is most of a DPO step's memory. Here forward keeps only each token's
    logsumexp (N floats) besides its inputs; backward recomputes one chunk's logits at a time from
    it, forms d logp / d logits = onehot(target) - softmax, and accumulates the gradients of hidden,
    weight and bias. Costs one extra lm-head matmul per token (4 instead of 3).

    Under autocast the forward matmul runs in the autocast dtype; backward is called outside
    autocast, so it casts to the dtype the forward used (`ctx.compute_dtype`) by hand.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk: int) -> Tensor:
        n = hidden.shape[0]
        out = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        compute_dtype = hidden.dtype
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            logits = torch.nn.functional.linear(hidden[part], weight, bias)
            compute_dtype = logits.dtype
            logits = logits.float()
            lse[part] = torch.logsumexp(logits, dim=-1)
            out[part] = logits.gather(-1, targets[part].unsqueeze(-1)).squeeze(-1) - lse[part]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk, ctx.compute_dtype = chunk, compute_dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        dtype, chunk = ctx.compute_dtype, ctx.chunk
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
        for start in range(0, hidden.shape[0], chunk):
            part = slice(start, start + chunk)
            h = hidden[part].to(dtype)
            g = grad_out[part].float().unsqueeze(-1)
            logits = torch.nn.functional.linear(h, w, b).float()
            # d logp_t / d logits = onehot(target_t) - softmax; times the incoming gradient g_t.
            grad_logits = torch.exp(logits - lse[part].unsqueeze(-1)).mul_(-g)
            grad_logits.scatter_add_(-1, targets[part].unsqueeze(-1), g)
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
            grad_logits = grad_logits.to(dtype)
            if grad_hidden is not None:
                grad_hidden[part] = grad_logits @ w
            if grad_weight is not None:
                grad_weight += (grad_logits.t() @ h).float()
        return (grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype),
                None if grad_bias is None else grad_bias.to(bias.dtype), None, None)


def chunked_token_logps(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                        chunk_tokens: int = 0) -> Tensor:
    """Per-token log-probs (N,) float32 of `targets` (N,) under the lm-head (weight (V, d), bias) applied
    to `hidden` (N, d), with gradients, never materialising more than `chunk_tokens` rows of logits.

    chunk_tokens: 0 picks as many tokens as fit about 32 MiB of float32 logits (262 for V = 32k).
    Same values and gradients as `token_logps_from_logits(linear(hidden, weight, bias), targets)`.
    """
    if chunk_tokens <= 0:
        chunk_tokens = max(1, (8 << 20) // weight.shape[0])
    return _ChunkedHeadLogps.apply(hidden, weight, bias, targets, chunk_tokens)
