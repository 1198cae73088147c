"""COFS-DPO's combination of successive domains' fast adapters (online.md §8 [R]), chosen on a replay
memory of every domain's last pairs."""
from __future__ import annotations

import random

import torch

from preftune.data.collate import collate
from preftune.data.tokenize import TokenizedExample
from preftune.logps import sequence_logps
from preftune.methods.dpo import dpo
from preftune.records import Logps
from preftune.train.online_collect import freeze
from preftune.train.online_replay import iteration_pairs
from preftune.train.online_state import OnlineLoop
from preftune.train.online_update import fast_term_beta


def cofs_combine(loop: OnlineLoop, domain: int) -> dict:
    """COFS-DPO (online.md §8 [R]): the fast adapter becomes w theta_{domain-1} + (1 - w) theta_domain, with w
    on a grid of 11 values minimising the fast adapter's DPO loss on a replay memory made of the last
    iteration's pairs of every domain so far (`cofs_memory` rows each), scored against pi_ref."""
    fast = [name for name in loop.snapshots.parameters if f".{loop.fast_slow.fast}." in name]
    old = loop.snapshots.saved[f"domain:{domain - 1}"]
    new = {name: loop.snapshots.parameters[name].detach().clone() for name in fast}
    memory = []
    for d in range(domain + 1):
        rows = [r for r in iteration_pairs(loop.cfg.run_dir, loop.last_iteration_of(d)) if len(r["response_ids"]) == 2]
        memory += random.Random(loop.cfg.train.seed + d).sample(rows, min(loop.cfg.schedule.fast_slow.cofs_memory,
                                                                          len(rows)))
    examples = freeze(loop, memory, [])
    beta = fast_term_beta(loop.objective)
    losses = {}
    for w in [k / 10 for k in range(11)]:
        with torch.no_grad():
            for name in fast:
                loop.snapshots.parameters[name].copy_(w * old[name] + (1 - w) * new[name])
        losses[w] = memory_dpo_loss(loop, examples, beta)
    best = min(losses, key=losses.get)
    with torch.no_grad():
        for name in fast:
            loop.snapshots.parameters[name].copy_(best * old[name] + (1 - best) * new[name])
    return {"cofs_weight": best, "cofs_memory_loss": round(losses[best], 6),
            "cofs_memory_loss_without": round(losses[0.0], 6), "cofs_memory_rows": len(examples)}


@torch.no_grad()
def memory_dpo_loss(loop: OnlineLoop, examples: list[TokenizedExample], beta: float, batch_size: int = 64) -> float:
    total = 0.0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size], loop.tokenizer.pad_token_id).to(loop.device)
        policy = sequence_logps(loop.model, batch)
        reference = Logps(sum=batch.extras["logps:reference"].to(policy.sum.dtype), length=policy.length)
        total += float(dpo(policy, reference, beta=beta).loss.sum())
    return total / max(1, len(examples))
