"""Running state of a method across batches (BCO's reward shift), and its view of the other processes.

A method function stays a pure function of its inputs. A method that needs a statistic
accumulated over training (BCO's running mean of rewards, arXiv 2404.04656) registers a state
factory (`register(..., state=RunningMean)`) and takes a keyword-only argument `state` whose
default is None. Called directly (unit tests, the tabular engine) it gets no state and falls back
to the current batch alone. Inside an `Objective` every such term owns one state object, which
the objective passes in on each call; the trainer

- hands every state the run's `CrossProcess` (`Objective.set_processes`): sums and gathers over
  processes that the training layer builds from its accelerator (train/distributed.py), so every
  process uses the same statistic under DDP/FSDP while methods never import torch.distributed;
- checkpoints it with the model and optimizer (`Objective.state_dict`, registered with
  accelerate), so `--resume` continues the running statistic where it stopped;
- freezes it during evaluation (`Objective.frozen_state`), so held-out batches never move it (and
  each process then uses its own batch, as a one-process evaluation of that batch would).

A method whose loss uses a statistic of the current batch only (KTO's reference point, TPO's
token mean) registers `state=BatchStatistics`: nothing is kept or checkpointed, but the statistic
is taken over the whole global batch, i.e. over every process's share of it.

A state class implements `state_dict`, `load_state_dict`, and honours `frozen` and `processes`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from torch import Tensor


def _same(values: Tensor) -> Tensor:
    return values


@dataclass(frozen=True)
class CrossProcess:
    """The processes of a run as a method's state sees them; the default is a single process.

    sum(t): t summed over processes (same shape). gather(t): the processes' tensors concatenated
    along dim 0 in rank order (every process passes the same shape). rank, world_size: this
    process's place. The training layer fills it from its accelerator (train/distributed.py).
    """

    sum: Callable[[Tensor], Tensor] = _same
    gather: Callable[[Tensor], Tensor] = _same
    rank: int = 0
    world_size: int = 1


class MethodState:
    """What the objective and the trainer expect of a method's state.

    running: whether the state carries statistics from batch to batch (then it is checkpointed
    with the run); False for a view of the current batch over processes only (BatchStatistics).
    """

    running = True

    def __init__(self) -> None:
        self.frozen = False  # True during evaluation: read the state, never update it
        self.processes = CrossProcess()

    @property
    def sync(self) -> Callable[[Tensor], Tensor]:
        """Sums a tensor over processes (the identity with one process)."""
        return self.processes.sum

    @sync.setter
    def sync(self, total: Callable[[Tensor], Tensor] | None) -> None:
        self.processes = replace(self.processes, sum=total or _same)

    def sum_over_processes(self, values: Tensor) -> Tensor:
        """`values` summed over processes; this process's own while frozen (evaluation batches differ
        in number and size between processes, and a one-process evaluation sees one batch at a time)."""
        return values if self.frozen else self.processes.sum(values)

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class BatchStatistics(MethodState):
    """Statistics of the current global batch, which is spread over the processes; nothing is kept.

    `mean(values)` is the mean of `values` over every process's share of the batch (the local
    mean with one process, or while frozen), detached. `total(values)` is their sum likewise.
    """

    running = False

    def total(self, values: Tensor) -> Tensor:
        return self.sum_over_processes(values.detach().double().sum()).to(values.dtype)

    def mean(self, values: Tensor) -> Tensor:
        values = values.detach()
        stats = self.sum_over_processes(torch.stack([values.double().sum(), torch.tensor(
            float(values.numel()), dtype=torch.float64, device=values.device)]))
        return (stats[0] / stats[1]).to(values.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


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
            stats = self.sum_over_processes(torch.stack([values.sum(), torch.tensor(
                values.numel(), dtype=values.dtype, device=values.device)]).double())
            self.total += float(stats[0])
            self.count += float(stats[1])
        if self.mean is None:  # frozen before the first training batch: nothing accumulated yet
            return values.mean()
        return torch.tensor(self.mean, dtype=values.dtype, device=values.device)

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total, self.count = float(state["total"]), float(state["count"])
