"""The judge's rounds in an iteration: their counters, and the stop when the judge fails.

Every round of questions (judging an iteration's samples, the evaluation's win-rate) adds its counters
(requests, answered, failed, unparseable, retries, ...) and the text of its first failure to the
iteration's `loop.judge_round`; `iteration_counts` sums them over the processes (each judges its
share), and each iteration prints them and keeps them in online_summary.json. A judge that fails must
not leave a run training on nothing: when more than `judge.max_failure_rate` of the iteration's
requests failed or came back as no verdict, `check_judge` stops the run with JudgeError (on every
process alike). A rejected API key stops earlier, at the judge's first request (judges/llm.py).
"""
from __future__ import annotations

from typing import Callable

from preftune.judges import JudgeError
from preftune.train.distributed import gathered, summed
from preftune.train.online_state import OnlineLoop


def ask_judge(loop: OnlineLoop, ask: Callable):
    """ask(), a round of questions to the judge; its counters are added to the iteration's."""
    mark = loop.judge.stats.mark()
    out = ask()
    for key, value in loop.judge.stats.since(mark).items():
        loop.judge_round[key] = (loop.judge_round.get(key) or value) if key == "first_error" else \
            loop.judge_round.get(key, 0) + value
    return out


def iteration_counts(loop: OnlineLoop) -> dict:
    """The iteration's judge counters summed over every process, with the first error any of them saw."""
    shares = gathered(loop.accelerator, loop.judge_round)
    return {**summed(shares), "first_error": next((s["first_error"] for s in shares if s.get("first_error")), "")}


def check_judge(loop: OnlineLoop, what: str) -> None:
    """Stop the run (JudgeError, with the counts and the first error) when more than judge.max_failure_rate of
    the iteration's requests to the judge failed."""
    counts, limit = iteration_counts(loop), loop.cfg.judge.max_failure_rate
    failures = counts.get("failed", 0) + counts.get("unparseable", 0)
    if counts.get("requests") and failures > limit * counts["requests"]:
        raise JudgeError(f"{what}: the judge failed on {failures} of {counts['requests']} requests "
                         f"({counts['failed']} failed, {counts['unparseable']} unparseable), more than "
                         f"judge.max_failure_rate = {limit}; the first error: {counts['first_error']}")


def counters_line(counts: dict) -> str:
    return "judge: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in ("requests", "failed", "unparseable", "retries"))
