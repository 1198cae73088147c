"""The exact harness behind the diffusion methods' `preftune verify` rows (diffusion.md §12).

A diffusion loss cannot be checked against a closed-form optimum the way the tabular engine checks
DPO: its identities are about values and gradients at known points. The harness builds a small
differentiable problem in float64: a linear denoiser f_theta(x_t, t, c) = x_t W + c V + (t/T) u + b,
a batch of clean samples x0 (B, K, D), conditions, times and noises, and computes the records a
method sees with the library's own `denoise_error` on a real noise schedule. Gradients are taken
with respect to theta, so an identity checked here is the identity a network's parameters see.

Every measured number is computed from the method's loss (the `fn` under test) and from plain
errors, never from the method's own rewards or metrics. Checks run without diffusers installed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import Tensor

from preftune.diffusion.primitives import denoise_error
from preftune.diffusion.records import Denoise
from preftune.diffusion.schedules import Schedule
from preftune.methods.registry import CheckResult

DTYPE = torch.float64
LOG2 = math.log(2.0)
EXACT = 1e-9      # tolerance of identities that hold to rounding error in float64


@dataclass
class Problem:
    """B examples of K samples each, in D dims, with the noise draws fixed (diffusion.md §0)."""

    schedule: Schedule
    x0: Tensor          # (B, K, D)
    cond: Tensor        # (B, K, D): per-sample condition (CPO varies it, the rest repeat it)
    t: Tensor           # (B,) shared by the K samples of an example
    eps: Tensor         # (B, K, D)
    theta_ref: dict[str, Tensor] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x0.shape)

    def theta(self, shift: float = 0.0, seed: int = 1) -> dict[str, Tensor]:
        """Trainable parameters: the reference's (shift 0) or moved by a random shift, as leaves."""
        g = torch.Generator().manual_seed(seed)
        return {k: (v + shift * torch.randn(v.shape, generator=g, dtype=DTYPE)).requires_grad_(True)
                for k, v in self.theta_ref.items()}

    def model(self, theta: dict[str, Tensor]) -> Callable:
        steps = self.schedule.num_train_timesteps

        def f(x_t: Tensor, time: Tensor, cond: Tensor) -> Tensor:
            return x_t @ theta["W"] + cond @ theta["V"] + (time.to(DTYPE) / steps)[:, None] * theta["u"] + theta["b"]
        return f

    def denoise(self, theta: dict[str, Tensor], keep_prediction: bool = False) -> Denoise:
        """The record of a model: E per (example, sample), computed by the library's denoise_error."""
        b, k, d = self.shape
        t = self.t.repeat_interleave(k)
        error, prediction = denoise_error(self.model(theta), self.x0.reshape(b * k, d), self.cond.reshape(b * k, d),
                                          t, self.eps.reshape(b * k, d), self.schedule)
        return Denoise(error.reshape(b, k), prediction=prediction.reshape(b, k, d) if keep_prediction else None,
                       time=self.schedule.level(t).to(DTYPE).reshape(b, k))

    def reference(self, keep_prediction: bool = False) -> Denoise:
        with torch.no_grad():
            record = self.denoise(self.theta_ref, keep_prediction)
        return replace(record, error=record.error.detach(),
                       prediction=None if record.prediction is None else record.prediction.detach())

    def swapped(self) -> "Problem":
        """The same problem with the K samples of every example in reverse order."""
        flip = lambda v: v.flip(1)
        return replace(self, x0=flip(self.x0), cond=flip(self.cond), eps=flip(self.eps))


