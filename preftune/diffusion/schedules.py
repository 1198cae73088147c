"""The forward process of a diffusion or flow model, taken from its diffusers scheduler (diffusion.md §0).

A `Schedule` says how a clean sample is noised, x_t = a_t x_0 + s_t eps, which time the network
is called with, and which grid a sampler walks. It is built from the model's own diffusers
scheduler (`Schedule.from_scheduler`): the noise levels (alphas_cumprod, sigmas), `add_noise`,
`get_velocity` and `set_timesteps` are the scheduler's. Without a scheduler object (the exact
checks of `preftune verify`, which must run without diffusers installed) the same quantities come
from the closed forms `Schedule.linear` / `Schedule.flow`, which tests compare with diffusers'.

Two kinds of time:
- "ddpm": t is an integer in 0..T-1, a_t = sqrt(alphas_cumprod[t]), s_t = sqrt(1 - alphas_cumprod[t]);
  the network is called with t itself. Parameterisations "epsilon" and "v_prediction".
- "flow": t is a float in (0, 1] with t = 1 pure noise, a_t = 1 - t, s_t = t (rectified flow);
  the network is called with t * T (SD3, TRELLIS and AWM use T = 1000). Parameterisation "flow".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

KINDS = ("ddpm", "flow")
PARAMETERIZATIONS = ("epsilon", "v_prediction", "flow")


def as_float(t: Tensor) -> Tensor:
    """A time tensor as floating point, keeping float64 (exact checks) and promoting ints to float32."""
    return t.to(torch.promote_types(t.dtype, torch.float32)) if t.is_floating_point() else t.float()


def expand(values: Tensor, like: Tensor) -> Tensor:
    """(B,) per-sample values shaped to broadcast against a (B, *dims) tensor."""
    return values.reshape(values.shape[0], *([1] * (like.dim() - 1))).to(like.dtype)


@dataclass(frozen=True)
class Schedule:
    kind: str
    num_train_timesteps: int
    alphas_cumprod: Tensor | None = None     # (T,), "ddpm" only
    final_alpha_cumprod: float = 1.0         # alpha_bar after the last sampling step ("ddpm" only)
    parameterization: str = "epsilon"        # what the network predicts
    scheduler: Any = None                    # the diffusers scheduler it came from, if any

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"schedule kind must be one of {KINDS}, got {self.kind!r}")
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {self.parameterization!r}")
        if (self.kind == "flow") != (self.parameterization == "flow"):
            raise ValueError(f"a {self.kind} schedule cannot train a {self.parameterization!r} model")
        if self.kind == "ddpm" and self.alphas_cumprod is None:
            raise ValueError("a ddpm schedule needs alphas_cumprod")

    # -- construction ------------------------------------------------------------------------

    @staticmethod
    def linear(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               parameterization: str = "epsilon") -> "Schedule":
        """DDPM's linear beta schedule (the same numbers as DDPMScheduler(beta_schedule="linear"))."""
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        return Schedule("ddpm", num_train_timesteps, alphas_cumprod, float(alphas_cumprod[0]), parameterization)

    @staticmethod
    def flow(num_train_timesteps: int = 1000) -> "Schedule":
        return Schedule("flow", num_train_timesteps, parameterization="flow")

    @staticmethod
    def from_scheduler(scheduler) -> "Schedule":
        """The schedule of a diffusers scheduler: FlowMatch* schedulers give "flow", the DDPM family
        (DDPM, DDIM, PNDM, Euler, DPM-Solver, ...) gives "ddpm" with its prediction_type."""
        config = scheduler.config
        steps = int(config.num_train_timesteps)
        if type(scheduler).__name__.startswith("FlowMatch"):
            return Schedule("flow", steps, parameterization="flow", scheduler=scheduler)
        alphas_cumprod = scheduler.alphas_cumprod.detach().float().cpu()
        final = 1.0 if getattr(config, "set_alpha_to_one", False) else float(alphas_cumprod[0])
        prediction = getattr(config, "prediction_type", "epsilon")
        if prediction not in ("epsilon", "v_prediction"):
            raise ValueError(f"{type(scheduler).__name__}: prediction_type {prediction!r} is not supported "
                             f"(epsilon or v_prediction)")
        return Schedule("ddpm", steps, alphas_cumprod, final, prediction, scheduler)

    # -- the forward process -----------------------------------------------------------------

    def alpha_bar(self, t: Tensor) -> Tensor:
        """alphas_cumprod[t] per sample; t < 0 (past the last sampling step) gives final_alpha_cumprod."""
        table = self.alphas_cumprod.to(t.device)
        values = table[t.long().clamp(min=0)]
        return torch.where(t < 0, torch.full_like(values, self.final_alpha_cumprod), values)

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(a_t, s_t), each (B,): x_t = a_t x_0 + s_t eps."""
        if self.kind == "flow":
            t = as_float(t)
            return 1.0 - t, t
        alpha_bar = self.alpha_bar(t)
        return alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()

    def level(self, t: Tensor) -> Tensor:
        """The noise level as a float in [0, 1] (flow: t itself; ddpm: t / T)."""
        return as_float(t) if self.kind == "flow" else t.float() / self.num_train_timesteps

    def model_time(self, t: Tensor) -> Tensor:
        """The timestep the network is called with: the integer t (ddpm) or t * T (flow)."""
        return as_float(t) * self.num_train_timesteps if self.kind == "flow" else t.long()

    def noisy(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """x_t = a_t x_0 + s_t eps (the scheduler's own add_noise for the DDPM family)."""
        if self.kind == "ddpm" and self.scheduler is not None and hasattr(self.scheduler, "add_noise"):
            return self.scheduler.add_noise(x0, eps, t.long())
        a, s = self.coefficients(t)
        return expand(a, x0) * x0 + expand(s, x0) * eps

    def target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """What the network regresses on: eps, the velocity a_t eps - s_t x_0, or the flow u = eps - x_0."""
        if self.parameterization == "epsilon":
            return eps
        if self.parameterization == "flow":
            return eps - x0
        if self.scheduler is not None and hasattr(self.scheduler, "get_velocity"):
            return self.scheduler.get_velocity(x0, eps, t.long())
        a, s = self.coefficients(t)
        return expand(a, x0) * eps - expand(s, x0) * x0

    def split(self, prediction: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x0_hat, eps_hat) implied by a prediction at (x_t, t), for any parameterisation."""
        a, s = (expand(v, x_t) for v in self.coefficients(t))
        if self.parameterization == "epsilon":
            eps = prediction
            return (x_t - s * eps) / a, eps
        if self.parameterization == "v_prediction":  # a^2 + s^2 = 1 on a variance-preserving schedule
            return a * x_t - s * prediction, a * prediction + s * x_t
        return x_t - s * prediction, x_t + a * prediction  # flow: x0 = x_t - t v, eps = x_t + (1 - t) v

    # -- time ----------------------------------------------------------------------------------

    def sample_time(self, n: int, generator: torch.Generator | None = None, device=None,
                    distribution: str = "uniform", low: float = 0.0, high: float = 1.0) -> Tensor:
        """Training times: ddpm integers uniform in [low*T, high*T); flow floats, uniform in (low, high)
        or "logit_normal" (t = sigmoid(1 + N(0, 1)), DSO's choice, diffusion.md §6)."""
        if self.kind == "ddpm":
            lo, hi = int(low * self.num_train_timesteps), max(int(high * self.num_train_timesteps), 1)
            return torch.randint(lo, hi, (n,), generator=generator).to(device)
        if distribution == "logit_normal":
            t = torch.sigmoid(1.0 + torch.randn(n, generator=generator))
        elif distribution == "uniform":
            t = low + (high - low) * torch.rand(n, generator=generator)
        else:
            raise ValueError(f"time distribution must be uniform or logit_normal, got {distribution!r}")
        return t.clamp(1e-4, 1.0).to(device)

    def grid(self, steps: int) -> Tensor:
        """The sampler's times, from noise to data, with the end point appended: steps + 1 values.

        ddpm: the scheduler's set_timesteps(steps) then -1 (x_0); flow: the scheduler's sigmas
        (with its shift) ending at 0, or linspace(1, 0) without a scheduler.
        """
        if self.scheduler is not None and hasattr(self.scheduler, "set_timesteps"):
            self.scheduler.set_timesteps(steps)
            if self.kind == "flow":
                return self.scheduler.sigmas.detach().float().cpu()
            return torch.cat([self.scheduler.timesteps.detach().long().cpu(), torch.tensor([-1])])
        if self.kind == "flow":
            return torch.linspace(1.0, 0.0, steps + 1)
        ratio = self.num_train_timesteps // steps  # DDIM's "leading" spacing
        return torch.cat([torch.arange(steps - 1, -1, -1) * ratio, torch.tensor([-1])]).long()
