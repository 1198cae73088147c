"""Arithmetic under known label corruption: `noisy-labels` (flips) and `mixed-margins` (graded, BT labels).

Both keep arithmetic's prompts and demonstrations and differ only in who labels the pairs
(tasks/labellers.py), so a method's gold reward here against plain `arithmetic` measures its
robustness to that corruption:

- `noisy-labels`: the gold oracle's pairs, each swapped with probability ε = 0.2 (override with
  `data.task.labeller.flip_rate`): the symmetric noise that cDPO and robust DPO correct for, and
  the setting of ADPO's noise experiments;
- `mixed-margins`: a graded gold reward (1 for the sum, 1/(1 + |error|) for another integer) and
  Bradley-Terry labels at temperature τ = 0.1, so pairs range from near-certain (right vs far off)
  to coin flips (two nearby wrong answers). Rows carry both responses' labeller utilities and gold
  scores, the margins that β-DPO, MADPO and other margin-aware methods weigh (offline.md §8).
"""
from __future__ import annotations

from preftune.tasks.arithmetic import ArithmeticTask
from preftune.tasks.base import register_task


@register_task("noisy-labels")
class NoisyLabelsTask(ArithmeticTask):
    """Arithmetic whose pairs are flipped with probability 0.2 (labeller.flip_rate)."""

    name = "noisy-labels"
    default_labeller = {"flip_rate": 0.2}


@register_task("mixed-margins")
class MixedMarginsTask(ArithmeticTask):
    """Arithmetic with partial credit, labelled by a Bradley-Terry annotator (labeller.temperature = 0.1)."""

    name = "mixed-margins"
    default_labeller = {"temperature": 0.1}

    def score(self, prompt: str, response: str) -> float:
        """1.0 for the sum; 1/(1 + |answer - sum|) for another non-negative integer (off by one: 0.5); else 0."""
        text, right = response.strip(), int(self.answer(prompt))
        if not (text.isascii() and text.isdigit()):
            return 0.0
        return 1.0 / (1.0 + abs(int(text) - right))
