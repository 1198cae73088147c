"""`preftune claims`: run the selected rows' experiments and judge them.

1. assets: base models, SFT models and samples of every (task, seed) an arm uses (bench machinery),
   then the SFT and base models' own scores on both splits;
2. for each wave of arms (an arm waits for the arms it reads): the search cells (every setting on the
   search seeds, scored on validation), the choice (highest mean validation score; the first in grid
   order on a tie), then the final cells (the chosen setting on every final seed, scored on test);
3. the rows' extras (beam search, probes, the sweep) and the quoted `preftune verify` checks;
4. each row's judge, then claims.json, claims.md and the plots.

Every cell and extra is cached as JSON, so an interrupted run resumes where it stopped; the wall
time of every invocation is kept and summed.
"""
from __future__ import annotations

import json
import os
import platform
import time
import traceback
from pathlib import Path

from preftune.claims import stats
from preftune.claims.arms import Arm, get_arm, settings_of
from preftune.claims.config import ClaimsConfig
from preftune.claims.prereg import preregistration, preregistration_digest
from preftune.claims.evidence import Evidence, MissingEvidence
from preftune.claims.catalogue import all_claims, get_claim
from preftune.claims.registry import Claim
from preftune.config import from_dict, to_dict


def selected_claims(cfg: ClaimsConfig, rows: list[str] | None = None) -> list[Claim]:
    names = rows or cfg.rows
    return [get_claim(r) for r in names] if names else all_claims()


def arms_needed(claims: list[Claim]) -> list[Arm]:
    """The claims' arms in table order, each after the arms it reads."""
    needed: dict[str, Arm] = {}

    def add(name: str) -> None:
        if name not in needed:
            for dependency in get_arm(name).depends_on:
                add(dependency)
            needed[name] = get_arm(name)

    for claim in claims:
        for name in claim.arms:
            add(name)
    return list(needed.values())


def waves(arms: list[Arm]) -> list[list[Arm]]:
    """Arms in dependency order: each wave only reads arms of earlier waves."""
    done, left, out = set(), {a.name: a for a in arms}, []
    while left:
        ready = [a for a in left.values() if all(d in done for d in a.depends_on)]
        if not ready:
            raise ValueError(f"claims: circular arm dependencies among {sorted(left)}")
        out.append(ready)
        done |= {a.name for a in ready}
        for a in ready:
            del left[a.name]
    return out


def selection_value(metrics: dict, spec: str) -> float:
    """The validation score of a cell: a metric, a sum of metrics ("a+b"), or "-metric" to minimise."""
    sign, spec = (-1.0, spec[1:]) if spec.startswith("-") else (1.0, spec)
    return sign * sum(float(metrics[k]) for k in spec.split("+"))


def choose(cfg: ClaimsConfig, arm: Arm, results: dict) -> tuple[dict, list[dict]]:
    """The setting with the highest mean validation score over the search seeds, and the whole table."""
    table = []
    for setting in settings_of(arm, cfg.lr_grid, cfg.grid_points):
        cells = [results[(arm.name, json.dumps(setting, sort_keys=True), s)] for s in cfg.search_seeds]
        ok = [c for c in cells if c.get("status") == "ok"]
        score = sum(selection_value(c["metrics"], arm.selection) for c in ok) / len(ok) if len(ok) == len(cells) \
            else None
        table.append({"setting": setting, "score": score,
                      "errors": [c.get("error") for c in cells if c.get("status") != "ok"]})
    scored = [row for row in table if row["score"] is not None]
    if not scored:
        raise RuntimeError(f"claims: every search cell of {arm.name} failed: {table[0]['errors']}")
    best = max(scored, key=lambda row: row["score"])  # max keeps the first of equal scores: grid order
    return best["setting"], table


