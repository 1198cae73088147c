"""The catalogue's RL rows, each claim measured against its baseline: one committed table.

    python benchmarks/rl.py                  # the full table: benchmarks/results/rl.md and rl.json
    python benchmarks/rl.py --smoke --out /tmp/rl-smoke --table /tmp/rl-smoke/rl.md   # CI: tiny and fast
    python benchmarks/rl.py --collect        # run nothing: the table of the runs finished so far under --out

Run again after an interruption, it keeps the runs already finished under --out and makes the rest.

Every cell is one `preftune rl` run (configs/rl/<recipe>.yaml with the overrides below), seeds 0-2. The
language-model cells start from one SFT model per task (the recipes' warm start, seed 0), built first
and shared, so a method and its baseline start from the same policy and are evaluated on the same
held-out prompts with the same sampling seed (iteration 0 of every run is that SFT model). Claims:

  mo-grpo    two-objective and safety: with w = (.5, .5) every gold aspect after > the SFT model's; the
             weights move the trade-off (w = (.8, .2) vs (.5, .5): each aspect is higher under its larger weight);
  rto        multistep: gold accuracy after RTO > after PPO with the sequence reward alone, equal rollouts;
  dapo-step, oreo, mcts-dpo   multistep: accuracy after > the SFT model's; OREO: value-guided search
             adds to OREO's own policy;
  pdppo      lot-sizing: PDPPO's exact expected return > PPO's, and both near the DP optimum.

A claim "holds" when the mean over seeds improves and a majority of seeds improves; the numbers are in
the table either way. Settings were fixed before the final run and are not tuned per claim: every
language-model method uses the same policy learning rate, about 8 optimizer steps per iteration, 8 iterations
and the same evaluation (64 held-out prompts, 2 samples each, and greedy decoding). A first attempt with a
policy learning rate of 1e-4 (seed 0, results/rl_first_attempt.md) moved every language-model policy by
more than 1 nat of KL within a few iterations and every one lost accuracy; the final table uses 3e-5 for
all of them (KL grows about as lr^2; 3e-5 is also the learning rate of the online recipes in
configs/online/), chosen before any run at 3e-5.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs" / "rl"
LM_COMMON = ["--train.lr=3.0e-5", "--value.lr=1.0e-4", "--iterations=8", "--eval.prompts=64",
             "--eval.samples_per_prompt=2"]
SMOKE_COMMON = ["--iterations=1", "--rollout.prompts_per_iteration=4", "--rollout.samples_per_prompt=2",
                "--rollout.max_new_tokens=8", "--eval.prompts=4", "--eval.samples_per_prompt=1", "--eval.max_new_tokens=8",
                "--train.batch_size=4", "--oreo.prompts=8", "--oreo.samples_per_prompt=2", "--oreo.beams=2",
                "--reward.samples=16", "--reward.steps=4", "--value.steps=4", "--dapo.states=4", "--dapo.critic_prompts=4",
                "--dapo.completions=2", "--dapo.candidates=2", "--mcts.simulations=2", "--mcts.root_multiplier=1",
                "--dpo.path=builtin:tiny"]  # the untrained model has no right answers to pair: a stand-in DPO model
LOT_SIZING_SMOKE = ["--updates=2", "--episodes_per_update=4", "--epochs=2", "--eval_every=2"]
# (cell, recipe, task of its SFT model or None, overrides)
CELLS = [
    ("pdppo", "pdppo", None, []),
    ("ppo (lot-sizing)", "ppo_lot_sizing", None, []),
    ("ppo", "ppo", "multistep", []),
    ("rto", "rto", "multistep", []),
    ("dapo_step", "dapo_step", "multistep", []),
    ("oreo", "oreo", "multistep", []),
    ("mcts_dpo", "mcts_dpo", "multistep", []),
    *((f"mo_grpo {task} w=({a},{b})", recipe, task, [f"--loss.mo_grpo.weights=[0{a},0{b}]"])
      for task, recipe in (("two-objective", "mo_grpo"), ("safety", "mo_grpo_safety"))
      for a, b in ((".5", ".5"), (".8", ".2"))),
]
SFT_RECIPE = {"multistep": "dapo_step", "two-objective": "mo_grpo", "safety": "mo_grpo_safety"}


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")


def sft_models(tasks: set[str], smoke: bool) -> dict[str, str]:
    """One SFT model per task (the recipes' warm start with seed 0), trained once and cached."""
    from preftune.rl.config import load_rl_config
    from preftune.train.online import warm_start

    if smoke:
        return {task: "builtin:tiny" for task in tasks}
    return {task: warm_start(load_rl_config(RECIPES / f"{SFT_RECIPE[task]}.yaml", ["--train.progress=false"]))
            for task in sorted(tasks)}


def run_cell(cell: tuple, seed: int, models: dict, out: Path, smoke: bool, jobs: int) -> dict:
    name, recipe, task, extra = cell
    lot_sizing = task is None
    overrides = [f"--output_dir={out}/runs/{{name}}", f"--name={slug(name)}-seed{seed}", f"--train.seed={seed}",
                 "--train.progress=false", *extra]
    if lot_sizing:
        overrides += LOT_SIZING_SMOKE if smoke else []
    else:
        overrides += [f"--model.name_or_path={models[task]}", "--warm_start.enabled=false",
                      *(SMOKE_COMMON if smoke else LM_COMMON)]
    finished = out / "runs" / f"{slug(name)}-seed{seed}"
    if not smoke and (finished / "rl_summary.json").exists() and (finished / "cpu_seconds.json").exists():
        return finished_cell(name, seed, finished)  # an interrupted benchmark, run again, keeps its finished runs
    started = time.perf_counter()
    if jobs == 0:  # in this process (the smoke test)
        from preftune.rl.config import load_rl_config
        from preftune.rl.loop import run_rl
        from preftune.tabular.expected import single_threaded

        run_dir, code = out / "runs" / f"{slug(name)}-seed{seed}", 0
        try:
            with single_threaded():
                run_rl(load_rl_config(RECIPES / f"{recipe}.yaml", overrides))
        except Exception as error:  # noqa: BLE001 - a failed cell is reported in the table, not fatal
            print(f"{name} seed {seed} failed: {type(error).__name__}: {error}", file=sys.stderr)
            code = 1
    else:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT),
                   PREFTUNE_THREADS="1")
        log = out / "logs" / f"{slug(name)}-seed{seed}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as handle:
            code = subprocess.call([sys.executable, str(Path(__file__).resolve()), "--one", str(RECIPES / f"{recipe}.yaml"),
                                    *overrides], stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        run_dir = out / "runs" / f"{slug(name)}-seed{seed}"
    summary_path, cpu_path = Path(run_dir) / "rl_summary.json", Path(run_dir) / "cpu_seconds.json"
    summary = json.loads(summary_path.read_text()) if code == 0 and summary_path.exists() else None
    cpu = json.loads(cpu_path.read_text())["cpu_seconds"] if cpu_path.exists() else None
    return {"cell": name, "seed": seed, "code": code, "seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": cpu, "summary": summary}


def finished_cell(name: str, seed: int, run_dir: Path) -> dict:
    """A run that an earlier, interrupted invocation finished: its numbers, and the run's own wall time."""
    summary = json.loads((run_dir / "rl_summary.json").read_text())
    cpu = json.loads((run_dir / "cpu_seconds.json").read_text())["cpu_seconds"]
    return {"cell": name, "seed": seed, "code": 0, "seconds": summary.get("wall_seconds"), "cpu_seconds": cpu,
            "summary": summary, "reused": True}


def collected(name: str, seed: int, out: Path) -> dict:
    """--collect: a finished run's numbers, or a row saying the run was not made."""
    run_dir = out / "runs" / f"{slug(name)}-seed{seed}"
    if (run_dir / "rl_summary.json").exists() and (run_dir / "cpu_seconds.json").exists():
        return finished_cell(name, seed, run_dir)
    return {"cell": name, "seed": seed, "code": None, "seconds": None, "cpu_seconds": None, "summary": None}


def one(recipe: str, overrides: list[str]) -> int:
    """A single cell in this (child) process, with one torch thread."""
    import torch

    from preftune.rl.config import load_rl_config
    from preftune.rl.loop import run_rl

    torch.set_num_threads(1)
    run_dir = run_rl(load_rl_config(recipe, overrides))
    (run_dir / "cpu_seconds.json").write_text(json.dumps({"cpu_seconds": round(time.process_time(), 1)}))
    return 0


# ------------------------------------------------------------------------------------------ the claims

def final(result: dict, key: str) -> float:
    s = result["summary"]
    return s["final"][key] if s["kind"] == "lot-sizing" else s["iterations"][-1][key]


def initial(result: dict, key: str) -> float:
    return result["summary"]["iterations"][0][key]


def stats(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def verdict(differences: list[float]) -> str:
    if not differences:
        return "no runs"
    better = sum(d > 0 for d in differences)
    return "holds" if statistics.fmean(differences) > 0 and better * 2 > len(differences) else "does not hold"


def claims(results: list[dict]) -> list[dict]:
    ok = [r for r in results if r["summary"]]
    by = lambda cell: sorted((r for r in ok if r["cell"] == cell), key=lambda r: r["seed"])  # noqa: E731
    rows = []

    def paired(cell_a: str, cell_b: str, key_a: str, key_b: str | None = None, base: bool = False):
        a, b = by(cell_a), by(cell_b)
        pairs = [(x, y) for x in a for y in b if x["seed"] == y["seed"]]
        return ([final(x, key_a) for x, _ in pairs],
                [initial(y, key_b or key_a) if base else final(y, key_b or key_a) for _, y in pairs])

    after, before = paired("pdppo", "ppo (lot-sizing)", "eval/expected_return")
    optimum = final(by("pdppo")[0], "eval/optimum") if by("pdppo") else float("nan")
    rows.append({"claim": "pdppo: PDPPO's expected return > PPO's (exact, by DP); DP optimum "
                          f"{optimum:.3f}", "method": stats(after), "baseline": stats(before),
                 "verdict": verdict([x - y for x, y in zip(after, before)])})
    gaps = [optimum - v for v in after + before]
    rows.append({"claim": "pdppo, ppo: both approach the DP optimum (gap = optimum - expected return)",
                 "method": stats(gaps[:len(after)]), "baseline": stats(gaps[len(after):]),
                 "verdict": "holds" if gaps and max(gaps) < 0.1 * abs(optimum) else "does not hold"})
    after, before = paired("rto", "ppo", "eval/gold_reward_greedy")
    rows.append({"claim": "rto: greedy accuracy after RTO > after PPO with the sequence reward (multistep)",
                 "method": stats(after), "baseline": stats(before), "verdict": verdict([x - y for x, y in zip(after, before)])})
    after, before = paired("rto", "ppo", "eval/gold_reward")
    rows.append({"claim": "rto: sampled accuracy after RTO > after PPO", "method": stats(after), "baseline": stats(before),
                 "verdict": verdict([x - y for x, y in zip(after, before)])})
    for cell in ("dapo_step", "oreo", "mcts_dpo"):
        for key, what in (("eval/gold_reward_greedy", "greedy"), ("eval/gold_reward", "sampled")):
            after, before = paired(cell, cell, key, base=True)
            rows.append({"claim": f"{cell}: {what} accuracy after > the SFT model's (multistep)", "method": stats(after),
                         "baseline": stats(before), "verdict": verdict([x - y for x, y in zip(after, before)])})
    searched, plain = paired("oreo", "oreo", "eval/search_gold_reward", "eval/gold_reward_greedy")
    rows.append({"claim": "oreo: value-guided step beam search > OREO's greedy decoding", "method": stats(searched),
                 "baseline": stats(plain), "verdict": verdict([x - y for x, y in zip(searched, plain)])})
    for task, aspects in (("two-objective", ("helpful", "concise")), ("safety", ("harmless", "helpful"))):
        balanced, leaning = f"mo_grpo {task} w=(.5,.5)", f"mo_grpo {task} w=(.8,.2)"
        for aspect in aspects:
            after, before = paired(balanced, balanced, f"eval/aspect/{aspect}", base=True)
            rows.append({"claim": f"mo_grpo w=(.5,.5) ({task}): gold {aspect} after > the SFT model's",
                         "method": stats(after), "baseline": stats(before),
                         "verdict": verdict([x - y for x, y in zip(after, before)])})
        for k, aspect in enumerate(aspects):  # aspect 0 weighs .8 in `leaning`, aspect 1 weighs .5 in `balanced`
            more, less = (leaning, balanced) if k == 0 else (balanced, leaning)
            first, second = paired(more, less, f"eval/aspect/{aspect}")
            rows.append({"claim": f"mo_grpo ({task}): gold {aspect} is higher when its weight is "
                                  f"{'.8 than .5' if k == 0 else '.5 than .2'}", "method": stats(first),
                         "baseline": stats(second), "verdict": verdict([x - y for x, y in zip(first, second)])})
    return rows


def markdown(report: dict) -> str:
    if report.get("collected"):
        timing = [f"Collected on {report['machine']} (CPU flags: {report['cpu_flags']}) from the runs already finished "
                  f"under the output directory; nothing ran. CPU time of those runs {report['cpu_seconds'] / 60:.1f} min "
                  "(each run one thread); each run's own wall time is in the last table.", ""]
    else:
        timing = [f"Wall time {report['wall_seconds'] / 60:.1f} min on {report['machine']} (CPU flags: {report['cpu_flags']}); "
                  f"{report['jobs']} runs at a time, 1 torch thread each; seeds {report['seeds']}; load average "
                  f"{report['load_start']} at the start, {report['load_end']} at the end (the machine was shared; wall "
                  "times depend on load, the numbers do not).", "",
                  f"CPU time of the runs {report['cpu_seconds'] / 60:.1f} min (each run one thread; on 2 idle cores about half "
                  "of it is the wall time, plus the SFT models' training when they are not cached); CPU time of the whole "
                  f"command (this process and its children, user + system) {report.get('total_cpu_seconds', 0) / 60:.1f} min.", ""]
    lines = [f"# RL hybrids: each catalogue claim against its baseline ({report['date']})", "",
             f"Command: `{report['command']}`", "", *timing,
             *([f"{reused} runs were finished by an earlier invocation that was stopped, and kept (their wall time "
                "is the run's own; the command's wall time above counts only this invocation)", ""]
               if (reused := sum(bool(r.get("reused")) for r in report["runs"])) else []),
             "Mean ± std over seeds; a claim holds when the mean improves and a majority of seeds improves.", "",
             "| claim | method | baseline | verdict |", "|---|---|---|---|"]
    lines += [f"| {r['claim']} | {r['method']} | {r['baseline']} | {r['verdict']} |" for r in report["claims"]]
    lines += ["", "Per run (final held-out evaluation; lot-sizing: exact expected return):", "",
              "| cell | seed | start | final | extra | wall s | CPU s |", "|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        s = r["summary"]
        if s is None:
            state = "not run" if r["code"] is None else f"failed (exit {r['code']})"
            lines.append(f"| {r['cell']} | {r['seed']} | {state} | | | {r['seconds']} | |")
        elif s["kind"] == "lot-sizing":
            lines.append(f"| {r['cell']} | {r['seed']} | – | {s['final']['eval/expected_return']:.3f} | greedy "
                         f"{s['final']['eval/greedy_return']:.3f} | {r['seconds']} | {r['cpu_seconds']} |")
        else:
            first, last = s["iterations"][0], s["iterations"][-1]
            extra = ", ".join(f"{k[5:]} {last[k]:.3f}" for k in last if k.startswith(("eval/aspect/", "eval/search")))
            lines.append(f"| {r['cell']} | {r['seed']} | {first['eval/gold_reward_greedy']:.3f} | "
                         f"{last['eval/gold_reward_greedy']:.3f} | {extra} | {r['seconds']} | {r['cpu_seconds']} |")
    return "\n".join(lines) + "\n"


def total_cpu_seconds() -> float:
    """User + system CPU time of this process and of the children it waited for (the cells' processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 1)


def cpu_flags() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown"
    flags = [f for f in ("avx512_bf16", "amx_bf16", "avx2") if f" {f}" in text or f"{f} " in text]
    return " ".join(flags) or "none of avx512_bf16, amx_bf16, avx2"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--one":
        return one(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny runs from the untrained tiny model, one seed (CI)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (smoke: 0)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, each a process of 1 torch thread; "
                                                             "0 runs them in this process (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "rl-bench")
    parser.add_argument("--table", type=Path, default=ROOT / "benchmarks" / "results" / "rl.md")
    parser.add_argument("--cells", nargs="+", default=None, help="only these cells (names as in the table)")
    parser.add_argument("--collect", action="store_true", help="run nothing: the table of the runs already finished "
                                                                 "under --out (an interrupted benchmark); the rest are "
                                                                 "listed as not run")
    args = parser.parse_args(argv)
    seeds = args.seeds or ([0] if args.smoke else [0, 1, 2])
    cells = [c for c in CELLS if args.cells is None or c[0] in args.cells]
    args.out.mkdir(parents=True, exist_ok=True)
    load_start, started = [round(x, 2) for x in os.getloadavg()], time.perf_counter()
    models = {} if args.collect else sft_models({c[2] for c in cells if c[2]}, args.smoke)
    jobs = [(cell, seed) for seed in seeds for cell in cells]
    if args.collect:
        results = [collected(cell[0], seed, args.out) for cell, seed in jobs]
    elif args.jobs == 0:
        results = [run_cell(cell, seed, models, args.out, args.smoke, 0) for cell, seed in jobs]
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda job: run_cell(job[0], job[1], models, args.out, args.smoke, args.jobs), jobs))
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python benchmarks/rl.py " + " ".join(argv),
              "wall_seconds": round(time.perf_counter() - started, 1), "machine": f"{os.cpu_count()} CPU cores, "
              f"{platform.machine()}", "cpu_flags": cpu_flags(), "jobs": args.jobs, "seeds": seeds,
              "load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()], "sft_models": models,
              "cpu_seconds": sum(r["cpu_seconds"] or 0.0 for r in results), "total_cpu_seconds": total_cpu_seconds(),
              "collected": args.collect, "claims": claims(results), "runs": results}
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text(markdown(report))
    args.table.with_suffix(".json").write_text(json.dumps(report, indent=1))
    print(markdown(report))
    return 0 if all(r["code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
