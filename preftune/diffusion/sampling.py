"""Samplers that keep what the methods need: DDIM-eta, the flow SDE, and the deterministic ODE/DDIM.

`sample(...)` walks the schedule's grid from noise to data with any `model(x_t, model_time, cond)`
callable. With `keep="steps"` it records every stochastic transition (x_k, x_{k-1}, k, k-1) and its
log-probability under the sampling model (D3PO, DDPO, Flow-GRPO need them); with `keep="states"` it
records each state with the sampler's own prediction there (Diffusion-DRO's replay buffer).
Classifier-free guidance mixes a conditional and an unconditional prediction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from preftune.diffusion.primitives import gaussian_logprob, step_mean_std
from preftune.diffusion.schedules import Schedule, expand

SAMPLERS = ("ddim", "sde", "ode")


@dataclass
class Trajectory:
    """What a sampler kept. Lists run over the sampling steps; tensors are (N, *dims) or (N,)."""

    x0: Tensor
    states: list[Tensor] = field(default_factory=list)        # x_k before step k
    next_states: list[Tensor] = field(default_factory=list)   # x_{k-1} after it ("steps")
    times: list[Tensor] = field(default_factory=list)         # t_k per sample
    next_times: list[Tensor] = field(default_factory=list)    # t_{k-1}
    logps: list[Tensor] = field(default_factory=list)         # log pi(x_{k-1} | x_k) under the sampler ("steps")
    predictions: list[Tensor] = field(default_factory=list)   # the sampler's prediction at x_k ("states")
    stochastic: list[bool] = field(default_factory=list)      # step k has a density (std > 0)

    def step_tensors(self) -> dict[str, Tensor]:
        """The stochastic steps stacked: (N, S, ...) tensors (S = steps with a density)."""
        keep = [i for i, s in enumerate(self.stochastic) if s]
        stack = lambda values: torch.stack([values[i] for i in keep], dim=1)
        return {"x": stack(self.states), "x_prev": stack(self.next_states), "t": stack(self.times),
                "t_prev": stack(self.next_times), "logp": stack(self.logps)}


def guided(model: Callable, x: Tensor, time: Tensor, cond: Any, uncond: Any, guidance: float) -> Tensor:
    if guidance == 1.0 or uncond is None:
        return model(x, time, cond)
    both = model(torch.cat([x, x]), torch.cat([time, time]), _concat(uncond, cond))
    u, c = both.chunk(2)
    return u + guidance * (c - u)


def _concat(a: Any, b: Any) -> Any:
    if a is None:
        return None
    if isinstance(a, dict):
        return {k: torch.cat([a[k], b[k]]) for k in a}
    return torch.cat([a, b])


@torch.no_grad()
def sample(model: Callable, schedule: Schedule, shape: tuple[int, ...], cond: Any = None, *, steps: int = 20,
           sampler: str = "ddim", noise: float = 1.0, generator: torch.Generator | None = None,
           x_T: Tensor | None = None, keep: str | None = None, guidance: float = 1.0, uncond: Any = None,
           device=None, dtype=torch.float32) -> Trajectory:
    """Draw shape[0] samples. sampler: "ddim" (DDPM schedules; noise = eta, 0 = deterministic DDIM),
    "sde" (flow; noise = the noise level a) or "ode" (flow Euler, deterministic). keep: None,
    "steps" or "states". x_T: the initial noise (D3PO shares it within a pair)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if (sampler == "ddim") != (schedule.kind == "ddpm"):
        raise ValueError(f"the {sampler!r} sampler does not apply to a {schedule.kind} schedule "
                         f"(ddim for DDPM-family models; sde or ode for flow models)")
    grid = schedule.grid(steps).to(device)
    x = torch.randn(shape, generator=generator, dtype=dtype).to(device) if x_T is None else x_T.clone()
    n = shape[0]
    out = Trajectory(x0=x)
    amount = 0.0 if sampler == "ode" else noise
    for k in range(len(grid) - 1):
        t = grid[k].expand(n).clone()
        t_prev = grid[k + 1].expand(n).clone()
        prediction = guided(model, x, schedule.model_time(t), cond, uncond, guidance)
        if sampler == "ode":
            mean, std = x + expand(t_prev - t, x) * prediction, torch.zeros(n, device=x.device)
        else:
            mean, std = step_mean_std(prediction, x, t, t_prev, schedule, amount, t_cap=grid[1] if len(grid) > 2 else None)
        z = torch.randn(x.shape, generator=generator, dtype=dtype).to(x.device)
        x_prev = mean + expand(std, x) * z
        stochastic = bool((std > 0).all())
        if keep == "steps":
            out.states.append(x)
            out.next_states.append(x_prev)
            out.times.append(t)
            out.next_times.append(t_prev)
            out.logps.append(gaussian_logprob(x_prev, mean, std) if stochastic else torch.zeros(n, device=x.device))
            out.stochastic.append(stochastic)
        elif keep == "states":
            out.states.append(x)
            out.times.append(t)
            out.predictions.append(prediction)
        x = x_prev
    out.x0 = x
    return out
