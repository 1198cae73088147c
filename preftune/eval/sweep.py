"""`preftune sweep`: gold reward against KL budget, and the over-optimisation curve fitted to it.

Rafailov et al., "Scaling Laws for Reward Model Over-optimisation in Direct Alignment
Algorithms" (NeurIPS 2024; offline.md §13) train DPO, IPO and SLiC at several regularisation
strengths, evaluate intermediate checkpoints too, and plot gold quality against d = sqrt(KL(π ‖
π_ref)). They fit Gao et al.'s form

    R(d) = d·(α − β·log d),

whose peak is at d* = exp(α/β − 1) with value R* = β·d* (set dR/dd = α − β log d − β to 0).
Here each β of the objective gives one training run from the task's SFT model on the task's
on-policy pairs (shared, as in `preftune bench`), and the training diagnostics (diag/kl and
diag/gold_reward every `every` steps on held-out prompts) give the intermediate checkpoints.
R is the gold reward gain over the SFT model, so that R(0) = 0 as the form assumes.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class OveroptFit:
    alpha: float
    beta: float
    d_star: float | None      # None when the fitted curve has no interior maximum (beta <= 0)
    r_star: float | None
    rmse: float
    points: int


def overopt_curve(d, alpha: float, beta: float):
    """R(d) = d·(α − β log d), with R(0) = 0 (the limit of d log d)."""
    d = np.asarray(d, dtype=float)
    safe = np.where(d > 0, d, 1.0)
    return np.where(d > 0, d * (alpha - beta * np.log(safe)), 0.0)


def fit_overopt_curve(d, reward) -> OveroptFit:
    """Least-squares (α, β) of R(d) = d(α − β log d) and its peak d* = exp(α/β − 1), R* = β d*.

    R is linear in (α, β), with regressors d and −d·log d, so the fit is an exact linear least
    squares solve (no initial guess, no local minima). Points at d = 0 carry no information.
    """
    d, reward = np.asarray(d, dtype=float), np.asarray(reward, dtype=float)
    if d.shape != reward.shape:
        raise ValueError("d and reward must have the same length")
    keep = d > 0
    if keep.sum() < 2:
        raise ValueError("fitting R(d) = d(alpha - beta log d) needs at least two points with d > 0")
    x = np.stack([d[keep], -d[keep] * np.log(d[keep])], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(x, reward[keep], rcond=None)
    rmse = float(np.sqrt(np.mean((overopt_curve(d, alpha, beta) - reward) ** 2)))
    if beta > 0:
        d_star = math.exp(alpha / beta - 1.0)
        return OveroptFit(float(alpha), float(beta), d_star, float(beta * d_star), rmse, int(len(d)))
    return OveroptFit(float(alpha), float(beta), None, None, rmse, int(len(d)))


def sweep_points(run_dirs: dict[float, Path]) -> list[dict]:
    """(β, step, KL, d, gold reward) of every diagnostics row of every run."""
    from preftune.train.metrics import read_metrics

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
    from preftune.bench import preference_rows, prepare_assets
    from preftune.config import RunConfig, from_dict
    from preftune.train.loop import train

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
        run_dirs[value] = train(cfg, data_source=rows)
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


def format_sweep(report: dict) -> str:
    fit = report["fit"]
    peak = (f"peak at d* = {fit['d_star']:.3f} (KL {fit['d_star'] ** 2:.3f}), gain R* = {fit['r_star']:+.3f}"
            if fit["d_star"] is not None else "no interior peak (beta <= 0: gold reward still rising at the largest KL)")
    best = report["best_observed"]
    return (f"{len(report['points'])} points from {len(report['values'])} runs of {report['loss']} "
            f"({report['parameter']} = {', '.join(map(str, report['values']))})\n"
            f"fit R(d) = d(alpha - beta log d): alpha = {fit['alpha']:.4f}, beta = {fit['beta']:.4f}, "
            f"RMSE {fit['rmse']:.4f}\n{peak}\n"
            f"start gold reward {report['start_gold_reward']:.3f}; best observed {best['gold_reward']:.3f} at "
            f"{report['parameter']} = {best['value']}, step {best['step']}, KL {best['kl']:.3f}")
