"""The two quantities every diffusion method composes (diffusion.md §0).

- `denoise_error(model, x0, cond, t, eps, schedule)`: E = mean_dims ||f(x_t, t, c) - target||^2
  for eps-, v- and flow-matching targets (mean over dims by default, as every official code does;
  the betas of the papers are calibrated for it). -(E_theta - E_ref) at the same (t, eps) is a
  one-sample estimate of log p_theta(x0|c) - log p_ref(x0|c), up to the weight T*w(t)/2.
- `step_logprob(...)`: the log-density of a stored sampler transition x_k -> x_{k-1} under a
  Gaussian step: DDIM with eta > 0 for eps/v models, the Flow-GRPO SDE step for flow models.

`model` is any callable `model(x_t, model_time, cond) -> prediction` (models.py adapts
UNet2DConditionModel, SD3Transformer2DModel and the toy networks to it). The noise levels come
from the model's diffusers scheduler through `Schedule` (schedules.py).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from preftune.diffusion.schedules import Schedule, as_float, expand

REDUCTIONS = ("mean", "sum")
Model = Callable[[Tensor, Tensor, Any], Tensor]


def reduce_dims(values: Tensor, reduction: str = "mean") -> Tensor:
    """(B, *dims) -> (B,) by a mean (default) or a sum over every non-batch dim."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    flat = values.flatten(1)
    return flat.mean(1) if reduction == "mean" else flat.sum(1)


def prediction_error(model: Model, x_t: Tensor, cond: Any, t: Tensor, target: Tensor, schedule: Schedule,
                     reduction: str = "mean") -> tuple[Tensor, Tensor]:
    """(error (B,), prediction) of the network at a given noisy input and target.

    The general form behind `denoise_error`: SmPO gives an inverted x_t and its implied noise,
    Diffusion-DRO a policy state with the lagging policy's own prediction as the target.
    """
    prediction = model(x_t, schedule.model_time(t), cond)
    dtype = torch.promote_types(prediction.dtype, torch.float32)  # bf16/fp16 outputs: errors in fp32
    return reduce_dims((prediction.to(dtype) - target.to(dtype)) ** 2, reduction), prediction


def denoise_error(model: Model, x0: Tensor, cond: Any, t: Tensor, eps: Tensor, schedule: Schedule,
                  reduction: str = "mean") -> tuple[Tensor, Tensor]:
    """(E (B,), prediction): the denoising error of clean samples x0 noised to x_t with (t, eps).

    The target is eps, the velocity a_t eps - s_t x0 or the flow u = eps - x0, by the schedule's
    parameterisation (diffusion.md §0).
    """
    x_t = schedule.noisy(x0, eps, t)
    return prediction_error(model, x_t, cond, t, schedule.target(x0, eps, t), schedule, reduction)


# --------------------------------------------------------------------------- stochastic steps

def ddim_step(prediction: Tensor, x_t: Tensor, t: Tensor, t_prev: Tensor, schedule: Schedule,
              eta: float) -> tuple[Tensor, Tensor]:
    """(mean (B, *dims), std (B,)) of DDIM's step t -> t_prev with stochasticity eta (DDIM Eq. 12).

    mu = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - s^2) eps_hat, s = eta * sigma_DDIM with
    sigma_DDIM^2 = (1 - abar_prev)/(1 - abar_t) * (1 - abar_t/abar_prev): diffusers' DDIMScheduler.step
    with the same eta and zero variance noise gives this mean (a test checks it), but per sample t.
    """
    x0_hat, eps_hat = schedule.split(prediction, x_t, t)
    abar_t, abar_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
    variance = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)
    std = eta * variance.clamp_min(0).sqrt()
    direction = (1 - abar_prev - std ** 2).clamp_min(0).sqrt()
    mean = expand(abar_prev.sqrt(), x_t) * x0_hat + expand(direction, x_t) * eps_hat
    return mean, std


def flow_sde_step(velocity: Tensor, x_t: Tensor, t: Tensor, t_prev: Tensor, noise_level: float,
                  t_cap: Tensor | float | None = None) -> tuple[Tensor, Tensor]:
    """(mean, std) of the Flow-GRPO SDE step t -> t_prev < t (diffusion.md §0, flow_grpo/AWM code).

    sigma_t = a sqrt(t / (1 - t)), dt = t_prev - t < 0,
    mu = x_t (1 + sigma_t^2 dt / (2t)) + v (1 + sigma_t^2 (1 - t) / (2t)) dt,  std = sigma_t sqrt(-dt).
    At t = 1 the ratio diverges; like the official code, 1 - t uses t_cap there (the grid's second
    time; default 1 - 1e-3).
    """
    t, t_prev = as_float(t), as_float(t_prev)
    cap = torch.as_tensor(1 - 1e-3 if t_cap is None else t_cap, dtype=t.dtype, device=t.device)
    sigma = noise_level * (t / (1 - torch.where(t >= 1, cap, t))).sqrt()
    dt = t_prev - t
    mean = (x_t * expand(1 + sigma ** 2 * dt / (2 * t), x_t)
            + velocity * expand((1 + sigma ** 2 * (1 - t) / (2 * t)) * dt, x_t))
    return mean, sigma * (-dt).sqrt()


def gaussian_logprob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(B,) mean over dims of log N(x; mean, std^2) with a per-sample std."""
    std = expand(std, x).to(mean.dtype)
    values = -((x - mean) ** 2) / (2 * std ** 2) - std.log() - 0.5 * math.log(2 * math.pi)
    return reduce_dims(values, "mean")


def step_mean_std(prediction: Tensor, x_t: Tensor, t: Tensor, t_prev: Tensor, schedule: Schedule,
                  noise: float, t_cap: Tensor | float | None = None) -> tuple[Tensor, Tensor]:
    """The Gaussian step of the schedule's sampler: DDIM-eta (ddpm, noise = eta) or the flow SDE
    (flow, noise = the noise level a)."""
    if schedule.kind == "flow":
        return flow_sde_step(prediction, x_t, t, t_prev, noise, t_cap)
    return ddim_step(prediction, x_t, t, t_prev, schedule, noise)


def step_logprob(prediction: Tensor, x_t: Tensor, x_prev: Tensor, t: Tensor, t_prev: Tensor,
                 schedule: Schedule, noise: float, t_cap: Tensor | float | None = None
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """(log pi(x_prev | x_t) (B,), mean, std): log-density of a stored transition, mean over dims.

    This is the per-step policy of D3PO, DDPO and Flow-GRPO (diffusion.md §0). A deterministic
    step (std 0: eta = 0, an ODE sampler) has no density; that is an error, not a nan.
    """
    mean, std = step_mean_std(prediction, x_t, t, t_prev, schedule, noise, t_cap)
    if bool((std <= 0).any()):
        raise ValueError("step_logprob: a deterministic step (std 0) has no density; sample with eta > 0 "
                         "(DDIM) or a flow noise level > 0 (SDE)")
    return gaussian_logprob(x_prev, mean, std), mean, std
