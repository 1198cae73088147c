"""Which examples each process sees at each optimizer step, derived from the seed alone.

Because the order is a pure function of (seed, step), resuming at step s needs no saved data
iterator, and a run on W processes sees exactly the examples a 1-process run with the same
global batch sees: process r takes its slice of every global batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchPlan:
    num_examples: int
    batch_size: int          # examples per process per micro-step
    grad_accum: int          # micro-steps per optimizer step
    world_size: int
    seed: int
    steps: int | None = None
    epochs: float = 1.0
    shuffle: bool = True             # False: every epoch in data order
    groups: tuple[int, ...] | None = None  # a group per example; a global batch never mixes groups

    def __post_init__(self) -> None:
        if self.steps_per_epoch < 1:
            raise ValueError(f"the data has {self.num_examples} examples, fewer than one global batch of "
                             f"{self.global_batch} (batch_size {self.batch_size} x grad_accum {self.grad_accum} "
                             f"x {self.world_size} processes); lower train.batch_size or add data")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per pass over the data (the incomplete last batch of each group is dropped)."""
        if self.groups is None:
            return self.num_examples // self.global_batch
        return sum(len(members) // self.global_batch for members in indices_by_group(self.groups))

    @property
    def total_steps(self) -> int:
        return self.steps if self.steps is not None else max(1, math.ceil(self.epochs * self.steps_per_epoch))

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch

    def step_indices(self, step: int) -> list[int]:
        """The global batch of optimizer step `step`: a slice of that epoch's permutation."""
        epoch, position = divmod(step, self.steps_per_epoch)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.groups is None:
            order = torch.randperm(self.num_examples, generator=generator) if self.shuffle else \
                torch.arange(self.num_examples)
            start = position * self.global_batch
            return order[start:start + self.global_batch].tolist()
        # Full batches of each group (members shuffled within it), then the batches shuffled.
        batches = []
        for members in indices_by_group(self.groups):
            if self.shuffle:
                members = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
            full = len(members) // self.global_batch * self.global_batch
            batches += [members[i:i + self.global_batch] for i in range(0, full, self.global_batch)]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches[position]

    def examples_used(self) -> list[int]:
        """Sorted indices of the examples the run's steps take, for the reference cache. From one full
        epoch on that is all of them (including an epoch's dropped tail, which a later epoch may use)."""
        if self.total_steps >= self.steps_per_epoch:
            return list(range(self.num_examples))
        return sorted({i for step in range(self.total_steps) for i in self.step_indices(step)})

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """The micro-batches process `rank` runs at `step`, in order."""
        indices = self.step_indices(step)
        out = []
        for micro in range(self.grad_accum):
            start = (micro * self.world_size + rank) * self.batch_size
            out.append(indices[start:start + self.batch_size])
        return out


def indices_by_group(groups) -> list[list[int]]:
    """The example indices of each group, in data order, groups in sorted order."""
    members: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    return [members[group] for group in sorted(members)]


def batches_by_group(groups: list[int], batch_size: int) -> list[list[int]]:
    """Consecutive batches of at most batch_size indices that never mix groups (held-out evaluation)."""
    return [indices[i:i + batch_size] for indices in indices_by_group(groups)
            for i in range(0, len(indices), batch_size)]
