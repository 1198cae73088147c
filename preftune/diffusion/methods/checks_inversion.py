"""Exact checks of SmPO's ReNoise inversion (diffusion.md §12.5), on a Gaussian whose score is known.

For data x0 ~ N(0, sigma^2 I) the exact eps-predictor at level t is s_t x / (a_t^2 sigma^2 + s_t^2)
and the exact flow velocity is (t - (1 - t) sigma^2) x / ((1 - t)^2 sigma^2 + t^2). The probability-
flow ODE maps x0 to x0 * sqrt(a_t^2 sigma^2 + s_t^2) / sigma, so a fine inversion grid must land there.
"""
from __future__ import annotations

import torch

from preftune.diffusion.inversion import inversion_grid, renoise_invert
from preftune.diffusion.methods.checks import DTYPE, close
from preftune.diffusion.schedules import Schedule, expand
from preftune.methods.registry import CheckResult

SIGMA = 0.5


def gaussian_model(schedule: Schedule):
    """The exact network of N(0, SIGMA^2 I) data, called like any model: (x, model_time, cond)."""
    def f(x, time, cond):
        t = time.to(DTYPE) / schedule.num_train_timesteps if schedule.kind == "flow" else time
        a, s = schedule.coefficients(t)
        variance = a.to(DTYPE) ** 2 * SIGMA ** 2 + s.to(DTYPE) ** 2
        if schedule.kind == "flow":
            return expand((s - a * SIGMA ** 2) / variance, x) * x
        return expand(s / variance, x) * x
    return f


def inversion_identities(method: str) -> list[CheckResult]:
    results = []
    g = torch.Generator().manual_seed(3)
    for kind in ("ddpm", "flow"):
        schedule = Schedule.linear(1000) if kind == "ddpm" else Schedule.flow(1000)
        if schedule.alphas_cumprod is not None:
            schedule = Schedule("ddpm", 1000, schedule.alphas_cumprod.to(DTYPE), schedule.final_alpha_cumprod)
        x0 = SIGMA * torch.randn(8, 3, generator=g, dtype=DTYPE)
        steps = 500
        grid = inversion_grid(schedule, steps)
        landing = grid[len(grid) // 2]
        t = torch.full((8,), int(landing) + 1) if kind == "ddpm" else torch.full((8,), float(landing) + 1e-6,
                                                                                  dtype=DTYPE)
        model = gaussian_model(schedule)
        x_t, target = renoise_invert(model, x0, None, t, schedule, steps)
        a, s = schedule.coefficients(t)
        eps_hat = target if kind == "ddpm" else target + x0
        rebuilt = expand(a.to(DTYPE), x0) * x0 + expand(s.to(DTYPE), x0) * eps_hat
        results.append(close(method, f"inversion: a_t x0 + s_t eps_hat == x_t ({kind})", 0.0,
                             float((rebuilt - x_t).abs().max()), 1e-12))
        level = torch.full_like(t, int(landing)) if kind == "ddpm" else torch.full_like(t, float(landing))
        a_l, s_l = schedule.coefficients(level)
        ode = x0 * expand(((a_l.to(DTYPE) ** 2 * SIGMA ** 2 + s_l.to(DTYPE) ** 2).sqrt() / SIGMA), x0)
        relative = float(((x_t - ode).abs().max() / ode.abs().max()))
        results.append(close(method, f"inversion with {steps} steps lands on the probability-flow ODE image ({kind})",
                             0.0, relative, 5e-3))
    return results
