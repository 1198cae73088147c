"""SmPO's ReNoise inversion: noise a clean sample by running the current model backwards (diffusion.md §4).

Instead of x_t = a_t x0 + s_t eps with random eps, SmPO walks a K-step inverse grid from x0 up to
the training time t*, under no_grad, with the current policy. At each grid level g < t*:

    e1 = f(x, g, c);  x' = INV(e1, x);  e2 = f(x', g, c);  x <- INV((e1 + e2)/2, x)

where INV moves x from the previous level p to g along the predicted noise (DDIM inversion:
x0_hat = (x - sqrt(1 - abar_p) e)/sqrt(abar_p), x_g = sqrt(abar_g) x0_hat + sqrt(1 - abar_g) e;
the level before the first is clean, abar = 1). The training pair is then
(x_t := x, target eps_hat = (x - sqrt(abar_t*) x0)/sqrt(1 - abar_t*)), so that
sqrt(abar_t*) x0 + sqrt(1 - abar_t*) eps_hat == x_t by construction. As in the official code
(and flagged in diffusion.md §13.8) x ends at the largest grid level below t* but is labelled t*.

Flow models are a port [R]: Euler inversion of the velocity field over levels k/K, with
eps_hat = (x_t - (1 - t*) x0)/t* and target u = eps_hat - x0.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from preftune.diffusion.primitives import Model
from preftune.diffusion.schedules import Schedule, expand


def inversion_grid(schedule: Schedule, steps: int) -> Tensor:
    """The ascending inverse grid: DDPM levels 0, T/K, 2T/K, ... (DDIMInverseScheduler's), flow k/K for k >= 1."""
    if steps < 1:
        raise ValueError(f"inversion steps must be >= 1, got {steps}")
    if schedule.kind == "flow":
        return torch.arange(1, steps, dtype=torch.float32) / steps
    return torch.arange(steps) * (schedule.num_train_timesteps // steps)


def _ddim_move(e: Tensor, x: Tensor, abar_from: Tensor, abar_to: Tensor) -> Tensor:
    x0_hat = (x - expand((1 - abar_from).sqrt(), x) * e) / expand(abar_from.sqrt(), x)
    return expand(abar_to.sqrt(), x) * x0_hat + expand((1 - abar_to).sqrt(), x) * e


@torch.no_grad()
def renoise_invert(model: Model, x0: Tensor, cond: Any, t: Tensor, schedule: Schedule, steps: int,
                   renoise: bool = True) -> tuple[Tensor, Tensor]:
    """(x_t, target) for training at times t (B,) from clean x0 by ReNoise inversion with `model`.

    steps: K of the inverse grid (5 for SD1.5, 10 for SDXL in the official code). renoise=False
    gives plain DDIM inversion (one prediction per level). Each sample moves only through the grid
    levels below its own t.
    """
    if schedule.parameterization == "v_prediction":
        raise ValueError("SmPO's inversion is defined for eps-prediction and flow models, not v_prediction")
    grid = inversion_grid(schedule, steps).to(x0.device)
    x = x0.clone()
    previous = torch.zeros_like(t, dtype=torch.float32) if schedule.kind == "flow" else torch.full_like(t, -1)
    for level in grid:
        active = level < t
        if not bool(active.any()):
            break
        g = torch.full_like(t, level.item(), dtype=t.dtype)

        def move(prediction: Tensor, x_from: Tensor) -> Tensor:
            if schedule.kind == "flow":  # Euler along the velocity, from `previous` up to g
                return x_from + expand((g - previous).float(), x_from) * prediction
            abar_from = torch.where(previous < 0, torch.ones_like(g, dtype=torch.float32),
                                    schedule.alpha_bar(previous))
            return _ddim_move(prediction, x_from, abar_from, schedule.alpha_bar(g))

        e1 = model(x, schedule.model_time(g), cond)
        moved = move(e1, x)
        if renoise:
            e2 = model(moved, schedule.model_time(g), cond)
            moved = move((e1 + e2) / 2, x)
        x = torch.where(expand(active, x).bool(), moved, x)
        previous = torch.where(active, g, previous)
    a, s = schedule.coefficients(t)
    eps_hat = (x - expand(a, x) * x0) / expand(s, x)
    target = eps_hat if schedule.parameterization == "epsilon" else eps_hat - x0
    return x, target
