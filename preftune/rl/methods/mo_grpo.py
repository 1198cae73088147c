"""Multi-objective GRPO with a multi-label reward model (Li, Li, Kosuga, Bian 2025, HydroX AI, arXiv 2503.21819)."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from preftune.methods.registry import CheckResult, register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput
from preftune.rl.advantages import combine_aspects
from preftune.rl.methods.grpo import grpo_objective


@register(
    name="mo_grpo", seed="mo-grpo", family="rl", input_kind="rollout", needs_reference=True, needs_token_logps=True,
    extras=("old", "aspects", "group"), status="stable",
    paper="Li, Li, Kosuga, Bian 2025, Optimizing Safe and Aligned Language Generation: A Multi-Objective GRPO "
          "Approach, arXiv 2503.21819",
    taxonomy=taxonomy(["online", "group-sampling", "multi-aspect-reward"], ["online", "policy-gradient"],
                      ["fixed-reference", "reverse-kl", "ratio-clipping"], ["multi-objective"]),
    reconstructed="the paper pins neither the aspect weights nor G, clip range or KL weight (online.md §13 [R]): "
                  "uniform weights and DeepSeekMath's GRPO defaults are placeholders; aspect_normalisation='group' "
                  "is MO-GRPO's per-aspect standardisation (Ichihara et al. 2025), not this paper's",
)
def mo_grpo(policy: Logps, reference: Logps, *, old: Logps, aspects: Tensor, group: Tensor,
            weights: Sequence[float] | None = None, aspect_normalisation: str = "none", clip_eps: float = 0.2,
            kl_coef: float = 0.04, std_eps: float = 1e-4) -> MethodOutput:
    """GRPO on the weighted sum of K predicted aspect rewards, R = sum_k w_k r^_k(x, y), with per-aspect logging.

    online.md §13: a reward model with K regression outputs (trained by multi-output MSE on scored data,
    preftune/rl/rewards.py) scores every sampled response; the paper combines the K scores into one
    scalar by a weighted sum (aspect_normalisation "none") and runs GRPO (grpo.py) on it. Because summed
    rewards let an aspect with a large spread dominate the group advantage, several trainers standardise
    each aspect within its group before weighting (aspect_normalisation "group", MO-GRPO, Ichihara et al.
    2025, arXiv 2509.22047); the paper itself does not. aspects: (B, K) predicted aspect rewards; weights:
    K numbers (None: uniform 1/K); the other arguments as grpo. Metrics: `aspect_k` is aspect k's mean.
    With one aspect and weight 1 this is grpo on that aspect.
    """
    rewards = combine_aspects(aspects.to(policy.tokens.dtype if policy.tokens is not None else aspects.dtype),
                              weights, group, aspect_normalisation, std_eps)
    out = grpo_objective("mo_grpo", policy, reference, old, rewards, group, clip_eps=clip_eps, kl_coef=kl_coef,
                         std_eps=std_eps, scale_advantages=True)
    out.metrics.update({f"aspect_{k}": aspects[:, k].detach().float() for k in range(aspects.shape[1])})
    return out


@tabular_check("mo_grpo")
def mo_grpo_tabular_check(fn=mo_grpo):
    """online.md §13 Tests (i) and (iii). (i) Affine invariance: the loss and its gradient are unchanged
    when every aspect is mapped r -> 3r - 2 (plain weighted sum) and when each aspect k gets its own
    map r -> a_k r + b_k (aspect_normalisation "group"), std_eps = 0. (iii) A 4-arm bandit whose arms
    trade helpfulness against safety, aspects (1, 0), (0, 1), (.6, .6), (.2, .2): exact expected GRPO
    updates (every 3-tuple of draws enumerated, kl_coef 0) from the uniform policy settle on the arm
    maximising sum_k w_k r_k, so the weights move the fixed point: w = (1, 0) -> arm 0, (0, 1) -> arm 1,
    (.5, .5) -> arm 2; pi(that arm) >= 0.95 after 60 steps."""
    from preftune.rl.exact import affine_invariance_error, grpo_bandit_fixed_point

    def call(**params):
        return lambda p, r, o, s, g, **kw: fn(p, r, old=o, aspects=s, group=g, **params, **kw)

    results = [
        CheckResult("mo_grpo", "loss and gradient unchanged by r -> 3r - 2 on every aspect (weighted sum)", 0.0,
                    affine_invariance_error(call(weights=[0.3, 0.7], std_eps=0.0), aspects=2), 1e-10),
        CheckResult("mo_grpo", "loss and gradient unchanged by a different affine map per aspect (group-normalised)",
                    0.0, affine_invariance_error(call(weights=[0.3, 0.7], std_eps=0.0, aspect_normalisation="group"),
                                                 aspects=2, per_aspect=True), 1e-10)]
    arms = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.6], [0.2, 0.2]]
    for weights, best in (([1.0, 0.0], 0), ([0.0, 1.0], 1), ([0.5, 0.5], 2)):
        probs = grpo_bandit_fixed_point(call(weights=weights), arms, params={"kl_coef": 0.0})
        results.append(CheckResult("mo_grpo", f"w = {tuple(weights)}: expected GRPO updates settle on arm {best} "
                                              f"(argmax of w . r): pi(arm {best})", 0.95, float(probs[best]), 0.0,
                                   bound=">="))
    return results
