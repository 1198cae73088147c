"""`arithmetic`: two-operand addition such as `37+48=` -> `85`, scored by exact correctness."""
from __future__ import annotations

import random

from preftune.tasks.base import register_task


@register_task("arithmetic")
class ArithmeticTask:
    """Addition of two integers in [0, max_operand).

    All (a, b) pairs are shuffled once with `seed`; the first `test_fraction` of them are the
    test prompts, so no test prompt is ever seen in training. The oracle is exact: a response
    scores 1.0 when, stripped of surrounding whitespace, it is the decimal sum.

    partial_credit: a wrong integer answer scores 1/(1 + |answer - sum|) instead of 0 (anything
    else still scores 0), so that k samples of one prompt get graded ratings, as the rated lists
    of curriculum and listwise methods expect (off by one: 0.5, off by nine: 0.1).
    """

    name = "arithmetic"

    def __init__(self, max_operand: int = 50, test_fraction: float = 0.1, seed: int = 0,
                 partial_credit: bool = False):
        if max_operand < 2:
            raise ValueError("arithmetic: max_operand must be at least 2")
        self.partial_credit = partial_credit
        pairs = [(a, b) for a in range(max_operand) for b in range(max_operand)]
        random.Random(seed).shuffle(pairs)
        n_test = max(1, int(len(pairs) * test_fraction))
        self.max_operand = max_operand
        self._splits = {"test": pairs[:n_test], "train": pairs[n_test:]}

    @staticmethod
    def format_prompt(a: int, b: int) -> str:
        return f"{a}+{b}="

    @staticmethod
    def parse_prompt(prompt: str) -> tuple[int, int]:
        left, right = prompt.rstrip().rstrip("=").split("+")
        return int(left), int(right)

    def prompts(self, split: str, n: int | None = None) -> list[str]:
        if split not in self._splits:
            raise KeyError(f"arithmetic has splits 'train' and 'test', not {split!r}")
        pairs = self._splits[split] if n is None else self._splits[split][:n]
        return [self.format_prompt(a, b) for a, b in pairs]

    def answer(self, prompt: str) -> str:
        a, b = self.parse_prompt(prompt)
        return str(a + b)

    def score(self, prompt: str, response: str) -> float:
        answer, text = self.answer(prompt), response.strip()
        if text == answer:
            return 1.0
        if self.partial_credit and text.isascii() and text.isdigit():
            return 1.0 / (1.0 + abs(int(text) - int(answer)))
        return 0.0

    def wrong_answer(self, prompt: str, rng: random.Random) -> str:
        """A plausible mistake: the sum off by 1-10 (never negative, never the right answer)."""
        right = int(self.answer(prompt))
        candidates = [right + d for d in range(-10, 11) if d != 0 and right + d >= 0]
        return str(rng.choice(candidates))

    def demonstrations(self, n: int, noise: float = 0.0, seed: int = 0) -> list[dict]:
        """`n` SFT rows drawn from the train prompts (with repetition when n exceeds them).

        A fraction `noise` of the rows has a wrong answer: the SFT model then learns to make
        mistakes at about that rate, which preference training can remove.
        """
        rng = random.Random(seed)
        train = self.prompts("train")
        rows = []
        for _ in range(n):
            prompt = rng.choice(train)
            wrong = rng.random() < noise
            rows.append({"prompt": prompt,
                         "completion": self.wrong_answer(prompt, rng) if wrong else self.answer(prompt)})
        return rows
