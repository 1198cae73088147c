"""The measurement commands of the `preftune` CLI: probe, sweep, bench, report.

cli.py registers them with `add_parsers` and dispatches through `HANDLERS`; the work itself is
in eval/probe.py, bench/sweep.py (with eval/sweep.py), bench/ and report/html.py.
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

BENCH_CONFIG = Path("configs/bench/full.yaml")


def add_parsers(sub, formatter=argparse.RawDescriptionHelpFormatter) -> None:
    from preftune.model_source import add_loading_flags

    p = sub.add_parser(
        "probe", help="linear separability of chosen vs rejected hidden states (More is Less)",
        formatter_class=formatter,
        description="Fit an L2 logistic-regression probe on a model's hidden states of chosen vs rejected responses "
                    "and report its held-out accuracy and AUC per layer (5-fold cross-validation that never splits "
                    "a pair). Accuracy near 1 flags data a DPO model can fit by superficial cues (Wang et al. 2025); "
                    "near 0.5, none are linearly visible.")
    p.add_argument("--model", required=True, help="model directory, hub id, or builtin:arithmetic-sft")
    p.add_argument("--data", required=True, help="preference data: a file, datasets dir, hf:owner/name, or task:<name> "
                                                 "(the model's own samples labelled as training would label them)")
    p.add_argument("--layers", default="last", help="last (default), all, or a comma list such as 0,2,-1")
    p.add_argument("--pooling", choices=("last", "mean"), default="last",
                   help="hidden state of the last response token (default) or the mean over response tokens")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds over pairs (default: 5)")
    p.add_argument("--l2", type=float, default=1.0, help="L2 penalty of the logistic regression (default: 1.0)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many pairs (task data: prompts)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--max-prompt-length", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/probe"), help="output directory (default: runs/probe)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_loading_flags(p)

    p = sub.add_parser(
        "sweep", help="gold reward vs sqrt(KL) over a beta sweep, with the fitted over-optimisation curve",
        formatter_class=formatter,
        description="Train an objective at several values of one hyperparameter (default: dpo's beta) from a task's "
                    "SFT model on its on-policy pairs, log KL and gold reward every --every steps on held-out prompts, "
                    "and fit R(d) = d(alpha - beta log d) to the gain over SFT against d = sqrt(KL), with its peak "
                    "d* = exp(alpha/beta - 1) (Rafailov et al. 2024). SFT model and pairs are made as in "
                    "`preftune bench` (settings from --config).")
    p.add_argument("--task", default="arithmetic", help="built-in task (default: arithmetic)")
    p.add_argument("--loss", default="dpo", help="registered method to train (default: dpo)")
    p.add_argument("--parameter", default="beta", help="its hyperparameter to sweep (default: beta)")
    p.add_argument("--values", default="0.03,0.1,0.3,1.0", help="comma list of values (default: 0.03,0.1,0.3,1.0)")
    p.add_argument("--steps", type=int, default=None, help="preference steps per run (default: the config's)")
    p.add_argument("--every", type=int, default=10, help="steps between KL / gold-reward measurements (default: 10)")
    p.add_argument("--prompts", type=int, default=64, help="held-out prompts per measurement (default: 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", type=Path, default=None, help=f"bench config for SFT, pairs, lengths (default: "
                                                             f"{BENCH_CONFIG} when present)")
    p.add_argument("--out", default="runs/sweep-{task}", help="run directory (default: runs/sweep-TASK)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser(
        "bench", help="every offline method x built-in task x seed, with and without SFT: a results table",
        formatter_class=formatter,
        description="Run every method recipe of configs/methods on every task of the config, for each seed, from the "
                    "task's SFT model and from the base model (Insights into Alignment). The base model of a seed is "
                    "the tiny model, pretrained for pretrain.steps on every task's noisy demonstrations (300 in "
                    "configs/bench/full.yaml; 0, the built-in default, keeps it as initialised); SFT models start "
                    "from it. Base and SFT models and preference "
                    "data are made once per task and seed and shared by all methods. Writes RUN_DIR/results.md and "
                    "results.json (mean ± std over seeds of gold reward, win-rate vs SFT, KL, length, wall time; the "
                    "survey's taxonomy as columns) and plots. Resumes: finished cells are not rerun.",
        epilog="Config keys can be overridden as --key=value, e.g. --seeds=[0,1,2] --workers=2 --methods=[dpo,ipo] "
               "--preference.steps=40 --name=my-bench")
    p.add_argument("--config", type=Path, default=None, help=f"bench config (default: {BENCH_CONFIG})")
    p.add_argument("--smoke", action="store_true", help="the small CI configuration, configs/bench/smoke.yaml")
    p.add_argument("--readme", type=Path, default=None, help="also write the table to this Markdown file "
                                                             "(benchmarks/README.md holds the committed one)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser(
        "report", help="a self-contained HTML page with a run's plots and summary",
        description="Write RUN_DIR/report.html, one self-contained HTML page (plots embedded as PNGs, viewable "
                    "offline) with the plots and summary tables of a training run, a quickstart, a bench, a sweep "
                    "or a probe.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, default=None, help="output file (default: RUN_DIR/report.html)")


def cmd_probe(args, _) -> int:
    from preftune.eval.probe import format_probe, run_probe
    from preftune.model_source import flag_loading

    report = run_probe(args.model, args.data, args.out, layers=args.layers, pooling=args.pooling, folds=args.folds,
                       l2=args.l2, limit=args.limit, max_length=args.max_length,
                       max_prompt_length=args.max_prompt_length, seed=args.seed, progress=not args.json,
                       loading=flag_loading(args))
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{report['pairs']} pairs of {report['data']}; model {report['model']}; pooling {report['pooling']}")
    print(format_probe(report))
    print(f"written to {args.out}/probe.json and {report['plot']}")
    return 0


def cmd_sweep(args, _) -> int:
    from preftune.bench import load_bench_config
    from preftune.bench.sweep import run_sweep
    from preftune.eval.sweep import format_sweep

    config = args.config or (BENCH_CONFIG if BENCH_CONFIG.exists() else None)
    cfg = load_bench_config(config)
    cfg.tasks = {args.task: cfg.tasks.get(args.task, {})}  # this task's bench settings, or the defaults
    cfg.output_dir = args.out.format(task=args.task)
    if args.steps:
        cfg.preference.steps = args.steps
    values = [float(v) for v in args.values.split(",")]
    report = run_sweep(cfg, args.task, loss=args.loss, parameter=args.parameter, values=values, seed=args.seed,
                       every=args.every, prompts=args.prompts, progress=not args.no_progress)
    print()
    print(format_sweep(report))
    print(f"run directory: {cfg.run_dir} (sweep/sweep.json, sweep/sweep.png); `preftune report {cfg.run_dir}`")
    return 0


def cmd_bench(args, overrides: list[str]) -> int:
    from preftune.bench import format_markdown, load_bench_config, run_bench, write_readme

    config = Path("configs/bench/smoke.yaml") if args.smoke else (args.config or BENCH_CONFIG)
    cfg = load_bench_config(config, overrides)
    command = " ".join(shlex.quote(a) for a in ["preftune", "bench", *(["--smoke"] if args.smoke else
                                                                         ["--config", str(config)]), *overrides])
    report = run_bench(cfg, command, progress=not args.no_progress)
    print()
    print(format_markdown(report))
    if args.readme:
        write_readme(report, args.readme)
        print(f"table written to {args.readme}")
    print(f"run directory: {cfg.run_dir} (results.md, results.json, plots/); `preftune report {cfg.run_dir}`")
    return 0


def cmd_report(args, _) -> int:
    from preftune.report.html import build_report

    path = build_report(args.run_dir, args.out)
    print(f"report written to {path}")
    return 0


HANDLERS = {"probe": cmd_probe, "sweep": cmd_sweep, "bench": cmd_bench, "report": cmd_report}
TAKES_OVERRIDES = ("bench",)
