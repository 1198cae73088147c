"""The statistics and the decision rule of `preftune claims`: pure functions, no models.

A claim is judged from per-seed effects. Each part of a claim names an effect that the paper says
is positive (the effect is oriented so: "shorter than DPO" becomes DPO's length minus the method's),
one value per seed. The 95% interval is Student's t interval of the mean over seeds,

    mean ± t_{0.975, n-1} · s / sqrt(n),

and because a method and its baseline share each seed's base model, SFT model and preference data,
per-seed effects are paired differences: the spread of the shared parts cancels.

The decision rule, fixed before any final run (docs/claims.md, "Pre-registration"), uses a
smallest effect of interest δ per part:

- superiority ("beats", "raises", "less than"): **holds** when the interval lies above 0; **fails**
  when it lies below δ (it excludes every effect of the claimed size, or points the other way);
  otherwise **open**;
- non-inferiority ("at equal or better gold reward"): **holds** when the interval lies above −δ;
  **fails** when it lies below −δ; otherwise open;
- exact (a tabular check, a property of the registry): holds or fails, no interval;
- reported: a number the claim asks to be measured (over-refusal beside attack success), shown
  with its interval and not judged.

A row is **reproduced** when every part holds, **not reproduced** when any part fails, and
**inconclusive** otherwise.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Sequence

SUPERIORITY, NON_INFERIORITY, EXACT, REPORTED = "superiority", "non-inferiority", "exact", "reported"
KINDS = (SUPERIORITY, NON_INFERIORITY, EXACT, REPORTED)
HOLDS, FAILS, OPEN, SHOWN = "holds", "fails", "open", "reported"
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


@dataclass(frozen=True)
class Interval:
    """Mean of per-seed values with its two-sided t interval (low = high = mean for one value)."""

    mean: float
    low: float
    high: float
    std: float
    n: int
    level: float = 0.95

    def as_dict(self) -> dict:
        return asdict(self)


def t_quantile(level: float, df: int) -> float:
    """The two-sided Student-t critical value t_{(1+level)/2, df}."""
    from scipy.stats import t

    return float(t.ppf((1.0 + level) / 2.0, df))


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student's t interval of the mean of `values` (one per seed). Non-finite values are an error:
    a seed that produced no number must be reported, not silently dropped."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("an interval needs at least one value")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ValueError(f"non-finite per-seed value(s) {bad}: every seed must yield a number")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Interval(mean, mean, mean, 0.0, 1, level)
    std = statistics.stdev(values)
    half = t_quantile(level, len(values) - 1) * std / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, std, len(values), level)


def paired(a: dict, b: dict) -> list[float]:
    """Per-seed differences a[seed] - b[seed] over the seeds both have, in seed order."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("no seed in common: a paired difference needs the same seeds on both sides")
    return [a[s] - b[s] for s in seeds]


def judge_part(interval: Interval | None, kind: str, margin: float, exact_holds: bool | None = None) -> str:
    """holds / fails / open for one part of a claim (see the module docstring)."""
    if kind == REPORTED:
        return SHOWN
    if kind == EXACT:
        if exact_holds is None:
            raise ValueError("an exact part needs exact_holds")
        return HOLDS if exact_holds else FAILS
    if interval is None:
        raise ValueError(f"a {kind} part needs an interval")
    if margin < 0:
        raise ValueError(f"the smallest effect of interest must be >= 0, got {margin}")
    if kind == SUPERIORITY:
        if interval.low > 0:
            return HOLDS
        return FAILS if interval.high < margin else OPEN
    if kind == NON_INFERIORITY:
        if interval.low > -margin:
            return HOLDS
        return FAILS if interval.high < -margin else OPEN
    raise ValueError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")


def combine(judgements: Sequence[str]) -> str:
    """A row's verdict from its parts: every part holds -> reproduced; any fails -> not reproduced.
    Reported parts do not count."""
    judgements = [j for j in judgements if j != SHOWN]
    if not judgements:
        raise ValueError("a claim needs at least one part")
    unknown = set(judgements) - {HOLDS, FAILS, OPEN}
    if unknown:
        raise ValueError(f"unknown judgement(s) {sorted(unknown)}")
    if FAILS in judgements:
        return NOT_REPRODUCED
    if all(j == HOLDS for j in judgements):
        return REPRODUCED
    return INCONCLUSIVE


@dataclass
class PartResult:
    """One judged part: what was compared, its per-seed effects, interval and judgement."""

    label: str
    kind: str
    margin: float
    unit: str = ""
    per_seed: dict = field(default_factory=dict)   # seed -> effect (empty for exact parts)
    interval: Interval | None = None
    judgement: str = OPEN
    detail: str = ""                               # exact parts: what the check measured

    def as_dict(self) -> dict:
        out = asdict(self)
        out["interval"] = self.interval.as_dict() if self.interval else None
        out["per_seed"] = {str(k): v for k, v in self.per_seed.items()}
        return out


def judge(label: str, kind: str, margin: float, per_seed: dict | None = None, *, unit: str = "",
          exact_holds: bool | None = None, detail: str = "", level: float = 0.95) -> PartResult:
    """Interval and judgement of one part from its per-seed effects (or an exact check's outcome)."""
    per_seed = dict(per_seed or {})
    interval = None
    if kind != EXACT:
        interval = t_interval([per_seed[s] for s in sorted(per_seed)], level)
    return PartResult(label, kind, margin, unit, per_seed, interval, judge_part(interval, kind, margin, exact_holds),
                      detail)


def format_interval(interval: Interval | None, digits: int = 3) -> str:
    if interval is None:
        return "exact"
    return f"{interval.mean:+.{digits}f} [{interval.low:+.{digits}f}, {interval.high:+.{digits}f}]"
