"""AWM: Advantage Weighted Matching (Xue et al. 2025, arXiv 2509.25050) (diffusion.md §8)."""
from __future__ import annotations

import torch
from torch import Tensor

from preftune.diffusion.methods.common import FAMILY, diffusion_taxonomy, ppo_clip_loss
from preftune.diffusion.records import Denoise
from preftune.methods.registry import register, tabular_check
from preftune.records import MethodOutput

SHAPES = ("uniform", "ghuber")


def matching_loss(policy: Denoise, shape: str = "uniform", p: float = 0.25, delta: float = 1e-3) -> Tensor:
    """(B, J) the per-draw loss l_ij whose negative is AWM's log-likelihood surrogate.

    "uniform": l = m, the plain flow/score-matching error; "ghuber": l = t ((m + delta)^p - delta^p)/p,
    the repo's generalised-Huber weighting (p = 0.25; delta is not pinned, 1e-3 here [R]).
    """
    if shape == "uniform":
        return policy.error
    if shape != "ghuber":
        raise ValueError(f"loss_shape must be one of {SHAPES}, got {shape!r}")
    if policy.time is None:
        raise ValueError("awm with loss_shape ghuber needs the noise level of each error (Denoise.time)")
    return policy.time * ((policy.error + delta) ** p - delta ** p) / p


@register(
    name="awm", seed="awm", family=FAMILY, input_kind="sample-groups", needs_reference=True, status="stable",
    extras=("advantages",),
    paper="Xue et al. 2025, Advantage Weighted Matching: Aligning RL with Pretraining in Diffusion Models, "
          "arXiv 2509.25050 (code scxue/advantage_weighted_matching)",
    reconstructed="the ghuber delta is not pinned; the EMA-adapter regulariser (beta_ema) of the official code is "
                  "not included (one on-policy update per rollout batch here)",
    taxonomy=diffusion_taxonomy(["groups", "scalar-reward", "online"], ["online", "policy-gradient"],
                                ["fixed-reference", "forward-kl-proxy", "clipping"]),
)
def awm(policy: Denoise, reference: Denoise, *, advantages: Tensor, beta: float = 1e-3, clip: float = 1.0,
        loss_shape: str = "uniform", ghuber_p: float = 0.25, ghuber_delta: float = 1e-3) -> MethodOutput:
    """Advantage-weighted flow/score matching on the model's own final samples.

    For each sample x0_i (any sampler, even an ODE) and J fresh draws (t_j, eps_j): logp_ij = -l_ij,
    rho_ij = exp(logp_ij - sg(logp_ij)) (1 on-policy), L_pg = mean_j max(-A_i rho, -A_i clip(rho, 1 +- clip)),
    plus beta * mean ||v_theta - v_ref||^2 (the reference: base weights / adapter disabled). On-policy
    the gradient is exactly sum_j A_i grad l_ij + the KL term: the pretraining loss reweighted by the
    advantage, with no trajectory and no per-step likelihood. advantages: (B,) group-normalised,
    clipped to +-5 and divided by 5 (advantage_max = 1). beta: 1e-3 (GenEval), 3e-3 (OCR), 1e-4 (PickScore).
    """
    logp = -matching_loss(policy, loss_shape, ghuber_p, ghuber_delta)
    advantage = advantages.to(logp.dtype)[:, None].expand_as(logp)
    policy_gradient = ppo_clip_loss(logp, logp.detach(), advantage, clip).mean(-1)
    loss = policy_gradient
    metrics = {"policy_gradient": policy_gradient.detach(), "advantage": advantages.detach().float()}
    if beta:
        if policy.prediction is None or reference.prediction is None:
            raise ValueError("awm with beta > 0 needs the predictions of the policy and the reference")
        drift = (policy.prediction - reference.prediction).flatten(2).pow(2).mean(-1).mean(-1)
        loss = loss + beta * drift
        metrics["drift"] = drift.detach()
    return MethodOutput(loss, (advantage * logp).detach(), metrics)


@tabular_check("awm")
def awm_check(fn=awm):
    """diffusion.md §12.2: on-policy, the autograd gradient of the exp-ratio (PPO-clip) form equals the
    gradient of mean_ij A_i l_ij (uniform and ghuber shapes, flow and eps problems); the drift term is
    0 with zero gradient at theta = ref and equals mean ||v_theta - v_ref||^2 away from it."""
    from preftune.diffusion.methods import checks

    results = []
    g = torch.Generator().manual_seed(4)
    for kind, shape in (("flow", "uniform"), ("flow", "ghuber"), ("ddpm", "uniform")):
        p = checks.problem(kind, samples=3, share_noise=False)
        advantages = torch.randn(p.shape[0], generator=g, dtype=checks.DTYPE)
        theta = p.theta(shift=0.2)
        policy = p.denoise(theta, keep_prediction=True)
        loss = checks.mean_loss(fn, policy, p.reference(True), advantages=advantages, beta=0.0, loss_shape=shape)
        want = checks.grad((advantages[:, None] * matching_loss(policy, shape)).mean(), theta)
        results.append(checks.gradient_identity("awm", f"on-policy grad equals grad mean A_i l_ij ({kind}, {shape})",
                                                checks.grad(loss, theta), want))
    p = checks.problem("flow", samples=3, share_noise=False)
    zero = torch.zeros(p.shape[0], dtype=checks.DTYPE)
    theta = p.theta()
    drift = checks.mean_loss(fn, p.denoise(theta, True), p.reference(True), advantages=zero, beta=1.0)
    results.append(checks.close("awm", "the drift term is 0 at theta = ref", 0.0, drift.item()))
    results.append(checks.zero_gradient("awm", "the drift term has zero gradient at theta = ref", checks.grad(drift, theta)))
    moved = p.theta(shift=0.2)
    moved_policy, reference = p.denoise(moved, True), p.reference(True)
    drift = checks.mean_loss(fn, moved_policy, reference, advantages=zero, beta=1.0)
    want = (moved_policy.prediction - reference.prediction).pow(2).mean()
    results.append(checks.close("awm", "the drift term equals mean ||v_theta - v_ref||^2", want.item(), drift.item()))
    return results
