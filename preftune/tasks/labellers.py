"""Who labels the on-policy pairs: the gold oracle, or an annotator with a known bias or noise.

A built-in task's `score` is its gold reward, and evaluation always measures that. The
*labeller* is whoever decided which of a prompt's sampled responses was chosen. Keeping the two
apart is what lets us measure what a method does when the labels are wrong in a known way, which
is how the papers of the catalogue probe robustness:

- `length_bias = p`: with probability p a prompt is judged by length (the longer response wins,
  gold breaks ties) instead of by gold quality: the verbosity bias that SimPO and LD-DPO target;
- `flip_rate = ε`: each formed pair is swapped with probability ε (a list is reversed): the
  symmetric label noise of cDPO / robust DPO (offline.md §1) and ADPO's noise experiments;
- `temperature = τ > 0`: Bradley-Terry labels. Each response gets the utility gold + τ·G with
  G ~ Gumbel(0, 1); since the difference of two Gumbels is logistic, a comparison of a and b comes
  out a ≻ b with probability σ((r_a − r_b)/τ). Small gold gaps give near coin flips, large ones
  reliable labels: pairs of mixed quality (the setting of β-DPO and MADPO, offline.md §8).

The options compose over any task (all three apply in the order above). Pairs are cut from the
labeller's utilities exactly as from gold scores (best against worst, all ordered pairs, or a
scored list), so the default labeller reproduces gold labelling row for row.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class Labeller:
    """A synthetic annotator over any task; the default is the gold oracle itself."""

    length_bias: float = 0.0
    flip_rate: float = 0.0
    temperature: float = 0.0

    def __post_init__(self) -> None:
        for name in ("length_bias", "flip_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"labeller.{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"labeller.temperature must be >= 0, got {self.temperature}")

    @classmethod
    def from_options(cls, options: dict | None) -> "Labeller":
        """Build from a config mapping such as {length_bias: 0.5}; an unknown key lists the valid ones."""
        options = dict(options or {})
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"unknown labeller option {unknown[0]!r}; valid options: {', '.join(valid)}")
        return cls(**{k: float(v) for k, v in options.items()})

    @property
    def is_gold(self) -> bool:
        return self.length_bias == 0 and self.flip_rate == 0 and self.temperature == 0

    def as_dict(self) -> dict:
        return asdict(self)

    def utilities(self, responses: list[str], gold: list[float], rng: random.Random) -> list[float]:
        """The labeller's utilities for one prompt's responses (higher is preferred).

        Length mode scores `len(text) + 0.5·gold`: lengths are whole characters, so gold (in
        [0, 1]) only breaks ties between equally long responses and never overturns a length gap.
        """
        if self.length_bias and rng.random() < self.length_bias:
            return [len(text.strip()) + 0.5 * g for text, g in zip(responses, gold)]
        if self.temperature:
            return [g + self.temperature * _gumbel(rng) for g in gold]
        return list(gold)

    def flips(self, rng: random.Random) -> bool:
        """Whether this pair's labels (a list's order) are reversed."""
        return bool(self.flip_rate) and rng.random() < self.flip_rate

    def prefers_first(self, a: str, b: str, gold_a: float, gold_b: float, rng: random.Random) -> bool | None:
        """One comparison: True if a is labelled better than b, None for a tie (no pair is made)."""
        u_a, u_b = self.utilities([a, b], [gold_a, gold_b], rng)
        if u_a == u_b:
            return None
        return (u_a > u_b) != self.flips(rng)


def _gumbel(rng: random.Random) -> float:
    """A Gumbel(0, 1) draw by the inverse CDF; u is redrawn at 0 so that both logs are finite."""
    u = rng.random()
    while u == 0.0:
        u = rng.random()
    return -math.log(-math.log(u))
