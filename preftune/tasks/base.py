"""The Task protocol: prompts, a gold oracle, and demonstration data."""
from __future__ import annotations

from typing import Callable, Protocol


class Task(Protocol):
    """A built-in task. `score` is the gold reward; higher is better.

    Optional members, used where present: `answer(prompt)` (a gold response, carried in rows as
    "gold"); `default_labeller` (options of tasks/labellers.py's Labeller: who labels the pairs
    when it is not the gold oracle); `metrics(prompts, responses)` (task-specific evaluation
    numbers, e.g. attack success rate); `objectives` with `objective_scores(prompt, response)`
    (several gold rewards); `step_scores(prompt, response)` (per-step correctness).
    """

    name: str

    def prompts(self, split: str, n: int | None = None) -> list[str]:
        """Prompts of a split ("train" or "test"); the splits never share a prompt."""

    def score(self, prompt: str, response: str) -> float:
        """Gold reward of a response (for arithmetic: 1.0 if correct, else 0.0)."""

    def demonstrations(self, n: int, noise: float = 0.0, seed: int = 0) -> list[dict]:
        """SFT rows {"prompt", "completion"}; a fraction `noise` of them carries a wrong answer."""


_TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str):
    def decorate(factory):
        _TASKS[name] = factory
        return factory
    return decorate


def get_task(name: str, **options) -> Task:
    if name not in _TASKS:
        raise KeyError(f"unknown task {name!r}; built-in tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name](**options)


def task_names() -> list[str]:
    return sorted(_TASKS)