def problem(kind: str = "ddpm", batch: int = 6, samples: int = 2, dims: int = 4, seed: int = 0,
            share_noise: bool = True, same_condition: bool = True) -> Problem:
    """A fixed random problem on a T=100 linear-beta DDPM schedule (eps-prediction) or a rectified flow."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=DTYPE)
    schedule = Schedule.linear(100) if kind == "ddpm" else Schedule.flow(1000)
    schedule = replace(schedule, alphas_cumprod=None if schedule.alphas_cumprod is None
                       else schedule.alphas_cumprod.to(DTYPE))
    x0 = rand(batch, samples, dims)
    cond = rand(batch, 1, dims).expand(batch, samples, dims).clone() if same_condition else rand(batch, samples, dims)
    eps = rand(batch, 1, dims).expand(batch, samples, dims).clone() if share_noise else rand(batch, samples, dims)
    t = (torch.randint(1, 100, (batch,), generator=g) if kind == "ddpm"
         else 0.05 + 0.9 * torch.rand(batch, generator=g, dtype=DTYPE))
    theta = {"W": 0.3 * rand(dims, dims), "V": 0.3 * rand(dims, dims), "u": rand(dims), "b": 0.1 * rand(dims)}
    return Problem(schedule, x0, cond, t, eps, theta)


# --------------------------------------------------------------------------- measuring

def grad(scalar: Tensor, theta: dict[str, Tensor]) -> Tensor:
    """The gradient of a scalar with respect to every parameter, flattened into one vector (zeros where
    the scalar does not depend on a parameter at all)."""
    if not scalar.requires_grad:
        return torch.cat([torch.zeros_like(p).flatten() for p in theta.values()])
    parts = torch.autograd.grad(scalar, list(theta.values()), allow_unused=True, retain_graph=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(parts, theta.values())])


def relative_gap(measured: Tensor, expected: Tensor) -> float:
    """max |measured - expected| / max(|expected|, tiny): 0 when two gradient vectors agree."""
    scale = float(expected.abs().max()) or 1.0
    return float((measured - expected).abs().max()) / scale


def close(method: str, prop: str, expected: float, measured: float | Tensor, tolerance: float = EXACT) -> CheckResult:
    measured = measured.detach() if torch.is_tensor(measured) else measured
    return CheckResult(method, prop, float(expected), float(measured), tolerance)


def gradient_identity(method: str, prop: str, got: Tensor, want: Tensor, tolerance: float = EXACT) -> CheckResult:
    """Two gradient vectors agree: measured is their relative gap, expected 0."""
    return CheckResult(method, prop, 0.0, relative_gap(got, want), tolerance)


def zero_gradient(method: str, prop: str, gradient: Tensor, tolerance: float = 1e-12) -> CheckResult:
    return CheckResult(method, prop, 0.0, float(gradient.abs().max()), tolerance)


def mean_loss(fn, *args, **kwargs) -> Tensor:
    return fn(*args, **kwargs).loss.mean()


# --------------------------------------------------------------------------- shared identities

def dpo_identities(method: str, fn, params: dict, extras: dict | None = None, factor: float = 1.0,
                   flow: bool = True) -> list[CheckResult]:
    """The Diffusion-DPO identities (diffusion.md §12.1-2) for any loss that should equal `factor`
    times Diffusion-DPO with the same beta per example: value factor*log 2 and gradient
    factor*(beta/4) grad(E_w - E_l) at theta = ref; swapping the pair flips the gradient."""
    extras = extras or {}
    beta = params["beta"]
    results = []
    for kind in ("ddpm", "flow") if flow else ("ddpm",):
        tag = "" if kind == "ddpm" else " (flow matching)"
        p = problem(kind)
        theta = p.theta()
        policy, reference = p.denoise(theta), p.reference()
        loss = mean_loss(fn, policy, reference, **extras, **params)
        results.append(close(method, f"loss at theta = ref is {factor:g} * log 2{tag}", factor * LOG2, loss.item()))
        gradient = grad(loss, theta)
        gap = (policy.error[:, 0] - policy.error[:, 1]).mean()
        want = factor * beta / 4 * grad(gap, theta)
        results.append(gradient_identity(method, f"grad at theta = ref equals {factor:g} * beta/4 * grad(E_w - E_l){tag}",
                                         gradient, want))
        if kind == "ddpm":
            swapped = p.swapped()
            swapped_extras = {k: v.flip(1) if v.dim() > 1 else -v for k, v in extras.items()}
            theta_s = swapped.theta()
            loss_s = mean_loss(fn, swapped.denoise(theta_s), swapped.reference(), **swapped_extras, **params)
            moved = p.theta(shift=0.2)  # away from the reference, where the gradient is not linear in Delta
            moved_s = swapped.theta(shift=0.2)
            g_moved = grad(mean_loss(fn, p.denoise(moved), reference, **extras, **params), moved)
            results.append(gradient_identity(method, "swapping winner and loser flips the gradient at theta = ref",
                                             grad(loss_s, theta_s), -gradient))
            g_swapped_moved = grad(mean_loss(fn, swapped.denoise(moved_s), swapped.reference(), **swapped_extras,
                                             **params), moved_s)
            results.append(CheckResult(method, "away from ref, swapping the pair changes the gradient (not odd)",
                                       1.0, float(relative_gap(g_swapped_moved, -g_moved) > 1e-6), 0.0))
    return results
