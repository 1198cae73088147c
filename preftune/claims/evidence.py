"""What a row's judge reads: final cells, the SFT and base models' scores, extras and exact checks.

Every accessor returns per-seed values ({seed: value}) over the final seeds, so a judge states a
claim as differences of per-seed numbers and lets stats.py do the rest. A missing or failed cell
raises MissingEvidence, which the runner reports in the row instead of a verdict built on less.
"""
from __future__ import annotations

from preftune.claims import stats
from preftune.claims.config import ClaimsConfig


class MissingEvidence(RuntimeError):
    pass


class Evidence:
    def __init__(self, cfg: ClaimsConfig, cells: dict, chosen: dict, baselines: dict, extras: dict, verify: dict):
        self.cfg = cfg
        self.cells = cells            # (arm, seed) -> final cell result
        self.chosen = chosen          # arm -> chosen setting
        self.baselines = baselines    # (task, seed) -> baselines_job result
        self.extras = extras          # (extra name, seed) -> dict
        self.verified = verify        # method -> verify result row

    @property
    def seeds(self) -> list[int]:
        return list(self.cfg.seeds)

    # ---- per-seed numbers

    def final(self, arm: str, metric: str) -> dict:
        out = {}
        for seed in self.seeds:
            cell = self.cells.get((arm, seed))
            if cell is None:
                raise MissingEvidence(f"{arm} seed {seed}: no final cell")
            if cell.get("status") != "ok":
                raise MissingEvidence(f"{arm} seed {seed}: {cell.get('error', 'failed')}")
            if metric not in cell["metrics"]:
                raise MissingEvidence(f"{arm} seed {seed}: no metric {metric!r}")
            out[seed] = float(cell["metrics"][metric])
        return out

    def start_model(self, task: str, metric: str, which: str = "sft") -> dict:
        """The SFT (or base) model's own score on the test split, per seed."""
        out = {}
        for seed in self.seeds:
            found = self.baselines.get((task, seed))
            if found is None:
                raise MissingEvidence(f"{task} seed {seed}: no baseline scores")
            out[seed] = float(found["test"][which][metric])
        return out

    def extra(self, name: str, key: str) -> dict:
        out = {}
        for seed in self.seeds:
            found = self.extras.get((name, seed))
            if found is None or found.get("status") != "ok":
                raise MissingEvidence(f"{name} seed {seed}: {(found or {}).get('error', 'not run')}")
            out[seed] = float(found[key])
        return out

    def once(self, name: str) -> dict:
        found = self.extras.get((name, None))
        if found is None or found.get("status") != "ok":
            raise MissingEvidence(f"{name}: {(found or {}).get('error', 'not run')}")
        return found

    # ---- parts of a verdict

    def part(self, label: str, per_seed: dict, metric: str, kind: str = stats.SUPERIORITY, unit: str = "") \
            -> stats.PartResult:
        return stats.judge(label, kind, self.cfg.margin(metric), per_seed, unit=unit, level=self.cfg.decision.level)

    def difference(self, label: str, a: dict, b: dict, metric: str, kind: str = stats.SUPERIORITY,
                   unit: str = "") -> stats.PartResult:
        """A part on the paired per-seed differences a - b (oriented so that the claim says > 0)."""
        seeds = sorted(set(a) & set(b))
        return self.part(label, dict(zip(seeds, stats.paired(a, b))), metric, kind, unit)

    def compare(self, method: str, baseline: str, metric: str, kind: str = stats.SUPERIORITY,
                lower_is_better: bool = False, unit: str = "", margin: str | None = None) -> stats.PartResult:
        """method vs baseline arm on a final metric: method - baseline (or baseline - method); `margin`
        names the decision rule's smallest effect of interest (default: the metric's own)."""
        a, b = self.final(method, metric), self.final(baseline, metric)
        if lower_is_better:
            a, b = b, a
            label = f"{metric}: {baseline} − {method}"
        else:
            label = f"{metric}: {method} − {baseline}"
        return self.difference(label, a, b, margin or metric, kind, unit)

    def exact(self, label: str, holds: bool, detail: str) -> stats.PartResult:
        return stats.judge(label, stats.EXACT, 0.0, exact_holds=holds, detail=detail)

    def tabular(self, method: str) -> stats.PartResult:
        """The method's exact check in `preftune verify`, quoted: it holds when the check passes."""
        found = self.verified.get(method)
        if found is None:
            raise MissingEvidence(f"preftune verify has no result for {method}")
        return self.exact(f"tabular: preftune verify {method}", bool(found["passed"]), found.get("detail", ""))
