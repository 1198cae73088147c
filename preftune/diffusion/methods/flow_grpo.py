"""Flow-GRPO (Liu et al. 2025, arXiv 2505.05470): group-relative PPO on flow-SDE steps (diffusion.md §8)."""
from __future__ import annotations

from torch import Tensor

from preftune.diffusion.methods.common import FAMILY, diffusion_taxonomy, ppo_clip_loss
from preftune.diffusion.records import Steps
from preftune.methods.registry import register, tabular_check
from preftune.records import MethodOutput


@register(
    name="flow_grpo", seed=None, family=FAMILY, input_kind="trajectories", needs_reference=True, status="stable",
    extras=("advantages", "old_logp"),
    paper="Liu et al. 2025, Flow-GRPO: Training Flow Matching Models via Online RL, arXiv 2505.05470",
    taxonomy=diffusion_taxonomy(["trajectories", "groups", "scalar-reward", "online"], ["online", "policy-gradient"],
                                ["fixed-reference", "reverse-kl", "clipping"]),
)
def flow_grpo(policy: Steps, reference: Steps, *, advantages: Tensor, old_logp: Tensor, clip: float = 1e-4,
              beta: float = 0.04) -> MethodOutput:
    """PPO-clip on stored SDE transitions with group advantages, plus a per-step KL to the reference.

    L = max(-A r, -A clip(r, 1 +- clip)) + beta ||mu_theta - mu_ref||^2 / (2 s_k^2) (averaged over dims),
    r = exp(log pi_theta - log pi_old), on the flow SDE step (noise level a = 0.7). advantages: (B,)
    (r - group mean)/std with the std over all samples (global_std). beta: 0.04 (GenEval, OCR) or
    0.01 (PickScore); clip: not pinned (the variants use 1e-5 to 1e-3, §13.9).
    """
    logp = policy.logp[:, 0]
    loss = ppo_clip_loss(logp, old_logp.to(logp.dtype), advantages.to(logp.dtype), clip)
    metrics = {"ratio": (logp - old_logp).exp().detach()}
    if beta:
        std = reference.std[:, 0]
        kl = ((policy.mean[:, 0] - reference.mean[:, 0]) ** 2).flatten(1).mean(-1) / (2 * std ** 2)
        loss = loss + beta * kl
        metrics["kl"] = kl.detach()
    return MethodOutput(loss, logp.detach()[:, None], metrics)


@tabular_check("flow_grpo")
def flow_grpo_check(fn=flow_grpo):
    """diffusion.md §8: the on-policy gradient is -A grad log pi; clipped ratios pass no gradient; the
    KL term is 0 with zero gradient at theta = ref and equals ||mu_theta - mu_ref||^2 / (2 s^2)."""
    from preftune.diffusion.methods import checks_steps

    return checks_steps.policy_gradient_identities("flow_grpo", fn, {"clip": 1e-4, "beta": 0.04}, with_reference=True)