class Runner:
    def __init__(self, cfg: ClaimsConfig, progress: bool = True, log=print):
        self.cfg, self.progress, self.log = cfg, progress, log
        self.cfg_dict = to_dict(cfg)
        self.results: dict = {}      # (arm, setting json, seed) -> cell result
        self.chosen: dict = {}       # arm -> setting
        self.searches: dict = {}     # arm -> search table

    # ---- the worker pool (the bench's)

    def pool(self, fn, jobs: list[tuple], desc: str, describe) -> list:
        from preftune.bench import _run_jobs

        return _run_jobs(self.cfg, fn, jobs, desc, self.progress, describe)

    # ---- cells

    def model_path(self, arm_name: str, seed: int) -> str:
        from preftune.claims.cells import model_dir

        return str(model_dir(self.cfg, arm_name, self.chosen[arm_name], seed) / "run" / "model")

    def aux_paths(self, arm: Arm, seed: int) -> dict:
        from preftune.claims.assets import assets_of

        return {role: (assets_of(self.cfg, arm.task, seed)["sft_model"] if source == "sft"
                       else self.model_path(source, seed)) for role, source in arm.aux.items()}

    def run_cells(self, cells: list[tuple[Arm, dict, int]], desc: str) -> None:
        from preftune.claims.cells import run_cell

        jobs = [(arm.name, setting, seed, self.aux_paths(arm, seed)) for arm, setting, seed in cells]
        for result in self.pool(run_cell, jobs, desc, lambda job: f"{job[0]} seed {job[2]}"):
            self.results[(result["arm"], json.dumps(result["setting"], sort_keys=True), result["seed"])] = result

    def settle(self, wave: list[Arm]) -> None:
        """Search, choose, then run the final seeds, for one wave of arms."""
        searched = [a for a in wave if a.search_as is None]
        self.run_cells([(a, s, seed) for a in searched for s in settings_of(a, self.cfg.lr_grid, self.cfg.grid_points)
                        for seed in self.cfg.search_seeds], "search")
        for a in wave:
            if a.search_as is None:
                self.chosen[a.name], self.searches[a.name] = choose(self.cfg, a, self.results)
            else:
                self.chosen[a.name] = self.chosen[a.search_as]
        self.run_cells([(a, self.chosen[a.name], seed) for a in wave for seed in self.cfg.seeds], "final")

    # ---- extras and exact checks

    def run_extras(self, claims: list[Claim]) -> dict:
        from preftune.claims.extras import run_extra

        extras = {e.name: e for c in claims for e in c.extras}
        jobs = []
        for extra in extras.values():
            seeds = [None] if extra.seeds == "none" else self.cfg.seeds
            for seed in seeds:
                models = {name: self.model_path(name, seed) for name in extra.needs}
                jobs.append((extra.name, seed, models, self.chosen))
        found = self.pool(run_extra, jobs, "extras", lambda job: f"{job[0]} seed {job[1]}")
        return {(r["extra"], r["seed"]): r for r in found}

    @staticmethod
    def verify(claims: list[Claim]) -> dict:
        from preftune.tabular.verify import PASSED, verify_methods

        names = sorted({m for c in claims for m in c.verify})
        out = {}
        for report in verify_methods(names) if names else []:
            detail = "; ".join(f"{c.property}: {c.measured:.4g} (expected {c.expected:.4g}, tol {c.tolerance:.0e})"
                               for c in report.checks) or (report.reason or "")
            out[report.name] = {"passed": report.status == PASSED, "status": report.status,
                                "checks": len(report.checks), "detail": detail}
        return out


def judge_claim(claim: Claim, evidence: Evidence) -> dict:
    """The row's verdict and parts; a row whose evidence is missing says why instead."""
    row = {"row": claim.row, "family": claim.family, "statement": claim.statement, "miniature": claim.miniature,
           "arms": list(claim.arms), "extra_names": [e.name for e in claim.extras], "verify": list(claim.verify)}
    try:
        parts = claim.judge(evidence)
    except MissingEvidence as missing:
        row.update(verdict=stats.INCONCLUSIVE, parts=[], error=f"missing evidence: {missing}")
        return row
    except Exception as error:  # noqa: BLE001  (a judge bug is reported in its row)
        row.update(verdict=stats.INCONCLUSIVE, parts=[], error=f"{type(error).__name__}: {error}",
                   traceback=traceback.format_exc(limit=4))
        return row
    row.update(verdict=stats.combine([p.judgement for p in parts]), parts=[p.as_dict() for p in parts])
    return row


