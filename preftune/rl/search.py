"""Value-guided step-level beam search: OREO's test-time use of its value model (official batch_sbs.py).

Per prompt, keep `beams` partial solutions. Each round samples `beams` next steps for every partial
solution (a step ends at the separator or at EOS), scores each extension with the value model at its
last token, moves the extensions that ended to the finished answers and keeps the `beams` best of the
rest. When none is left, the answer is the finished one of highest value. All prompts advance together
in one sampling call per round.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from preftune.data.tokenize import encode_prompt
from preftune.rl.rewards import model_scores
from preftune.rl.segment import first_step
from preftune.sampling import sample


@dataclass
class SearchResult:
    ids: list[int]
    value: float
    text: str


@torch.no_grad()
def value_guided_search(policy, value_model, tokenizer, prompts: list, beams: int = 4, separator: str = "\n\n",
                        max_new_tokens: int = 64, max_steps: int = 20, temperature: float = 1.0,
                        seed: int = 0) -> list[SearchResult]:
    if beams < 1:
        raise ValueError(f"beams must be at least 1, got {beams}")
    eos = tokenizer.eos_token_id
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
    alive: list[list[list[int]]] = [[[]] for _ in prompts]
    finished: list[list[tuple[list[int], float]]] = [[] for _ in prompts]

    def decode(token: int) -> str:
        return tokenizer.decode([token], skip_special_tokens=False)

    for round_ in range(max_steps):
        jobs = [(i, state) for i, states in enumerate(alive) for state in states]
        if not jobs:
            break
        room = [max_new_tokens - len(state) for _, state in jobs]
        samples = sample(policy, tokenizer, [prompt_ids[i] + state for i, state in jobs], beams, temperature, 1.0,
                         max(room), 64, seed * 1_000_003 + round_, False)
        extensions = []
        for (i, state), budget, continuations in zip(jobs, room, samples.ids):
            for ids in continuations:
                step = first_step(ids[:budget], decode, separator)
                done = not step or step[-1] == eos or len(state) + len(step) >= max_new_tokens
                extensions.append((i, state + step, done))
        values = model_scores(value_model, [prompt_ids[i] for i, _, _ in extensions], [s for _, s, _ in extensions],
                              tokenizer.pad_token_id)
        candidates: list[list[tuple[float, list[int]]]] = [[] for _ in prompts]
        for (i, ids, done), value in zip(extensions, values):
            (finished[i].append((ids, value[0])) if done else candidates[i].append((value[0], ids)))
        alive = [[ids for _, ids in sorted(c, key=lambda x: -x[0])[:beams]] for c in candidates]
    results = []
    for i in range(len(prompts)):
        pool = finished[i] or [(ids, 0.0) for ids in alive[i]] or [([], 0.0)]
        ids, value = max(pool, key=lambda x: x[1])
        results.append(SearchResult(ids, value, tokenizer.decode(ids, skip_special_tokens=True)))
    return results
