"""Preference judges behind one protocol (base.py): task oracles, local reward / pairwise models, LLM-as-judge."""
from __future__ import annotations

from preftune.judges.base import Judge, JudgeCapabilityError, JudgeError, JudgeStats, preference_matrix
from preftune.judges.oracle import TaskJudge

JUDGE_KINDS = ("task", "reward_model", "pairwise_model", "llm")


def build_judge(kind: str, task=None, **options) -> Judge:
    """A judge by kind: "task" (the task's gold oracle), "reward_model" / "pairwise_model" (options: path,
    device, batch_size, max_length), or "llm" (options: see LLMJudge)."""
    if kind == "task":
        if task is None:
            raise ValueError("the task judge needs a built-in task")
        return TaskJudge(task)
    if kind in ("reward_model", "pairwise_model"):
        from preftune.judges.models import PairwiseModelJudge, RewardModelJudge

        if not options.get("path"):
            raise ValueError(f"the {kind} judge needs judge.path (a directory written by save_pretrained)")
        return (RewardModelJudge if kind == "reward_model" else PairwiseModelJudge)(**options)
    if kind == "llm":
        from preftune.judges.llm import LLMJudge

        return LLMJudge(**options)
    raise ValueError(f"unknown judge kind {kind!r}; use one of {', '.join(JUDGE_KINDS)}")


__all__ = ["JUDGE_KINDS", "Judge", "JudgeCapabilityError", "JudgeError", "JudgeStats", "TaskJudge", "build_judge",
           "preference_matrix"]
