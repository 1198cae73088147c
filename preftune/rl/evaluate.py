"""Evaluate an RL policy on the task's held-out prompts: gold reward (sampled and greedy), each gold
aspect, the task's own metrics, KL to the reference, length; and, with a value model, value-guided step
beam search (OREO's test-time use of its critic)."""
from __future__ import annotations

import torch

from preftune.eval.task_eval import gold_scores, sample_logps
from preftune.rl.context import RLContext
from preftune.rl.rewards import gold_aspects
from preftune.sampling import sample

EVAL_SEED = 4242


@torch.no_grad()
def evaluate(ctx: RLContext, reference=None, search: bool = False) -> dict:
    cfg, task, tokenizer, policy = ctx.cfg, ctx.task, ctx.tokenizer, ctx.policy
    e = cfg.eval
    prompts = task.prompts("test", e.prompts)
    sampled = sample(policy, tokenizer, prompts, e.samples_per_prompt, e.temperature, 1.0, e.max_new_tokens,
                     cfg.rollout.batch_size, EVAL_SEED, False)
    flat = list(sampled.flat())
    texts, flat_prompts = [t for _, _, t, _ in flat], [p for _, p, _, _ in flat]
    greedy = sample(policy, tokenizer, prompts, 1, 0.0, 1.0, e.max_new_tokens, cfg.rollout.batch_size, EVAL_SEED, False)
    metrics = {"gold_reward": float(gold_scores(task, sampled).mean()),
               "gold_reward_greedy": float(gold_scores(task, greedy).mean()),
               "length": sum(len(ids) for *_, ids in flat) / len(flat)}
    if ctx.aspect_names:
        per = gold_aspects(task, ctx.aspect_names, flat_prompts, texts)
        metrics.update({f"aspect/{n}": sum(a[k] for a in per) / len(per) for k, n in enumerate(ctx.aspect_names)})
    if hasattr(task, "metrics"):
        metrics.update({f"task/{k}": v for k, v in task.metrics(flat_prompts, texts).items()})
    if reference is not None:
        log_ratio = sample_logps(policy, sampled, tokenizer.pad_token_id) - \
            sample_logps(reference, sampled, tokenizer.pad_token_id)
        metrics["kl"] = float(log_ratio.mean())
    if search and ctx.value_model is not None and cfg.oreo.beams:
        from preftune.rl.search import value_guided_search

        found = value_guided_search(policy, ctx.value_model, tokenizer, prompts, cfg.oreo.beams, cfg.steps.separator,
                                    e.max_new_tokens, seed=EVAL_SEED)
        metrics["search_gold_reward"] = sum(task.score(p, r.text) for p, r in zip(prompts, found)) / len(prompts)
    return {f"eval/{k}": v for k, v in metrics.items()}
