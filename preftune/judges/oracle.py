"""The built-in tasks' gold oracles as judges."""
from __future__ import annotations

from preftune.judges.base import Judge


class TaskJudge(Judge):
    """A built-in task's gold oracle: its exact preference when it has one (`task.compare`, e.g. the
    intransitive task's annotator panel), otherwise its gold reward `task.score`.

    With scores, compare is a hard verdict (1 if a scores higher, 1/2 on a tie) rather than
    Bradley-Terry: the gold rewards of the tasks (correct / incorrect) are not BT utilities.
    """

    def __init__(self, task):
        super().__init__()
        self.task = task

    def score(self, prompt: str, response: str) -> float:
        self.stats.add(requests=1, answered=1)
        return float(self.task.score(prompt, response))

    def compare(self, prompt: str, a: str, b: str) -> float:
        if hasattr(self.task, "compare"):
            p = float(self.task.compare(prompt, a, b))
        else:
            sa, sb = self.task.score(prompt, a), self.task.score(prompt, b)
            p = 1.0 if sa > sb else 0.0 if sa < sb else 0.5
        self.stats.add(requests=1, answered=1, decided=int(p != 0.5), first_shown_won=int(p > 0.5))
        return p
