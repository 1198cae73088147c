"""From a batch of one input kind to the records a method sees: the model side of every diffusion method.

For each kind (diffusion.md §11) this runs the trainable network and, under no_grad, the reference on
the same inputs: the same (t, eps) for both always, and within an example the same t for every sample
and the same eps unless the method draws them independently (DSO, DDO). The result is
(policy record, reference record or None, data extras) for `Objective(policy, reference, extras)`.

- image-pairs, image-lists, unpaired, segment-pairs: clean samples x0 (B, K, ...) noised forward, or
  inverted with ReNoise (SmPO); segment-pairs add per-segment errors.
- condition-pairs: one x0 per example with two conditions (CPO).
- expert-online: an expert x0 noised at the time of a stored policy state whose target is the lagging
  sampler's own prediction there (Diffusion-DRO).
- trajectory-pairs, trajectories: stored transitions, scored by `step_logprob` (D3PO, DDPO, Flow-GRPO).
- sample-groups: final samples with J fresh (t, eps) draws each (AWM).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from preftune.diffusion.inversion import renoise_invert
from preftune.diffusion.methods.dense_dpo import segment_errors
from preftune.diffusion.primitives import prediction_error, reduce_dims, step_logprob
from preftune.diffusion.records import Denoise, Steps
from preftune.diffusion.schedules import Schedule

STEP_KINDS = ("trajectory-pairs", "trajectories")
# Methods whose samples within an example take independent noise (diffusion.md §6, §7).
INDEPENDENT_NOISE = ("dso_dro", "ddo")
# Methods trained on inverted rather than forward-noised inputs, with their default grid (§4).
INVERSION = {"smpo": 5}


@dataclass
class Batch:
    """One micro-batch of one kind. Condition dicts hold network keyword arguments for B examples."""

    kind: str
    cond: dict | None = None
    x0: Tensor | None = None                  # (B, K, *shape)
    extras: dict[str, Tensor] = field(default_factory=dict)
    cond_rejected: dict | None = None         # condition-pairs: the worse condition
    steps: dict[str, Tensor] | None = None    # step kinds: x, x_prev (B, K, *shape); t, t_prev (B, K)
    states: dict[str, Tensor] | None = None   # expert-online: x_t (B, *shape), t (B,), target (B, *shape)

    @property
    def size(self) -> int:
        if self.x0 is not None:
            return self.x0.shape[0]
        return (self.steps or self.states)["x" if self.steps else "x_t"].shape[0]


@dataclass
class NoisePlan:
    """How (t, eps) are drawn for the errors of one objective."""

    schedule: Schedule
    share_noise: bool = True
    time: str = "uniform"
    inversion_steps: int = 0
    reduction: str = "mean"
    draws: int = 6                   # sample-groups: J
    noise: float = 1.0               # step kinds: DDIM eta / flow noise level of the stored transitions
    keep_prediction: bool = False
    frame_dim: int = 1               # segment-pairs: the frame axis of a batch of samples


def generator(*parts) -> torch.Generator:
    """A generator seeded by a stable hash of `parts` (seed, step, micro-batch, process, purpose):
    every random draw of a run is a pure function of where it happens, so a resumed run redraws them."""
    import hashlib

    digest = hashlib.sha256(repr(parts).encode()).hexdigest()
    return torch.Generator().manual_seed(int(digest[:15], 16))


def repeat(cond: dict | None, k: int) -> dict | None:
    """Each example's condition repeated for its K samples (sample-major within the example)."""
    if cond is None:
        return None
    return {key: value.repeat_interleave(k, dim=0) for key, value in cond.items()}


