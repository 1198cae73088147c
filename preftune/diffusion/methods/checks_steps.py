"""The exact harness for the step-level methods (D3PO, DDPO, Flow-GRPO; diffusion.md §12.2, §12.4).

Stored transitions x_k -> x_{k-1} are drawn once from a reference linear denoiser's own stochastic
step (DDIM eta = 1, or the flow SDE with a = 0.7); the records are the library's `step_logprob` of
those transitions under theta and under the reference. As in checks.py, everything is float64 and
differentiated with respect to theta.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from preftune.diffusion.methods.checks import (DTYPE, EXACT, LOG2, Problem, close, grad, gradient_identity,
                                               mean_loss, problem, zero_gradient)
from preftune.diffusion.primitives import step_logprob
from preftune.diffusion.records import Steps
from preftune.methods.registry import CheckResult


@dataclass
class Transitions:
    problem: Problem
    x_t: Tensor       # (B, K, D)
    x_prev: Tensor    # (B, K, D)
    t: Tensor         # (B,)
    t_prev: Tensor    # (B,)
    noise: float

    def steps(self, theta: dict[str, Tensor]) -> Steps:
        b, k, d = self.x_t.shape
        p = self.problem
        flat = lambda v: v.reshape(b * k, d)
        t, t_prev = self.t.repeat_interleave(k), self.t_prev.repeat_interleave(k)
        prediction = p.model(theta)(flat(self.x_t), p.schedule.model_time(t), flat(p.cond))
        logp, mean, std = step_logprob(prediction, flat(self.x_t), flat(self.x_prev), t, t_prev, p.schedule, self.noise)
        return Steps(logp.reshape(b, k), mean.reshape(b, k, d), std.reshape(b, k))

    def reference(self) -> Steps:
        with torch.no_grad():
            record = self.steps(self.problem.theta_ref)
        return Steps(record.logp.detach(), record.mean.detach(), record.std.detach())


def transitions(kind: str = "ddpm", samples: int = 2, seed: int = 0) -> Transitions:
    """Transitions sampled from the reference's own step, so that log-ratios are 1 at theta = ref."""
    p = problem(kind, samples=samples, seed=seed, share_noise=False)
    g = torch.Generator().manual_seed(seed + 100)
    b, k, d = p.shape
    if kind == "ddpm":
        t = p.t.clamp(min=2)
        t_prev, noise = t - 1, 1.0
    else:
        t = p.t
        t_prev, noise = t - 0.05, 0.7
    x_t = p.schedule.noisy(p.x0.reshape(b * k, d), p.eps.reshape(b * k, d), t.repeat_interleave(k)).reshape(b, k, d)
    draft = Transitions(p, x_t, x_t, t, t_prev, noise)
    mean, std = draft.reference().mean, draft.reference().std
    x_prev = mean + std[..., None] * torch.randn(mean.shape, generator=g, dtype=DTYPE)
    return Transitions(p, x_t, x_prev, t, t_prev, noise)


def normal_reference_logprob(tr: Transitions) -> Tensor:
    """log N(x_prev; mu, s^2) averaged over dims, with mu and s written out independently of primitives.py."""
    p = tr.problem
    b, k, d = tr.x_t.shape
    eps_hat = p.model(p.theta_ref)(tr.x_t.reshape(b * k, d), p.schedule.model_time(tr.t.repeat_interleave(k)),
                                   p.cond.reshape(b * k, d)).reshape(b, k, d)
    if p.schedule.kind == "ddpm":
        at, ap = (p.schedule.alpha_bar(v)[:, None, None] for v in (tr.t, tr.t_prev))
        s2 = tr.noise ** 2 * (1 - ap) / (1 - at) * (1 - at / ap)
        x0_hat = (tr.x_t - (1 - at).sqrt() * eps_hat) / at.sqrt()
        mu = ap.sqrt() * x0_hat + (1 - ap - s2).sqrt() * eps_hat
        s = s2.sqrt()
    else:
        t, dt = tr.t[:, None, None], (tr.t_prev - tr.t)[:, None, None]
        sigma = tr.noise * (t / (1 - t)).sqrt()
        mu = tr.x_t + (eps_hat + sigma ** 2 / (2 * t) * (tr.x_t + (1 - t) * eps_hat)) * dt
        s = sigma * (-dt).sqrt()
    dist = torch.distributions.Normal(mu, s.expand_as(mu))
    return dist.log_prob(tr.x_prev).mean(-1)


def step_logprob_matches_normal(method: str) -> list[CheckResult]:
    out = []
    for kind, name in (("ddpm", "DDIM eta=1"), ("flow", "flow SDE a=0.7")):
        tr = transitions(kind)
        got = tr.reference().logp
        out.append(close(method, f"step_logprob equals torch.distributions.Normal ({name})", 0.0,
                         float((got - normal_reference_logprob(tr)).abs().max()), 1e-10))
    return out


