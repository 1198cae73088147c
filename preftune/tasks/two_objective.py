"""`two-objective`: arithmetic with two gold rewards that conflict, helpful (show the work) and concise.

A response is the sum, bare (`85`) or with its work shown (`85 as 37+48=85`). Both rewards
require the right sum and disagree on style:

    helpful = 1 for a right sum with correct work shown, 0.5 for a bare right sum, else 0
    concise = 1 for a bare right sum, 0.5 for a right sum with work shown, else 0

No response is best for both, so the expected rewards of policies trace a front: a policy that
shows its work with probability q (and is always right) scores (0.5 + 0.5q, 1 - 0.5q). Pairs are
labelled by `weight·helpful + (1 - weight)·concise` (weight 1: the helpfulness data of MODPO's
setting, offline.md §15) and every row carries both rewards of both responses
(`chosen_helpful`, `rejected_concise`, ...) for margin models and Pareto fronts. Evaluation
reports both means.
"""
from __future__ import annotations

import random

from preftune.tasks.arithmetic import ArithmeticTask
from preftune.tasks.base import register_task


@register_task("two-objective")
class TwoObjectiveTask:
    """Arithmetic scored by two conflicting gold rewards, `helpful` and `concise`."""

    name = "two-objective"
    objectives = ("helpful", "concise")

    def __init__(self, max_operand: int = 50, test_fraction: float = 0.1, seed: int = 0, weight: float = 1.0,
                 explained_fraction: float = 0.5):
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"two-objective: weight must lie in [0, 1], got {weight}")
        # The prompts, splits and (bare) demonstrations are arithmetic's; only scoring and style differ.
        self.arithmetic = ArithmeticTask(max_operand, test_fraction, seed)
        self.weight = weight
        self.explained_fraction = explained_fraction

    def prompts(self, split: str, n: int | None = None) -> list[str]:
        return self.arithmetic.prompts(split, n)

    def explained(self, prompt: str, answer: str) -> str:
        return f"{answer} as {prompt}{answer}"

    def style(self, prompt: str, response: str) -> str:
        """"bare" (the right sum alone), "explained" (the right sum with correct work) or "wrong"."""
        text, right = response.strip(), self.arithmetic.answer(prompt)
        if text == right:
            return "bare"
        if text == self.explained(prompt, right):
            return "explained"
        return "wrong"

    def objective_scores(self, prompt: str, response: str) -> dict[str, float]:
        style = self.style(prompt, response)
        return {"helpful": {"explained": 1.0, "bare": 0.5}.get(style, 0.0),
                "concise": {"bare": 1.0, "explained": 0.5}.get(style, 0.0)}

    def score(self, prompt: str, response: str) -> float:
        """The labelling and headline gold reward: weight·helpful + (1 - weight)·concise."""
        scores = self.objective_scores(prompt, response)
        return self.weight * scores["helpful"] + (1 - self.weight) * scores["concise"]

    def answer(self, prompt: str) -> str:
        """The response best under `weight` (ties, at weight 0.5, go to the explained one)."""
        right = self.arithmetic.answer(prompt)
        return self.explained(prompt, right) if self.weight >= 0.5 else right

    def metrics(self, prompts: list[str], responses: list[str]) -> dict[str, float]:
        """Mean of each gold reward, and the fraction of responses that show their work."""
        scores = [self.objective_scores(p, r) for p, r in zip(prompts, responses)]
        n = max(len(scores), 1)
        out = {f"gold/{k}": sum(s[k] for s in scores) / n for k in self.objectives}
        out["explained_fraction"] = sum(self.style(p, r) == "explained" for p, r in zip(prompts, responses)) / n
        return out

    def demonstrations(self, n: int, noise: float = 0.0, seed: int = 0) -> list[dict]:
        """Arithmetic demonstrations, a fraction `explained_fraction` of them with the work shown
        (a wrong answer's work shows the same wrong result, so its work is wrong too)."""
        rng = random.Random(seed + 2)
        rows = self.arithmetic.demonstrations(n, noise, seed)
        for row in rows:
            if rng.random() < self.explained_fraction:
                row["completion"] = self.explained(row["prompt"], row["completion"])
        return rows
