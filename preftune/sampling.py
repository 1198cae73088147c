"""Sampling responses from a policy: batched, KV-cached generation with a progress bar."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from preftune.data.tokenize import encode_prompt


@dataclass
class Samples:
    """n responses per prompt: texts[i][j] is the j-th response to prompt i; ids are its tokens
    (ending with EOS when the model stopped by itself)."""

    prompts: list
    texts: list[list[str]]
    ids: list[list[list[int]]]
    prompt_ids: list[list[int]]
    tokens_per_s: float

    def flat(self):
        """(prompt index, prompt, response text, response ids) for every sample."""
        for i, (texts, ids) in enumerate(zip(self.texts, self.ids)):
            for text, tok in zip(texts, ids):
                yield i, self.prompts[i], text, tok


@torch.no_grad()
def sample(model, tokenizer, prompts: list, n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
           max_new_tokens: int = 64, batch_size: int = 64, seed: int = 0, progress: bool = True,
           desc: str = "sample", top_k: int = 0) -> Samples:
    """Generate `n` responses per prompt. temperature 0 is greedy decoding; top_k 0 keeps every token.

    Each batch is seeded from (seed, batch index), so a run is reproducible and independent of
    what was sampled before it.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    jobs = [(i, ids) for i, ids in enumerate(encoded) for _ in range(n)]
    texts = [[] for _ in prompts]
    out_ids = [[] for _ in prompts]
    generated_tokens, started = 0, time.perf_counter()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    batches = range(0, len(jobs), batch_size)
    for b, start in enumerate(tqdm(batches, desc=desc, disable=not progress, dynamic_ncols=True, mininterval=0.5)):
        chunk = jobs[start:start + batch_size]
        width = max(len(ids) for _, ids in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (_, ids) in enumerate(chunk):  # left padding, as generation needs
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        # callers derive seeds from seeds (MCTS: per tree and call), which can pass torch's 64-bit limit
        torch.manual_seed((seed * 1_000_003 + b) % 2**63)
        options = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k) if temperature > 0 \
            else dict(do_sample=False)
        output = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
                                **options)
        for row, (i, _) in enumerate(chunk):
            new = output[row, width:].tolist()
            if eos in new:
                new = new[:new.index(eos) + 1]
            else:
                new = [t for t in new if t != pad]
            generated_tokens += len(new)
            out_ids[i].append(new)
            texts[i].append(tokenizer.decode(new, skip_special_tokens=True))
    if was_training:
        model.train()
    elapsed = max(time.perf_counter() - started, 1e-9)
    return Samples(list(prompts), texts, out_ids, encoded, generated_tokens / elapsed)
