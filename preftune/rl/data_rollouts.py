"""Make data for grpo, mo_grpo, ppo and rto: G responses per prompt from the current policy, scored.

Iteration t takes the next `rollout.prompts_per_iteration` training prompts (consecutive slices of the
seeded shuffle, wrapping around), samples G responses to each (seeded by (seed, t)) and attaches what the
objective asks for: the reward (the task's gold score, its per-aspect scores, or a reward model's), the
group of each response (its prompt), and the frozen per-token extras (context.attach_frozen).
"""
from __future__ import annotations

import random

from preftune.rl.context import RLContext, attach_frozen
from preftune.rl.rewards import gold_aspects, model_scores
from preftune.rl.rows import Row
from preftune.sampling import sample


class RolloutMaker:
    def __init__(self, ctx: RLContext):
        self.ctx = ctx
        self.prompts = ctx.task.prompts("train")
        random.Random(ctx.cfg.train.seed).shuffle(self.prompts)

    def prompts_for(self, t: int) -> list:
        n = self.ctx.cfg.rollout.prompts_per_iteration
        return [self.prompts[(t * n + i) % len(self.prompts)] for i in range(n)]

    def make(self, t: int) -> tuple[list[Row], list[list[int]], dict]:
        ctx, r = self.ctx, self.ctx.cfg.rollout
        prompts = self.prompts_for(t)
        samples = sample(ctx.policy, ctx.tokenizer, prompts, r.samples_per_prompt, r.temperature, r.top_p,
                         r.max_new_tokens, r.batch_size, ctx.seed(t, 1), False)
        flat = list(samples.flat())
        rows = [Row(samples.prompt_ids[i], [ids], {"group": i}) for i, _, _, ids in flat]
        texts, sampled_prompts = [text for _, _, text, _ in flat], [p for _, p, _, _ in flat]
        stats = score_rows(ctx, rows, sampled_prompts, texts)
        attach_frozen(ctx, rows)
        if ctx.wants("group"):  # GRPO normalises within a prompt's group: a batch holds whole groups
            units = [list(range(g * r.samples_per_prompt, (g + 1) * r.samples_per_prompt)) for g in range(len(prompts))]
        else:
            units = [[i] for i in range(len(rows))]
        stats.update({"rollout/samples": len(rows),
                      "rollout/length": sum(len(row.responses[0]) for row in rows) / len(rows)})
        return rows, units, stats


def score_rows(ctx: RLContext, rows: list[Row], prompts: list, texts: list[str]) -> dict:
    """Set each row's `score` or `aspects` from the configured source; return the gold means for logging."""
    source, task = ctx.cfg.reward.source, ctx.task
    gold = [task.score(p, text) for p, text in zip(prompts, texts)]
    stats = {"rollout/gold": sum(gold) / len(gold)}
    names = ctx.aspect_names
    gold_by_aspect = gold_aspects(task, names, prompts, texts) if names else None
    if gold_by_aspect:
        stats.update({f"rollout/gold_{n}": sum(a[k] for a in gold_by_aspect) / len(gold_by_aspect)
                      for k, n in enumerate(names)})
    if source == "task":
        predicted = [[g] for g in gold]
    elif source == "aspects":
        predicted = gold_by_aspect
    elif source in ("model", "learned"):
        predicted = model_scores(ctx.reward_model, [r.prompt_ids for r in rows], [r.responses[0] for r in rows], ctx.pad)
        stats.update({f"rollout/predicted_{n}": sum(p[k] for p in predicted) / len(predicted)
                      for k, n in enumerate(names or ["reward"])})
    else:
        raise ValueError(f"reward.source must be task, aspects, model or learned, got {source!r}")
    for row, values in zip(rows, predicted):
        if ctx.wants("aspects"):
            row.values["aspects"] = list(values)
        if ctx.wants("score"):
            if len(values) != 1:
                raise ValueError(f"{ctx.objective.describe()} takes one reward per response; reward.source "
                                 f"{source!r} gives {len(values)} aspects (use mo_grpo, or weight them there)")
            row.values["score"] = values[0]
    return stats
