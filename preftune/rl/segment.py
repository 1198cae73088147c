"""Reasoning steps in token ids (pure): a step ends with the token whose text completes a separator
(`;` on the multistep task, a blank line in real text) or with the end of the response.

Segmentation works on the sampled token ids, so the training rows keep exactly the tokens the policy
produced; `decode` turns one token id into its text (the tokenizer's).
"""
from __future__ import annotations

from typing import Callable, Sequence


def step_ids(token_ids: Sequence[int], decode: Callable[[int], str], separator: str) -> list[int]:
    """The step index of every token (0, 0, 1, 1, 1, ...); the separator belongs to the step it ends."""
    if not separator:
        raise ValueError("the step separator must be a non-empty string")
    out, step, text, seen = [], 0, "", 0
    for token in token_ids:
        out.append(step)
        text += decode(token)
        count = text.count(separator)
        if count > seen:
            seen, step = count, step + 1
    return out


def split_steps(token_ids: Sequence[int], decode: Callable[[int], str], separator: str) -> list[list[int]]:
    """The token ids of each step, in order (their concatenation is `token_ids`)."""
    steps: list[list[int]] = []
    for token, index in zip(token_ids, step_ids(token_ids, decode, separator)):
        if index == len(steps):
            steps.append([])
        steps[index].append(token)
    return steps


def first_step(token_ids: Sequence[int], decode: Callable[[int], str], separator: str) -> list[int]:
    """The first step of a sampled continuation (all of it when it has no separator)."""
    steps = split_steps(token_ids, decode, separator)
    return steps[0] if steps else []
