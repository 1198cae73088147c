"""Measurements the claims need beyond evaluate_on_task: the diversity of a policy's samples (f-DPO)."""
from __future__ import annotations

import torch


@torch.no_grad()
def sample_entropy(policy, tokenizer, prompts: list[str], *, samples_per_prompt: int, max_new_tokens: int, seed: int,
                   batch_size: int = 256) -> dict:
    """entropy: the Monte-Carlo sequence entropy H(π(·|x)) ≈ mean over samples y ~ π of −log π(y|x), in
    nats (unbiased at temperature 1); distinct: the mean fraction of a prompt's samples that are
    distinct texts. Both rise with the diversity f-DPO trades against reward (offline.md §10)."""
    from preftune.eval.task_eval import sample_logps
    from preftune.sampling import sample

    samples = sample(policy, tokenizer, prompts, samples_per_prompt, 1.0, 1.0, max_new_tokens, batch_size, seed + 2,
                     False)
    logps = sample_logps(policy, samples, tokenizer.pad_token_id, batch_size)
    distinct = [len(set(texts)) / len(texts) for texts in samples.texts if texts]
    return {"entropy": float(-logps.mean()), "distinct": sum(distinct) / max(1, len(distinct))}