def d3po_identities(method: str, fn) -> list[CheckResult]:
    from preftune.methods.dpo import dpo
    from preftune.records import Logps

    beta, clip = 0.1, 0.1
    tr = transitions()
    b = tr.x_t.shape[0]
    preference = torch.tensor([1.0, -1.0] * (b // 2), dtype=DTYPE)
    theta = tr.problem.theta()
    policy, reference = tr.steps(theta), tr.reference()
    loss = mean_loss(fn, policy, reference, preference=preference, beta=beta, clip=clip)
    results = [close(method, "loss at ratio 1 is log 2", LOG2, loss.item())]
    signed = (preference * (policy.logp[:, 0] - policy.logp[:, 1])).mean()
    results.append(gradient_identity(method, "grad at ratio 1 equals beta/2 * grad(log pi_w - log pi_l)",
                                     grad(loss, theta), -beta / 2 * grad(signed, theta)))
    tie = mean_loss(fn, tr.steps(theta), reference, preference=torch.zeros(b, dtype=DTYPE), beta=beta, clip=clip)
    results.append(zero_gradient(method, "a tie (0, 0) has zero gradient", grad(tie, theta)))
    # Far from the reference every ratio leaves [1 - clip, 1 + clip]: no gradient at all.
    far = tr.problem.theta(shift=3.0)
    far_policy = tr.steps(far)
    outside = float(((far_policy.logp - reference.logp).exp() - 1).abs().gt(clip).float().mean())
    results.append(CheckResult(method, "the far point has every ratio outside the clip range (setup)", 1.0, outside, 0.0))
    far_loss = mean_loss(fn, far_policy, reference, preference=preference, beta=beta, clip=clip)
    results.append(zero_gradient(method, "ratios outside [1 - clip, 1 + clip] have zero gradient", grad(far_loss, far)))
    near = tr.problem.theta(shift=0.05)
    near_policy = tr.steps(near)
    unclipped = fn(near_policy, reference, preference=torch.ones(b, dtype=DTYPE), beta=beta, clip=float("inf")).loss
    as_dpo = dpo(Logps.pair(near_policy.logp[:, 0], near_policy.logp[:, 1]),
                 Logps.pair(reference.logp[:, 0], reference.logp[:, 1]), beta=beta).loss
    results.append(close(method, "with clip = inf it is DPO on step log-probs", 0.0,
                         (unclipped - as_dpo).abs().max(), EXACT))
    return results + step_logprob_matches_normal(method)


def policy_gradient_identities(method: str, fn, params: dict, with_reference: bool) -> list[CheckResult]:
    """DDPO / Flow-GRPO (diffusion.md §8): at theta = theta_old the PPO-clip surrogate has the
    score-function gradient -A grad log pi; a ratio outside the clip range on the side the
    advantage pushes passes no gradient; with a reference the KL term is 0 and its gradient 0 there."""
    tr = transitions("flow" if with_reference else "ddpm", samples=1)
    b = tr.x_t.shape[0]
    g = torch.Generator().manual_seed(7)
    advantages = torch.randn(b, generator=g, dtype=DTYPE)
    theta = tr.problem.theta()
    policy, old = tr.steps(theta), tr.reference()
    args = (policy, old) if with_reference else (policy,)
    loss = mean_loss(fn, *args, advantages=advantages, old_logp=old.logp[:, 0], **params)
    want = grad(-(advantages * policy.logp[:, 0]).mean(), theta)
    results = [gradient_identity(method, "on-policy gradient equals -A grad log pi (score function)",
                                 grad(loss, theta), want)]
    far = tr.problem.theta(shift=3.0)
    far_policy = tr.steps(far)
    ratio = (far_policy.logp[:, 0] - old.logp[:, 0]).exp()
    clip = params["clip"]
    # Keep the examples whose ratio left the trust region in the direction the advantage favours.
    pushed = ((advantages > 0) & (ratio > 1 + clip)) | ((advantages < 0) & (ratio < 1 - clip))
    results.append(CheckResult(method, "some far ratios leave the trust region on the advantage's side (setup)",
                               1.0, float(pushed.any()), 0.0))
    if with_reference:
        params = {**params, "beta": 0.0}
    far_loss = fn(*((far_policy, old) if with_reference else (far_policy,)), advantages=advantages,
                  old_logp=old.logp[:, 0], **params).loss[pushed].sum()
    results.append(zero_gradient(method, "clipped ratios have zero gradient", grad(far_loss, far)))
    if with_reference:
        kl_only = {**params, "beta": 1.0}
        kl = mean_loss(fn, tr.steps(theta), old, advantages=torch.zeros(b, dtype=DTYPE), old_logp=old.logp[:, 0],
                       **kl_only)
        results.append(close(method, "the KL term is 0 at theta = ref", 0.0, kl.item(), EXACT))
        results.append(zero_gradient(method, "the KL term has zero gradient at theta = ref", grad(kl, theta)))
        moved = tr.problem.theta(shift=0.1)
        moved_policy = tr.steps(moved)
        kl_moved = mean_loss(fn, moved_policy, old, advantages=torch.zeros(b, dtype=DTYPE), old_logp=old.logp[:, 0],
                             **kl_only)
        want_kl = ((moved_policy.mean - old.mean) ** 2 / (2 * old.std[..., None] ** 2)).mean()
        results.append(close(method, "KL term equals ||mu_theta - mu_ref||^2 / (2 s^2) averaged", want_kl.item(),
                             kl_moved.item(), EXACT * max(1.0, abs(want_kl.item()))))
    return results
