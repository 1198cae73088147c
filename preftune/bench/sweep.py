"""`preftune sweep`: train one objective at several regularisation strengths from a task's SFT model,
on the task's on-policy pairs (the bench's shared assets), and fit the over-optimisation curve
R(d) = d(alpha - beta log d) to gold reward gain against d = sqrt(KL) (eval/sweep.py; offline.md §13).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from preftune.bench.assets import preference_rows, prepare_assets
from preftune.config import RunConfig, from_dict
from preftune.eval.sweep import fit_overopt_curve
from preftune.train.metrics import read_metrics


def sweep_points(run_dirs: dict[float, Path]) -> list[dict]:
    """(β, step, KL, d, gold reward) of every diagnostics row of every run."""
    points = []
    for value, run_dir in run_dirs.items():
        for row in read_metrics(run_dir):
            if "diag/kl" in row and "diag/gold_reward" in row:
                kl = row["diag/kl"]
                # The Monte-Carlo KL can come out slightly negative near 0; d is then 0.
                points.append({"value": value, "step": row["step"], "kl": kl, "d": math.sqrt(max(kl, 0.0)),
                               "gold_reward": row["diag/gold_reward"]})
    return points


def run_sweep(bench_cfg, task: str, *, loss: str = "dpo", parameter: str = "beta", values=(0.03, 0.1, 0.3, 1.0),
              seed: int = 0, every: int = 10, prompts: int = 64, samples_per_prompt: int = 4,
              progress: bool = True, log=print) -> dict:
    """Train `loss` at each `parameter` value from the task's SFT model and fit the curve; writes
    sweep.json and sweep.png to the bench config's run directory."""
    from preftune.train.runner import run_training

    run_dir = bench_cfg.run_dir
    log(f"[1/3] SFT model and on-policy pairs for {task} (seed {seed})")
    assets = prepare_assets(bench_cfg, task, seed, progress)
    settings = bench_cfg.task_settings(task)
    rows, data_stats = preference_rows(bench_cfg, assets, "best-worst")
    run_dirs = {}
    log(f"[2/3] {loss} at {parameter} = {', '.join(map(str, values))}, diagnostics every {every} steps")
    for value in values:
        cfg = from_dict(RunConfig, {
            "name": f"{loss}-{parameter}{value:g}", "output_dir": str(run_dir / "sweep" / "{name}"),
            "model": {"name_or_path": assets["sft_model"]}, "loss": {loss: {parameter: value}},
            "data": {"source": f"task:{task}", "max_length": settings.max_length, "eval_fraction": 0.1,
                     "max_prompt_length": settings.max_prompt_length,
                     "task": {"options": settings.options, "labeller": settings.labeller}},
            "train": {"steps": bench_cfg.preference.steps, "batch_size": bench_cfg.preference.batch_size,
                      "lr": bench_cfg.preference.lr or 1e-4, "seed": seed, "progress": progress, "log_every": 5},
            "diagnostics": {"every": every, "examples": 32, "prompts": prompts,
                            "samples_per_prompt": samples_per_prompt, "max_new_tokens": settings.max_new_tokens}})
        run_dirs[value] = run_training(cfg, data_source=rows)
    log("[3/3] fitting R(d) = d(alpha - beta log d)")
    points = sweep_points(run_dirs)
    start = next(p["gold_reward"] for p in points if p["step"] == 0)
    for p in points:
        p["gain"] = p["gold_reward"] - start
    fit = fit_overopt_curve([p["d"] for p in points], [p["gain"] for p in points])
    report = {"task": task, "loss": loss, "parameter": parameter, "values": list(values), "seed": seed,
              "start_gold_reward": start, "points": points, "fit": asdict(fit), "data": data_stats,
              "runs": {str(k): str(v) for k, v in run_dirs.items()},
              "best_observed": max(points, key=lambda p: p["gold_reward"])}
    from preftune.report.measure_plots import plot_sweep

    (run_dir / "sweep").mkdir(parents=True, exist_ok=True)
    report["plot"] = str(plot_sweep(report, run_dir / "sweep" / "sweep.png"))
    (run_dir / "sweep" / "sweep.json").write_text(json.dumps(report, indent=1))
    return report
