"""The Judge protocol: score one response, compare two, or rank k; every judge answers the same calls.

A judge returns probabilities, never a made-up verdict: `compare` gives P(a > b) in [0, 1], or
None when it could not decide (a reply it could not parse, a request that failed after its
retries). None is counted in the judge's `stats` and the pair builders drop such pairs; it is
never turned into a preference (0.5 would be a tie, which is a preference too).

Judges that only compare (a pairwise preference model, an LLM asked "A or B") rank by Copeland
counts over all pairs; judges that score (a reward model, a task's gold reward) compare by
Bradley-Terry, P = sigmoid(s_a - s_b), unless they know better (the intransitive task's panel).
The batched `compare_many` is what the online loop calls; the LLM judge runs it concurrently.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, fields
from typing import Sequence

Comparison = tuple[str, str, str]  # (prompt, a, b)


class JudgeCapabilityError(NotImplementedError):
    """The judge cannot answer this kind of question (e.g. a pairwise model asked for a score)."""


class JudgeError(RuntimeError):
    """A judge that cannot do its job (a rejected API key, too many failed requests): the run stops and says why."""


@dataclass
class JudgeStats:
    """What a judge did, for the run's metrics; thread-safe counters."""

    requests: int = 0          # questions asked (one per compare / score / rank)
    answered: int = 0          # with a usable verdict
    unparseable: int = 0       # replies that could not be read as a verdict (no preference returned)
    failed: int = 0            # requests that failed after every retry (no preference returned)
    retries: int = 0           # extra attempts after a timeout or a retryable error
    timeouts: int = 0
    first_shown_won: int = 0   # pairwise verdicts for the candidate shown first (position-bias monitor)
    decided: int = 0           # pairwise verdicts with a winner (P != 1/2)
    first_error: str = ""      # the text of the first failure (an HTTP status, a timeout, a reply that is no verdict)
    _marks: list = field(default_factory=list, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    def error(self, text: str, **counts: int) -> None:
        """Count a failure (failed=1 or unparseable=1) and remember its text."""
        self.add(**counts)
        with self._lock:
            self.first_error = self.first_error or text
            for mark in self._marks:
                mark["first_error"] = mark["first_error"] or text

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def mark(self) -> dict:
        """The counters now; `since(mark)` gives what happened after, with the text of its first failure."""
        with self._lock:
            mark = {**self.as_dict(), "first_error": ""}
            self._marks.append(mark)
        return mark

    def since(self, mark: dict) -> dict:
        with self._lock:
            self._marks = [m for m in self._marks if m is not mark]
            now = self.as_dict()
        return {**{k: now[k] - mark[k] for k in now if k != "first_error"}, "first_error": mark["first_error"]}


class Judge:
    """Base class: subclasses implement `score` or `compare` (or both); the rest follows."""

    def __init__(self) -> None:
        self.stats = JudgeStats()

    def score(self, prompt: str, response: str) -> float | None:
        raise JudgeCapabilityError(f"{type(self).__name__} compares responses; it does not score one alone")

    def compare(self, prompt: str, a: str, b: str) -> float | None:
        """P(a > b); by default Bradley-Terry on scores."""
        if a == b:
            return 0.5
        sa, sb = self.score(prompt, a), self.score(prompt, b)
        if sa is None or sb is None:
            return None
        return 1 / (1 + math.exp(sb - sa))

    def compare_many(self, items: Sequence[Comparison]) -> list[float | None]:
        return [self.compare(*item) for item in items]

    def rank(self, prompt: str, responses: Sequence[str]) -> list[int] | None:
        """Indices of `responses`, best first: by score if the judge scores, else by Copeland count
        (sum over opponents of P(y > y')). None if any needed verdict is missing."""
        try:
            scores = [self.score(prompt, r) for r in responses]
        except JudgeCapabilityError:
            matrix = preference_matrix(self, [(prompt, list(responses))])[0]
            if any(v is None for row in matrix for v in row):
                return None
            scores = [sum(row) for row in matrix]
        if any(s is None for s in scores):
            return None
        return sorted(range(len(responses)), key=lambda k: -scores[k])


def preference_matrix(judge: Judge, groups: Sequence[tuple[str, Sequence[str]]],
                      opponents: Sequence[Sequence[str]] | None = None) -> list[list[list[float | None]]]:
    """P[g][i][j] = P(response i > response j) for each (prompt, responses) group, in one batched call.

    Without `opponents`: a square matrix per group, each unordered pair asked once (P[j][i] = 1 - P[i][j],
    diagonal 1/2; identical texts are 1/2 without asking). With `opponents` (one list per group):
    P[g][i][j] = P(response i > opponent j), a rectangular matrix.
    """
    items, where = [], []
    out: list[list[list[float | None]]] = []
    for g, (prompt, responses) in enumerate(groups):
        if opponents is None:
            k = len(responses)
            out.append([[0.5 if i == j else None for j in range(k)] for i in range(k)])
            pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
            right = responses
        else:
            right = opponents[g]
            out.append([[None] * len(right) for _ in responses])
            pairs = [(i, j) for i in range(len(responses)) for j in range(len(right))]
        for i, j in pairs:
            if responses[i] == right[j]:
                out[g][i][j] = 0.5
                if opponents is None:
                    out[g][j][i] = 0.5
                continue
            items.append((prompt, responses[i], right[j]))
            where.append((g, i, j))
    for (g, i, j), p in zip(where, judge.compare_many(items)):
        out[g][i][j] = p
        if opponents is None:
            out[g][j][i] = None if p is None else 1 - p
    return out
