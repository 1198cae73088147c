"""`length-bias`: arithmetic answers that may trail filler words, labelled by a length-biased annotator.

Gold quality is correctness alone; length carries no information about it, because the
demonstrations append 0-3 filler words to right and wrong answers alike. The pairs, however, are
labelled by `Labeller(length_bias=0.5)` (tasks/labellers.py): half the prompts are judged by
length, so a method that fits the labels learns to pad. This is the verbosity exploitation that
SimPO (length-normalised reward) and LD-DPO (length desensitisation) are measured against:
gold reward at equal or shorter length.
"""
from __future__ import annotations

import random

from preftune.tasks.arithmetic import ArithmeticTask
from preftune.tasks.base import register_task

FILLERS = ("ok", "sure", "yes", "done")


@register_task("length-bias")
class LengthBiasTask(ArithmeticTask):
    """`37+48=` -> `85` or `85 sure ok`: scored by the leading number, labelled with a length bias."""

    name = "length-bias"
    default_labeller = {"length_bias": 0.5}

    def __init__(self, max_operand: int = 50, test_fraction: float = 0.1, seed: int = 0, max_fillers: int = 3):
        super().__init__(max_operand, test_fraction, seed)
        self.max_fillers = max_fillers

    def score(self, prompt: str, response: str) -> float:
        """1.0 when the first word of the response is the sum, whatever follows it."""
        words = response.split()
        return float(bool(words) and words[0] == self.answer(prompt))

    def demonstrations(self, n: int, noise: float = 0.0, seed: int = 0) -> list[dict]:
        """Arithmetic demonstrations with 0..max_fillers filler words drawn independently of correctness."""
        rng = random.Random(seed + 1)
        rows = super().demonstrations(n, noise, seed)
        for row in rows:
            words = [rng.choice(FILLERS) for _ in range(rng.randint(0, self.max_fillers))]
            row["completion"] = " ".join([row["completion"], *words])
        return rows
