"""Preference judges behind one protocol (base.py): task oracles, local reward / pairwise models, LLM-as-judge."""
from __future__ import annotations

import inspect

from preftune.judges.base import Judge, JudgeCapabilityError, JudgeError, JudgeStats, preference_matrix
from preftune.judges.oracle import TaskJudge

JUDGE_KINDS = ("task", "reward_model", "pairwise_model", "llm")


def judge_options(kind: str) -> tuple[str, ...]:
    """The names `judge.options` may hold for a judge kind (its constructor's arguments)."""
    if kind not in JUDGE_KINDS:
        raise ValueError(f"judge.kind must be one of {', '.join(JUDGE_KINDS)}, got {kind!r}")
    if kind == "task":
        return ()
    if kind == "llm":
        from preftune.judges.llm import LLMJudge

        classes = [LLMJudge]
    else:
        from preftune.judges.models import PairwiseModelJudge, RewardModelJudge

        classes = list((RewardModelJudge if kind == "reward_model" else PairwiseModelJudge).__mro__)
    names = [p.name for cls in classes if "__init__" in vars(cls)
             for p in inspect.signature(cls.__init__).parameters.values()
             if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    return tuple(dict.fromkeys(names))


def check_judge_options(kind: str, options: dict) -> None:
    """A misspelt option is an error when the config is read, listing the valid ones."""
    valid = judge_options(kind)
    unknown = [name for name in options if name not in valid]
    if unknown:
        raise ValueError(f"judge.options.{unknown[0]} is not an option of the {kind} judge; valid options: "
                         f"{', '.join(valid) or '(none: the task judge is the task oracle)'}")


def build_judge(kind: str, task=None, **options) -> Judge:
    """A judge by kind: "task" (the task's gold oracle), "reward_model" / "pairwise_model" (options: path,
    device, batch_size, max_length, allow_pickle, trust_remote_code), or "llm" (options: see LLMJudge)."""
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
           "check_judge_options", "judge_options", "preference_matrix"]
