"""Running state of a method across batches (BCO's reward shift): kept by the objective, checkpointed.

A method function stays a pure function of its inputs. A method that needs a statistic
accumulated over training (BCO's running mean of rewards, arXiv 2404.04656) registers a state
factory (`register(..., state=RunningMean)`) and takes a keyword-only argument `state` whose
default is None. Called directly (unit tests, the tabular engine) it gets no state and falls back
to the current batch alone. Inside an `Objective` every such term owns one state object, which
the objective passes in on each call; the trainer

- sums the state's per-batch statistics over processes (`Objective.sync_state`), so every
  process uses the same value under DDP;
- checkpoints it with the model and optimizer (`Objective.state_dict`, registered with
  accelerate), so `--resume` continues the running statistic where it stopped;
- freezes it during evaluation (`Objective.frozen_state`), so held-out batches never move it.

A state class implements `state_dict`, `load_state_dict`, and honours `frozen` and `sync`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor


class MethodState:
    """What the objective and the trainer expect of a method's running state."""

    def __init__(self) -> None:
        self.frozen = False  # True during evaluation: read the state, never update it
        self.sync: Callable[[Tensor], Tensor] | None = None  # sums a tensor over processes (None: one process)

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class RunningMean(MethodState):
    """The mean of every value seen so far, over all batches and all processes (count-weighted).

    `update(values)` adds a batch of values and returns the new mean as a 0-d tensor, detached;
    a frozen state returns its current mean (or the batch mean before any update). The running
    sum and count are kept in float64 on the CPU so a long run does not lose precision.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0.0
        self.count = 0.0

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def update(self, values: Tensor) -> Tensor:
        values = values.detach()
        if not self.frozen:
            stats = torch.stack([values.sum(), torch.tensor(values.numel(), dtype=values.dtype,
                                                            device=values.device)]).double()
            if self.sync is not None:
                stats = self.sync(stats)
            self.total += float(stats[0])
            self.count += float(stats[1])
        if self.mean is None:  # frozen before the first training batch: nothing accumulated yet
            return values.mean()
        return torch.tensor(self.mean, dtype=values.dtype, device=values.device)

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total, self.count = float(state["total"]), float(state["count"])
