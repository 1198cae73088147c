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

This module holds the curve, its fit and the printed summary; the runs that give the points are a
job on the bench's shared assets (bench/sweep.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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