def machine() -> dict:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})}


def run_claims(cfg: ClaimsConfig, command: str, rows: list[str] | None = None, progress: bool = True,
               log=print) -> dict:
    """Run (or resume) the selected rows; writes claims.json, claims.md and plots to the run directory."""
    import torch

    from preftune.claims.assets import baselines_job, make_assets

    started, load_start = time.perf_counter(), os.getloadavg()
    torch.set_num_threads(cfg.threads_per_worker)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    claims = selected_claims(cfg, rows)
    arms = arms_needed(claims)
    digest = preregistration_digest(cfg, arms)
    (run_dir / "preregistration.json").write_text(json.dumps({"digest": digest, **preregistration(cfg, arms)},
                                                             indent=1, default=str))
    runner = Runner(cfg, progress, log)
    offline = sorted({a.task for a in arms if a.kind == "offline"})
    log(f"[1/4] assets for {len(offline)} tasks x {len(cfg.all_seeds)} seeds ({', '.join(offline) or 'none'})")
    make_assets(cfg, offline, cfg.all_seeds, progress, log)
    baselines = runner.pool(baselines_job, [(t, s) for t in offline for s in cfg.all_seeds], "baselines",
                            lambda job: f"{job[0]} seed {job[1]}")
    log(f"[2/4] {len(arms)} arms: search on seeds {cfg.search_seeds} (validation), final on seeds {cfg.seeds} (test)")
    for wave in waves(arms):
        runner.settle(wave)
    log("[3/4] extras and exact checks")
    extras = runner.run_extras(claims)
    verified = runner.verify(claims)
    log("[4/4] verdicts")
    final = {(r["arm"], r["seed"]): r for r in runner.results.values() if r["seed"] in cfg.seeds}
    evidence = Evidence(cfg, final, runner.chosen, {(b["task"], b["seed"]): b for b in baselines}, extras, verified)
    judged = [judge_claim(c, evidence) for c in claims]
    invocations = _invocations(run_dir) + [{"command": command, "wall_seconds": round(time.perf_counter() - started, 1),
                                            "load_start": list(load_start), "load_end": list(os.getloadavg())}]
    (run_dir / "invocations.json").write_text(json.dumps(invocations, indent=1))
    report = {"command": command, "preregistration_digest": digest, "config": to_dict(cfg), "machine": machine(),
              "wall_seconds": round(sum(i["wall_seconds"] for i in invocations), 1), "invocations": invocations,
              "cpu_seconds": round(sum(r.get("cpu_seconds", 0.0) for r in runner.results.values())
                                   + sum(r.get("cpu_seconds", 0.0) for r in extras.values()), 1),
              "chosen": runner.chosen, "searches": runner.searches, "rows": judged,
              "cell_seconds": cell_seconds(runner.results.values()),
              "baselines": {f"{b['task']}/seed{b['seed']}": {split: {who: b[split][who] for who in ("sft", "base")}
                                                               for split in ("validation", "test")} for b in baselines},
              "extras": {f"{name}/seed{seed}": v for (name, seed), v in extras.items()},
              "verify": verified}
    (run_dir / "claims.json").write_text(json.dumps(report, indent=1, default=str))
    from preftune.claims.report import write_outputs

    write_outputs(report, run_dir)
    return report


def cell_seconds(results) -> dict:
    """Wall seconds of every arm's cells, search and final together."""
    out: dict = {}
    for r in results:
        out[r["arm"]] = round(out.get(r["arm"], 0.0) + r.get("seconds", 0.0), 1)
    return out


def _invocations(run_dir: Path) -> list[dict]:
    path = run_dir / "invocations.json"
    return json.loads(path.read_text()) if path.exists() else []


def cfg_from(cfg_dict: dict) -> ClaimsConfig:
    return from_dict(ClaimsConfig, cfg_dict)
