"""`preftune claims`: run the selected rows' experiments and judge them.

1. assets: base models, SFT models and samples of every (task, seed) an arm uses (bench machinery),
   then the SFT and base models' own scores on both splits;
2. in phases, each one worker pool running everything whose inputs exist: the search cells (every
   setting on the search seeds, scored on validation), then the choice (highest mean validation
   score; the first in grid order on a tie), then the final cells (the chosen setting on every final
   seed, scored on test); an arm that reads another arm's models waits for them, and the rows'
   extras (beam search, probes, the sweep) wait for the settings and models they read;
3. the quoted `preftune verify` checks;
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
from preftune.claims.registry import Claim, Extra
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


TASK_COST = {"safety": 5.0, "intransitive": 3.0, "multistep": 1.6, "length-bias": 1.5, "two-objective": 1.2}
EXTRA_COST = {"overopt-sweep": 8.0, "r2q-beam": 3.0}


def job_cost(job: tuple) -> float:
    """A rough relative cost, to start the longest jobs first."""
    if job[0] == "extra":
        return EXTRA_COST.get(job[1], 1.0)
    return TASK_COST.get(get_arm(job[1]).task, 1.0)


def describe_job(job: tuple) -> str:
    return f"{job[1]} seed {job[3] if job[0] == 'cell' else job[2]}"


def run_job(cfg_dict: dict, kind: str, *args) -> dict:
    """A worker's job: a cell (cells.run_cell) or an extra (extras.run_extra)."""
    if kind == "cell":
        from preftune.claims.cells import run_cell

        return run_cell(cfg_dict, *args)
    from preftune.claims.extras import run_extra

    return run_extra(cfg_dict, *args)


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
        self.failed: dict = {}       # arm -> why it could not run
        self.extras: dict = {}       # (extra, seed) -> result
        self.loads: list = []        # the 1-minute load average after each pool (other users of the machine count)

    # ---- the worker pool (the bench's)

    def pool(self, fn, jobs: list[tuple], desc: str, describe) -> list:
        from preftune.bench import _run_jobs

        done = _run_jobs(self.cfg, fn, jobs, desc, self.progress, describe)
        self.loads.append(round(os.getloadavg()[0], 2))
        return done

    # ---- cells

    def model_path(self, arm_name: str, seed: int) -> str:
        from preftune.claims.cells import model_dir

        return str(model_dir(self.cfg, arm_name, self.chosen[arm_name], seed) / "run" / "model")

    def aux_paths(self, arm: Arm, seed: int) -> dict:
        from preftune.claims.assets import assets_of

        return {role: (assets_of(self.cfg, arm.task, seed)["sft_model"] if source == "sft"
                       else self.model_path(source, seed)) for role, source in arm.aux.items()}

    def run(self, arms: list[Arm], extras: list[Extra]) -> None:
        """Every cell and extra, in phases: each phase runs, in one worker pool, everything whose inputs
        exist (a search needs the settings of the arms it reads; a final run needs its own setting and
        the final models it reads; an extra needs its arms' settings and final models). An arm whose
        every search cell failed fails its final runs, and so does whatever reads it: their rows say why."""
        search_left = {a.name for a in arms if a.search_as is None}
        final_left, finals_done = {a.name for a in arms}, set()
        extra_left = {(e.name, seed) for e in extras for seed in ([None] if e.seeds == "none" else self.cfg.seeds)}
        by_name = {e.name: e for e in extras}
        settled = lambda n: n in self.chosen or n in self.failed  # noqa: E731
        phase = 0
        while search_left or final_left or extra_left:
            phase, waiting = phase + 1, len(extra_left)
            jobs, searching, finishing = [], set(), set()
            for name in sorted(search_left):
                arm = get_arm(name)
                if all(settled(d) for d in arm.depends_on):
                    searching.add(name)
                    if self.blocked(arm.depends_on, name):
                        continue
                    jobs += [("cell", name, setting, seed, self.aux_paths(arm, seed))
                             for setting in settings_of(arm, self.cfg.lr_grid, self.cfg.grid_points)
                             for seed in self.cfg.search_seeds]
            for name in sorted(final_left):
                arm = get_arm(name)
                source = arm.search_as or name
                reads = [d for d in arm.depends_on if d != arm.search_as]
                if settled(source) and all(d in finals_done for d in reads):
                    finishing.add(name)
                    if self.blocked((source, *reads), name):
                        self.record_failures(name)
                        continue
                    self.chosen.setdefault(name, self.chosen[source])
                    jobs += [("cell", name, self.chosen[name], seed, self.aux_paths(arm, seed))
                             for seed in self.cfg.seeds]
            for name, seed in sorted(extra_left, key=str):
                extra = by_name[name]
                if all(n in finals_done for n in extra.needs) and all(settled(n) for n in extra.after):
                    failed = [n for n in (*extra.needs, *extra.after) if n in self.failed]
                    if failed:
                        self.extras[(name, seed)] = {"extra": name, "seed": seed, "status": "error",
                                                     "error": f"{failed[0]} failed: {self.failed[failed[0]]}"}
                        extra_left.discard((name, seed))
                        continue
                    models = {n: self.model_path(n, seed) for n in extra.needs}
                    jobs.append(("extra", name, seed, models, dict(self.chosen)))
            if not (jobs or searching or finishing or len(extra_left) < waiting):
                raise RuntimeError(f"claims: nothing can run; waiting: {sorted(search_left | final_left)}")
            jobs.sort(key=job_cost, reverse=True)  # longest first, so that no long job starts last
            self.log(f"  phase {phase}: {len(jobs)} jobs: searches of {len(searching)} arms, final runs of "
                     f"{len(finishing)} arms, {sum(j[0] == 'extra' for j in jobs)} extras")
            for result in self.pool(run_job, jobs, f"phase {phase}", describe_job) if jobs else []:
                if "extra" in result:
                    self.extras[(result["extra"], result["seed"])] = result
                    extra_left.discard((result["extra"], result["seed"]))
                else:
                    self.results[(result["arm"], json.dumps(result["setting"], sort_keys=True), result["seed"])] = result
            for name in searching - set(self.failed):
                try:
                    self.chosen[name], self.searches[name] = choose(self.cfg, get_arm(name), self.results)
                except RuntimeError as error:
                    self.failed[name] = str(error)
            search_left -= searching
            final_left -= finishing
            finals_done |= finishing

    def blocked(self, sources, name: str) -> bool:
        """Whether an arm cannot run because an arm it needs failed (recorded as its own failure)."""
        failed = [s for s in sources if s in self.failed]
        if failed and name not in self.failed:
            self.failed[name] = f"needs {failed[0]}, which failed: {self.failed[failed[0]]}"
        return name in self.failed

    def record_failures(self, name: str) -> None:
        """Final results that carry the arm's failure, so that its rows report it."""
        for seed in self.cfg.seeds:
            self.results[(name, "failed", seed)] = {"arm": name, "seed": seed, "setting": None, "status": "error",
                                                    "error": self.failed[name]}


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
    digest = preregistration_digest(cfg, arms, claims)
    (run_dir / "preregistration.json").write_text(
        json.dumps({"digest": digest, **preregistration(cfg, arms, claims)}, indent=1, default=str))
    runner = Runner(cfg, progress, log)
    offline = sorted({a.task for a in arms if a.kind == "offline"})
    log(f"[1/4] assets for {len(offline)} tasks x {len(cfg.all_seeds)} seeds ({', '.join(offline) or 'none'})")
    make_assets(cfg, offline, cfg.all_seeds, progress, log)
    baselines = runner.pool(baselines_job, [(t, s) for t in offline for s in cfg.all_seeds], "baselines",
                            lambda job: f"{job[0]} seed {job[1]}")
    extras = list({e.name: e for c in claims for e in c.extras}.values())
    log(f"[2/4] {len(arms)} arms (search on seeds {cfg.search_seeds}, validation; final on seeds {cfg.seeds}, test) "
        f"and {len(extras)} extras")
    runner.run(arms, extras)
    log("[3/4] exact checks (preftune verify)")
    verified = runner.verify(claims)
    extras = runner.extras
    log("[4/4] verdicts")
    final = {(r["arm"], r["seed"]): r for r in runner.results.values() if r["seed"] in cfg.seeds}
    evidence = Evidence(cfg, final, runner.chosen, {(b["task"], b["seed"]): b for b in baselines}, extras, verified)
    judged = [judge_claim(c, evidence) for c in claims]
    invocations = _invocations(run_dir) + [{"command": command, "wall_seconds": round(time.perf_counter() - started, 1),
                                            "load_start": list(load_start), "load_end": list(os.getloadavg()),
                                            "loads_after_each_pool": runner.loads}]
    (run_dir / "invocations.json").write_text(json.dumps(invocations, indent=1))
    report = {"command": command, "preregistration_digest": digest, "config": to_dict(cfg), "machine": machine(),
              "wall_seconds": round(sum(i["wall_seconds"] for i in invocations), 1), "invocations": invocations,
              "cpu_seconds": round(sum(r.get("cpu_seconds", 0.0) for r in runner.results.values())
                                   + sum(r.get("cpu_seconds", 0.0) for r in extras.values()), 1),
              "chosen": runner.chosen, "searches": runner.searches, "rows": judged,
              "cell_seconds": cell_seconds(runner.results.values()),
              "finals": finals_by_arm(final.values()),
              "baselines": {f"{b['task']}/seed{b['seed']}": {split: {who: b[split][who] for who in ("sft", "base")}
                                                               for split in ("validation", "test")} for b in baselines},
              "extras": {f"{name}/seed{seed}": v for (name, seed), v in extras.items()},
              "verify": verified}
    (run_dir / "claims.json").write_text(json.dumps(report, indent=1, default=str))
    from preftune.claims.report import write_outputs

    write_outputs(report, run_dir)
    return report


def finals_by_arm(cells) -> dict:
    """arm -> {task, start, seeds: {seed: metrics}} of the final cells (test split)."""
    out: dict = {}
    for cell in cells:
        arm = get_arm(cell["arm"])
        entry = out.setdefault(cell["arm"], {"task": arm.task, "loss": arm.loss, "start": arm.start, "seeds": {}})
        entry["seeds"][str(cell["seed"])] = cell.get("metrics") if cell.get("status") == "ok" else \
            {"error": cell.get("error")}
    return out


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
