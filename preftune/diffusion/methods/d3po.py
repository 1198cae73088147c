"""D3PO (Yang et al., CVPR 2024, arXiv 2311.13231): DPO on each denoising step of two trajectories (diffusion.md §2)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from preftune.diffusion.methods.common import FAMILY, diffusion_taxonomy, require_samples
from preftune.diffusion.records import Steps
from preftune.methods.common import neg_log_sigmoid
from preftune.methods.registry import register, tabular_check
from preftune.records import MethodOutput


def pareto_preference(rewards: Tensor) -> Tensor:
    """(B,) +1 if sample 0 Pareto-dominates sample 1, -1 if 1 dominates 0, 0 otherwise (a tie).

    rewards: (B, 2) scalar or (B, 2, M) reward vectors; dominating means >= in every dimension and
    > in at least one (D3PO's labelling of a pair by several rewards; a scalar reward is M = 1).
    """
    if rewards.dim() == 2:
        rewards = rewards[..., None]
    first, second = rewards[:, 0], rewards[:, 1]
    zero_wins = (first >= second).all(-1) & (first > second).any(-1)
    one_wins = (second >= first).all(-1) & (second > first).any(-1)
    return zero_wins.float() - one_wins.float()


@register(
    name="d3po", seed="d3po", family=FAMILY, input_kind="trajectory-pairs", needs_reference=True,
    status="stable", extras=("preference",),
    paper="Yang et al. 2024, Using Human Feedback to Fine-tune Diffusion Models without Any Reward Model, "
          "arXiv 2311.13231",
    taxonomy=diffusion_taxonomy(["pairwise", "step-level", "online"], ["online"], ["fixed-reference", "clipping"]),
)
def d3po(policy: Steps, reference: Steps, *, preference: Tensor, beta: float = 0.1, clip: float = 0.1) -> MethodOutput:
    """DPO on one stored step of two trajectories that share their prompt and initial noise.

    Official-code form: r_i = clamp(pi_theta/pi_ref (x^i_{k-1} | x^i_k), 1 - clip, 1 + clip) and
    L_k = -log sigmoid(beta (s_0 log r_0 + s_1 log r_1)), with (s_0, s_1) = (+1, -1) when sample 0 is
    preferred, (-1, +1) when sample 1 is, (0, 0) for a tie (constant log 2, no gradient). The clamp is
    a hard trust region: a ratio outside [1 - clip, 1 + clip] passes no gradient. With clip = inf it
    is DPO on the step log-probs. preference: (B,) in {+1, -1, 0} (`pareto_preference` of rewards, or
    a human label). Defaults (config/base.py): beta 0.1, clip 0.1, DDIM eta 1, 20 steps.
    """
    require_samples(policy, 2, "d3po")
    raw = policy.logp - reference.logp
    # log clamp(r, 1 - clip, 1 + clip) = clamp(log r, log(1 - clip), log(1 + clip)): the same values, and no
    # 0 * inf gradient when a step with a tiny std makes exp(log r) overflow.
    log_ratio = raw if clip == float("inf") else raw.clamp(math.log(1 - clip), math.log(1 + clip))
    signs = torch.stack([preference, -preference], dim=-1).to(log_ratio.dtype)
    inside = beta * (signs * log_ratio).sum(-1)
    rewards = beta * log_ratio
    return MethodOutput(neg_log_sigmoid(inside), rewards,
                        {"margin": inside.detach(), "accuracy": (inside > 0).float(),
                         "clipped": ((raw.detach().exp() - 1).abs() > clip).float().mean(-1)})


@tabular_check("d3po")
def d3po_check(fn=d3po):
    """diffusion.md §12.1-2, §12.4: log 2 when the ratios are 1; gradient (beta/2)(grad log pi_w - grad
    log pi_l) there; a ratio outside the clip range and a tie pass no gradient; with clip = inf the loss
    is DPO on step log-probs; step_logprob matches torch.distributions.Normal (DDIM-eta and flow SDE)."""
    from preftune.diffusion.methods import checks_steps

    return checks_steps.d3po_identities("d3po", fn)