def frame_segments(frames: int, segments: int) -> Tensor:
    """Latent frame -> segment index when S segments split F frames evenly (ceil(F/S) frames each)."""
    per = -(-frames // segments)
    return torch.arange(frames) // per


def _errors(call: Callable, x_t: Tensor, cond, t: Tensor, target: Tensor, plan: NoisePlan, shape: tuple,
            segments: int = 0) -> Denoise:
    """Errors of one model on flattened (B*K) inputs, reshaped to (B, K)."""
    error, prediction = prediction_error(call, x_t, cond, t, target, plan.schedule, plan.reduction)
    b, k = shape
    segment_error = None
    if segments:
        squared = (prediction.float() - target.float()) ** 2
        frames = squared.shape[plan.frame_dim]
        segment_error = segment_errors(squared, frame_segments(frames, segments), plan.frame_dim).reshape(b, k, segments)
    return Denoise(error.reshape(b, k), segment_error,
                   prediction.reshape(b, k, *prediction.shape[1:]) if plan.keep_prediction else None,
                   plan.schedule.level(t).reshape(b, k))


def both(record: Callable, policy: Callable, reference: Callable | None):
    """(record(policy), record(reference) under no_grad, or None without a reference)."""
    policy_record = record(policy)
    if reference is None:
        return policy_record, None
    with torch.no_grad():
        return policy_record, record(reference)


def denoise_records(batch: Batch, policy: Callable, reference: Callable | None, plan: NoisePlan,
                    generator: torch.Generator) -> tuple[Denoise, Denoise | None]:
    """Records of the error-based kinds (everything but the step kinds)."""
    schedule = plan.schedule
    if batch.kind == "expert-online":
        return _expert_online(batch, policy, reference, plan, generator)
    if batch.kind == "condition-pairs":
        x0 = batch.x0[:, 0]
        b = x0.shape[0]
        t = schedule.sample_time(b, generator, x0.device, plan.time)
        eps = torch.randn(x0.shape, generator=generator).to(x0)
        x_t, target = schedule.noisy(x0, eps, t), schedule.target(x0, eps, t)
        conditions = {k: torch.stack([batch.cond[k], batch.cond_rejected[k]], 1).flatten(0, 1) for k in batch.cond}
        x_t2, target2, t2 = (v.repeat_interleave(2, dim=0) for v in (x_t, target, t))
        return both(lambda call: _errors(call, x_t2, conditions, t2, target2, plan, (b, 2)), policy, reference)
    x0 = batch.x0
    b, k = x0.shape[:2]
    draws = plan.draws if batch.kind == "sample-groups" else 1
    if draws > 1:                                   # AWM: J draws of (t, eps) on each sample
        x0 = x0[:, :1].expand(b, draws, *x0.shape[2:])
        k = draws
    flat = x0.flatten(0, 1)
    if batch.kind == "sample-groups" or not plan.share_noise:
        t = schedule.sample_time(b * k, generator, x0.device, plan.time)
        eps = torch.randn(flat.shape, generator=generator).to(flat)
    else:
        t = schedule.sample_time(b, generator, x0.device, plan.time).repeat_interleave(k)
        eps = torch.randn((b, *x0.shape[2:]), generator=generator).to(flat).repeat_interleave(k, dim=0)
    cond = repeat(batch.cond, k)
    if plan.inversion_steps:
        x_t, target = renoise_invert(policy, flat, cond, t, schedule, plan.inversion_steps)
    else:
        x_t, target = schedule.noisy(flat, eps, t), schedule.target(flat, eps, t)
    segments = batch.extras["segment_labels"].shape[1] if batch.kind == "segment-pairs" else 0
    return both(lambda call: _errors(call, x_t, cond, t, target, plan, (b, k), segments), policy, reference)


def _expert_online(batch, policy, reference, plan, generator):
    """Sample 0: an expert x0 noised with fresh eps at the policy state's time; sample 1: the stored state
    with the lagging sampler's prediction as its target (diffusion.md §3)."""
    states, schedule = batch.states, plan.schedule
    expert = batch.x0[:, 0]
    t = states["t"]
    eps = torch.randn(expert.shape, generator=generator).to(expert)
    x_t = torch.cat([schedule.noisy(expert, eps, t), states["x_t"]])
    target = torch.cat([schedule.target(expert, eps, t), states["target"]])
    tt = torch.cat([t, t])
    cond = None if batch.cond is None else {k: torch.cat([v, v]) for k, v in batch.cond.items()}
    b = expert.shape[0]

    def record(call):
        error, prediction = prediction_error(call, x_t, cond, tt, target, schedule, plan.reduction)
        return Denoise(error.reshape(2, b).T, time=schedule.level(tt).reshape(2, b).T)

    return both(record, policy, reference)


def step_records(batch: Batch, policy: Callable, reference: Callable | None, plan: NoisePlan) -> tuple[Steps, Steps | None]:
    """Log-probabilities of the stored transitions under the policy and the reference."""
    steps = batch.steps
    b, k = steps["t"].shape
    flat = {name: value.flatten(0, 1) for name, value in steps.items()}
    cond = repeat(batch.cond, k)

    def record(call):
        prediction = call(flat["x"], plan.schedule.model_time(flat["t"]), cond)
        logp, mean, std = step_logprob(prediction, flat["x"], flat["x_prev"], flat["t"], flat["t_prev"],
                                       plan.schedule, plan.noise, steps.get("t_cap"))
        return Steps(logp.reshape(b, k), mean.reshape(b, k, *mean.shape[1:]), std.reshape(b, k))

    return both(record, policy, reference)


def build_records(batch: Batch, policy: Callable, reference: Callable | None, plan: NoisePlan,
                  generator: torch.Generator):
    if batch.kind in STEP_KINDS:
        return step_records(batch, policy, reference, plan)
    return denoise_records(batch, policy, reference, plan, generator)


def kl_proxy(policy: Callable, reference: Callable, x0: Tensor, cond, schedule: Schedule,
             generator: torch.Generator) -> float:
    """E_data ||f_theta(x_t) - f_ref(x_t)||^2 (mean over dims) at random (t, eps): the §12 KL proxy."""
    with torch.no_grad():
        t = schedule.sample_time(x0.shape[0], generator, x0.device)
        eps = torch.randn(x0.shape, generator=generator).to(x0)
        x_t = schedule.noisy(x0, eps, t)
        time = schedule.model_time(t)
        return float(reduce_dims((policy(x_t, time, cond) - reference(x_t, time, cond)).float() ** 2).mean())
