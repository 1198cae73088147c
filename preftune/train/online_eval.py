"""Evaluate the policy after an iteration: exact game metrics over the task's answer set (when it has
one, with forgetting across domains) and the judge's win-rate of held-out samples against the initial
policy's."""
from __future__ import annotations

import torch

from preftune.sampling import sample
from preftune.train.distributed import from_main
from preftune.train.online_judge import ask_judge
from preftune.train.online_state import OnlineLoop


@torch.no_grad()
def evaluate(loop: OnlineLoop, t: int) -> dict:
    """Exact game metrics of the policy's distribution over the task's answer set (when it has one),
    and the judge's win-rate of held-out samples against the initial policy's samples. Under several
    processes the main process evaluates (every process holds the same weights) and tells the others."""
    return from_main(loop.accelerator, evaluate_here(loop, t) if loop.accelerator.is_main_process else None)


def evaluate_here(loop: OnlineLoop, t: int) -> dict:
    from preftune.tasks.intransitive import game_metrics, style_distribution

    e, s = loop.cfg.eval, loop.cfg.sampler
    metrics: dict = {}
    if hasattr(loop.task, "preference_matrix") and hasattr(loop.task, "canonical_responses"):
        probs, mass = style_distribution(loop.model, loop.tokenizer, loop.eval_prompts,
                                         loop.task.canonical_responses())
        if t == 0:
            loop.initial_eval["probs"] = probs
        metrics.update(game_metrics(loop.task.preference_matrix(), probs, loop.initial_eval["probs"], e.gap_beta))
        metrics["answer_set_mass"] = float(mass.mean())
        for d, task in enumerate(loop.tasks if len(loop.tasks) > 1 else []):  # forgetting across domains
            scores = game_metrics(task.preference_matrix(), probs, loop.initial_eval["probs"])
            metrics.update({f"domain{d}/{k}": scores[k] for k in ("duality_gap", "win_rate_vs_initial")})
    texts = sample(loop.model, loop.tokenizer, loop.eval_prompts, e.samples_per_prompt, e.temperature, s.top_p,
                   s.max_new_tokens, s.batch_size, 424242, False).texts
    if t == 0 or "texts" not in loop.initial_eval:
        with loop.snapshots.swapped("initial"):
            loop.initial_eval["texts"] = sample(loop.model, loop.tokenizer, loop.eval_prompts,
                                                e.samples_per_prompt, e.temperature, s.top_p, s.max_new_tokens,
                                                s.batch_size, 525252, False).texts
    items = [(p, a, b) for p, mine, theirs in zip(loop.eval_prompts, texts, loop.initial_eval["texts"])
             for a, b in zip(mine, theirs)]
    verdicts = [v for v in ask_judge(loop, lambda: loop.judge.compare_many(items)) if v is not None]
    if verdicts:
        metrics["sampled_win_rate_vs_initial"] = sum(verdicts) / len(verdicts)
    metrics["gold_score"] = sum(loop.task.score(p, x) for p, xs in zip(loop.eval_prompts, texts) for x in xs) / \
        max(1, sum(map(len, texts)))
    return metrics
