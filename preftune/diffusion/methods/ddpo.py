"""DDPO (Black et al., ICLR 2024, arXiv 2305.13301): policy gradient on the denoising MDP (diffusion.md §8).

The contrast AWM is measured against: it needs a stochastic sampler, stored trajectories and the
per-step Gaussian likelihood of each transition.
"""
from __future__ import annotations

from torch import Tensor

from preftune.diffusion.methods.common import FAMILY, diffusion_taxonomy, ppo_clip_loss
from preftune.diffusion.records import Steps
from preftune.methods.registry import register, tabular_check
from preftune.records import MethodOutput


@register(
    name="ddpo", seed=None, family=FAMILY, input_kind="trajectories", needs_reference=False, status="stable",
    extras=("advantages", "old_logp"),
    paper="Black et al. 2024, Training Diffusion Models with Reinforcement Learning, arXiv 2305.13301",
    taxonomy=diffusion_taxonomy(["trajectories", "scalar-reward", "online"], ["online", "policy-gradient"],
                                ["clipping"]),
)
def ddpo(policy: Steps, *, advantages: Tensor, old_logp: Tensor, clip: float = 1e-4, estimator: str = "is") -> MethodOutput:
    """PPO-clip (DDPO_IS) or REINFORCE (DDPO_SF) on one stored transition of each trajectory.

    IS: r = exp(log pi_theta - log pi_old), L = max(-A r, -A clip(r, 1 - clip, 1 + clip));
    SF: L = -A log pi_theta. The state is (c, k, x_k), the action x_{k-1}; every step of a
    trajectory carries its trajectory's advantage. advantages: (B,), per-prompt normalised and
    clipped to +-5; old_logp: (B,) log pi_old of the transition, stored at sampling time.
    Defaults: clip 1e-4, 50 DDIM eta = 1 steps, LoRA lr 3e-4.
    """
    logp = policy.logp[:, 0]
    if estimator == "sf":
        loss = -advantages.to(logp.dtype) * logp
    elif estimator == "is":
        loss = ppo_clip_loss(logp, old_logp.to(logp.dtype), advantages.to(logp.dtype), clip)
    else:
        raise ValueError(f"estimator must be 'is' or 'sf', got {estimator!r}")
    ratio = (logp - old_logp).exp().detach()
    return MethodOutput(loss, logp.detach()[:, None],
                        {"ratio": ratio, "clipped": ((ratio - 1).abs() > clip).float()})


@tabular_check("ddpo")
def ddpo_check(fn=ddpo):
    """diffusion.md §8: at theta = theta_old the surrogate's gradient is -A grad log pi; ratios clipped
    on the advantage's side pass no gradient; step_logprob matches torch.distributions.Normal."""
    from preftune.diffusion.methods import checks_steps

    return (checks_steps.policy_gradient_identities("ddpo", fn, {"clip": 1e-4}, with_reference=False)
            + checks_steps.step_logprob_matches_normal("ddpo"))
