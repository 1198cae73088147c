"""Offline data for the diffusion trainer: examples -> micro-batches, in the order of the batch plan.

The data order is the language side's `BatchPlan` (a pure function of seed and step, so a resumed
run sees exactly the examples of an uninterrupted one, and W processes take their slices of each
global batch). Unpaired sets become pairs here: each positive with a negative of the same condition.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from preftune.data.formats import DataError
from preftune.diffusion.batches import Batch, generator
from preftune.diffusion.data import Example
from preftune.train.plan import BatchPlan


def condition_key(condition) -> str:
    return "" if condition is None else str(torch.as_tensor(condition).tolist() if not isinstance(condition, str) else condition)


def pair_unpaired(examples: list[Example], seed: int) -> list[Example]:
    """Positives each paired with a random negative of the same condition (DSO: '+ and - drawn
    independently for the same prompt'; DDO: a real sample and a reference sample)."""
    g = torch.Generator().manual_seed(seed)
    negatives = defaultdict(list)
    for ex in examples:
        if not ex.extras["label"]:
            negatives[condition_key(ex.condition)].append(ex)
    everyone = [ex for pool in negatives.values() for ex in pool]
    if not everyone:
        raise DataError("unpaired data: no negative rows (label 0/false); the method contrasts positives with negatives")
    pairs = []
    for ex in examples:
        if ex.extras["label"]:
            pool = negatives.get(condition_key(ex.condition)) or everyone
            other = pool[int(torch.randint(len(pool), (1,), generator=g))]
            pairs.append(Example(ex.condition, [ex.samples[0], other.samples[0]], f"{ex.origin} + {other.origin}"))
    if not pairs:
        raise DataError("unpaired data: no positive rows (label 1/true)")
    return pairs


def lists_to_pairs(examples: list[Example]) -> list[Example]:
    """Each scored list as its best and worst sample (the usual conversion for a pairwise method)."""
    pairs = []
    for ex in examples:
        best = max(range(len(ex.scores)), key=ex.scores.__getitem__)
        worst = min(range(len(ex.scores)), key=ex.scores.__getitem__)
        if ex.scores[best] > ex.scores[worst]:
            pairs.append(Example(ex.condition, [ex.samples[best], ex.samples[worst]], ex.origin,
                                 [ex.scores[best], ex.scores[worst]]))
    return pairs


def stack_conditions(examples: list[Example]):
    conditions = [ex.condition for ex in examples]
    if all(c is None for c in conditions):
        return None
    if any(c is None for c in conditions):
        raise DataError(f"{examples[0].origin}: some rows have a condition and some do not")
    return conditions if isinstance(conditions[0], str) else torch.stack([torch.as_tensor(c) for c in conditions])


class OfflineSource:
    """Micro-batches of a fixed example list, for every offline kind."""

    def __init__(self, kind: str, examples: list[Example], model, plan: BatchPlan, process_index: int = 0,
                 condition_dropout: float = 0.0, seed: int = 0):
        self.kind, self.examples, self.model, self.plan = kind, examples, model, plan
        self.process_index, self.condition_dropout, self.seed = process_index, condition_dropout, seed

    def micro_batches(self, step: int, device, network=None) -> list[Batch]:
        return [self.batch([self.examples[i] for i in indices], device, step, m)
                for m, indices in enumerate(self.plan.micro_batches(step, self.process_index))]

    def load(self, examples: list[Example], device) -> Tensor:
        """(B, K, *sample shape) in the network's space: images decoded and VAE-encoded, arrays reshaped."""
        shape = self.model.pixel_shape
        pixels = torch.stack([torch.stack([ref.load(shape) for ref in ex.samples]) for ex in examples]).to(device)
        b, k = pixels.shape[:2]
        return self.model.encode_images(pixels.flatten(0, 1)).reshape(b, k, *self.model.sample_shape)

    def batch(self, examples: list[Example], device, step: int = 0, micro: int = 0) -> Batch:
        raw = stack_conditions(examples)
        cond = self.model.condition(raw, device) if raw is not None else None
        if cond and self.condition_dropout:
            g = generator(self.seed, step, micro, self.process_index, "condition dropout")
            cond = self.model.drop_conditions(cond, (torch.rand(len(examples), generator=g) < self.condition_dropout).to(device))
        batch = Batch(self.kind, cond=cond, x0=self.load(examples, device))
        if examples[0].scores is not None:
            batch.extras["scores"] = torch.tensor([ex.scores for ex in examples], device=device)
        if self.kind == "segment-pairs":
            batch.extras["segment_labels"] = torch.tensor([ex.extras["segment_labels"] for ex in examples], device=device)
        if self.kind == "condition-pairs":
            controls = [[ref.value if isinstance(ref.value, str) else ref.load((-1,)) for ref in ex.extras["controls"]]
                        for ex in examples]
            chosen, rejected = ([c[i] for c in controls] for i in (0, 1))
            stack = (lambda v: v) if isinstance(chosen[0], str) else torch.stack
            batch.cond = self.model.condition(stack(chosen), device)
            batch.cond_rejected = self.model.condition(stack(rejected), device)
        return batch
