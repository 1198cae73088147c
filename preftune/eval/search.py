"""Likelihood search: beam search on a policy (From r to Q*, Rafailov et al. 2024; offline.md §14).

For a DPO-trained policy, log pi(y|x) = log pi_ref(y|x) + r(x,y)/beta - V*(x)/beta, so searching
for a high likelihood under pi is searching for a high r/beta + log pi_ref: reward search without
a reward model. The paper finds that a few beams (up to about 5) raise the win-rate over
sampling and that many beams make responses longer and worse.

`beam_search_core` works on any next-token log-prob function (the toy LMs of tabular/ and a
Hugging Face causal LM alike); `beam_search` runs it on a model and a tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from preftune.data.tokenize import encode_prompt

Prefix = tuple[int, ...]


@dataclass
class BeamResult:
    """The best hypothesis of one prompt and every hypothesis the search completed.

    ids: the generated token ids (EOS included when the response stopped by itself); score: its
    search score (log pi(y|x) for plain likelihood search); finished: (ids, score) of every
    completed hypothesis, in the order they completed; the result is the best of them.
    """

    ids: Prefix
    score: float
    finished: list[tuple[Prefix, float]] = field(default_factory=list)
    text: str = ""


def beam_search_core(next_logprobs: Callable[[list[Prefix]], Tensor], eos: int, beams: int, max_length: int,
                     monotone: bool = True) -> BeamResult:
    """Beam search over token sequences.

    next_logprobs(prefixes) -> (n, V) scores of each next token after each prefix (log-probs for
    likelihood search). At each step every alive hypothesis is extended by every token; the
    candidates are ranked by score (ties: earlier hypothesis, then lower token id); an EOS
    candidate ranked among the first `beams` completes, and the best `beams` non-EOS candidates
    stay alive. Hypotheses still alive after max_length tokens complete without EOS. With
    monotone (every step score <= 0, as log-probs are), the search stops as soon as no alive
    hypothesis can beat the best completed one. Returns the best completed hypothesis.
    """
    if beams < 1:
        raise ValueError(f"beams must be at least 1, got {beams}")
    alive: list[tuple[Prefix, float]] = [((), 0.0)]
    finished: list[tuple[Prefix, float]] = []
    for _ in range(max_length):
        scores = next_logprobs([prefix for prefix, _ in alive]).double()
        base = torch.tensor([score for _, score in alive], dtype=torch.float64)
        total = (base.unsqueeze(-1) + scores).flatten().tolist()
        vocab = scores.shape[-1]
        order = sorted(range(len(total)), key=lambda i: -total[i])  # stable: ties keep index order
        next_alive = []
        for rank, index in enumerate(order):
            hypothesis, token = divmod(index, vocab)
            candidate = (alive[hypothesis][0] + (token,), total[index])
            if token == eos:
                if rank < beams:
                    finished.append(candidate)
            elif len(next_alive) < beams:
                next_alive.append(candidate)
            if rank >= beams and len(next_alive) == beams:
                break
        alive = next_alive
        if not alive or (monotone and finished and max(s for _, s in finished) >= max(s for _, s in alive)):
            break
    else:
        finished.extend(alive)  # reached max_length: the alive hypotheses complete without EOS
    if not finished:
        finished = alive
    ids, score = max(finished, key=lambda h: h[1])  # first of equal scores
    return BeamResult(ids, score, finished)


@torch.no_grad()
def beam_search(policy, tokenizer, prompts: Sequence, beams: int = 4, max_new_tokens: int = 16,
                reference=None, reward_weight: float = 1.0) -> list[BeamResult]:
    """Beam-search decode each prompt with `policy` (a causal LM); returns one BeamResult per prompt.

    Plain likelihood search scores a response by log pi(y|x). With a `reference` model and
    reward_weight lambda the score is log pi_ref(y|x) + lambda * [log pi(y|x) - log pi_ref(y|x)],
    i.e. r/beta-weighted search with the DPO implicit reward, token by token (the per-token credits
    sum to the sequence reward); lambda = 1 is likelihood search again, lambda > 1 extrapolates
    the implicit reward.
    """
    was_training = policy.training
    policy.eval()
    device = next(policy.parameters()).device
    results = []
    for prompt in prompts:
        prompt_ids = encode_prompt(tokenizer, prompt)

        def next_logprobs(prefixes: list[Prefix]) -> Tensor:
            rows = [prompt_ids + list(prefix) for prefix in prefixes]
            logp = _last_token_logprobs(policy, rows, tokenizer.pad_token_id, device)
            if reference is None or reward_weight == 1.0:
                return logp
            ref = _last_token_logprobs(reference, rows, tokenizer.pad_token_id, device)
            return ref + reward_weight * (logp - ref)

        result = beam_search_core(next_logprobs, tokenizer.eos_token_id, beams, max_new_tokens,
                                  monotone=reference is None or 0.0 <= reward_weight <= 1.0)
        result.text = tokenizer.decode(list(result.ids), skip_special_tokens=True)
        results.append(result)
    if was_training:
        policy.train()
    return results


def _last_token_logprobs(model, rows: list[list[int]], pad_token_id: int, device) -> Tensor:
    """(n, V) log-probs of the next token after each row. Rows are right-padded, so positions are
    the unpadded ones and each row's last real token sees only its own tokens (causal attention)."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row)
        attention[i, :len(row)] = 1
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False).logits
    last = torch.tensor([len(r) - 1 for r in rows], device=device)
    return torch.log_softmax(logits[torch.arange(len(rows), device=device), last].float(), dim=-1).cpu()
