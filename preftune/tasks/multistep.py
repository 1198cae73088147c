"""`multistep`: sums of several operands answered step by step, with every step checkable.

`12+7+30=` is answered `12+7=19;19+30=49`. The gold reward is final correctness (the last
step's result is the total); `step_scores` grades every step, as step-level methods (Step-DPO,
MCTS-DPO, DAPO's step critic, OREO) need. A step `x+y=z` is valid when x carries the previous
step's result (the first operand for step one), y is the next operand and z = x + y. An error
therefore shows as one invalid step, and later steps that carry the wrong value forward are
themselves valid, which is how a step-level label would see a propagated mistake.
"""
from __future__ import annotations

import random
import re
import zlib

from preftune.tasks.base import register_task

STEP = re.compile(r"^(\d+)\+(\d+)=(\d+)$")


@register_task("multistep")
class MultiStepTask:
    """Sums of `operands` integers in [0, max_operand), answered one addition per step."""

    name = "multistep"

    def __init__(self, operands: int = 3, max_operand: int = 50, train_size: int = 20000, test_size: int = 500,
                 seed: int = 0):
        if operands < 2 or max_operand < 2:
            raise ValueError("multistep: needs at least 2 operands and max_operand >= 2")
        space = max_operand ** operands  # a tenth of the prompts hash to the test split
        if train_size > 0.45 * space or test_size > 0.05 * space:
            raise ValueError(f"multistep: {train_size} train / {test_size} test prompts are too many for "
                             f"{space} distinct prompts (at most 45% / 5% of them)")
        self.operands, self.max_operand = operands, max_operand
        # A prompt's split is a hash of its text, so it never depends on how many prompts are drawn.
        rng = random.Random(seed)
        splits: dict[str, list[str]] = {"train": [], "test": []}
        seen: set[str] = set()
        while len(splits["train"]) < train_size or len(splits["test"]) < test_size:
            prompt = self.format_prompt([rng.randrange(max_operand) for _ in range(operands)])
            split = "test" if zlib.crc32(prompt.encode()) % 10 == 0 else "train"
            if prompt not in seen and len(splits[split]) < (test_size if split == "test" else train_size):
                seen.add(prompt)
                splits[split].append(prompt)
        self._splits = splits

    @staticmethod
    def format_prompt(numbers: list[int]) -> str:
        return "+".join(map(str, numbers)) + "="

    @staticmethod
    def parse_prompt(prompt: str) -> list[int]:
        return [int(x) for x in prompt.rstrip().rstrip("=").split("+")]

    def prompts(self, split: str, n: int | None = None) -> list[str]:
        if split not in self._splits:
            raise KeyError(f"multistep has splits 'train' and 'test', not {split!r}")
        return list(self._splits[split] if n is None else self._splits[split][:n])

    def steps(self, prompt: str, errors: dict[int, int] | None = None) -> list[str]:
        """The worked steps; `errors` {step: offset} puts a mistake there and carries it forward."""
        numbers = self.parse_prompt(prompt)
        total, out = numbers[0], []
        for i, y in enumerate(numbers[1:]):
            z = total + y + (errors or {}).get(i, 0)
            out.append(f"{total}+{y}={z}")
            total = z
        return out

    def answer(self, prompt: str) -> str:
        return ";".join(self.steps(prompt))

    def step_scores(self, prompt: str, response: str) -> list[float]:
        """1.0 or 0.0 for each expected step (a missing or malformed step scores 0)."""
        numbers = self.parse_prompt(prompt)
        written = response.strip().split(";")
        carried, scores = numbers[0], []
        for i, y in enumerate(numbers[1:]):
            match = STEP.match(written[i].strip()) if i < len(written) else None
            if match is None:
                scores.append(0.0)
                continue
            a, b, z = map(int, match.groups())
            scores.append(float(a == carried and b == y and z == a + b))
            carried = z
        return scores

    def score(self, prompt: str, response: str) -> float:
        """Final correctness: exactly the expected number of steps, the last one ending in the total."""
        written = response.strip().split(";")
        if len(written) != self.operands - 1:
            return 0.0
        match = STEP.match(written[-1].strip())
        return float(match is not None and int(match.group(3)) == sum(self.parse_prompt(prompt)))

    def metrics(self, prompts: list[str], responses: list[str]) -> dict[str, float]:
        """step_accuracy: mean step score; all_steps_valid: responses whose every step is valid."""
        per = [self.step_scores(p, r) for p, r in zip(prompts, responses)]
        n = max(len(per), 1)
        return {"step_accuracy": sum(sum(s) / len(s) for s in per) / n,
                "all_steps_valid": sum(all(v == 1.0 for v in s) for s in per) / n}

    def demonstrations(self, n: int, noise: float = 0.0, seed: int = 0) -> list[dict]:
        """Worked answers; a fraction `noise` has one step off by 1-10, carried through later steps."""
        rng = random.Random(seed)
        train = self.prompts("train")
        rows = []
        for _ in range(n):
            prompt = rng.choice(train)
            errors = None
            if rng.random() < noise:
                step = rng.randrange(self.operands - 1)
                right = self._running_total(prompt, step)
                errors = {step: rng.choice([d for d in range(-10, 11) if d != 0 and right + d >= 0])}
            rows.append({"prompt": prompt, "completion": ";".join(self.steps(prompt, errors))})
        return rows

    def _running_total(self, prompt: str, step: int) -> int:
        return sum(self.parse_prompt(prompt)[:step + 2])
