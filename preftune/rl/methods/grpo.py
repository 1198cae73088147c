"""GRPO: Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300, §4.1)."""
from __future__ import annotations

from torch import Tensor

from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput
from preftune.rl.advantages import group_normalised
from preftune.rl.methods.common import clip_fraction, clipped_surrogate, k3, require_tokens, token_mean


def grpo_objective(name: str, policy: Logps, reference: Logps, old: Logps, rewards: Tensor, group: Tensor, *,
                   clip_eps: float, kl_coef: float, std_eps: float, scale_advantages: bool) -> MethodOutput:
    """The GRPO loss of responses with scalar rewards (B,) in groups (B,); shared with mo_grpo."""
    require_tokens(name, policy=policy, reference=reference, old=old)
    advantages = group_normalised(rewards.to(policy.tokens.dtype), group, std_eps, scale_advantages)
    per_token = clipped_surrogate(policy.tokens, old.tokens, advantages.reshape(-1, 1, 1), clip_eps)
    kl = k3(policy.tokens, reference.tokens.detach())
    mask = policy.mask
    loss = token_mean(per_token + kl_coef * kl, mask)
    metrics = {"reward": rewards.detach().float(), "advantage_abs": advantages.abs().detach(),
               "kl": token_mean(kl.detach(), mask), "clip_fraction": clip_fraction(policy.tokens, old.tokens, mask, clip_eps)}
    return MethodOutput(loss, rewards.detach().reshape(-1, 1).to(policy.tokens.dtype), metrics)


@register(
    name="grpo", seed=None, family="rl", input_kind="rollout", needs_reference=True, needs_token_logps=True,
    extras=("old", "score", "group"), status="stable",
    paper="Shao et al. 2024, DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models, "
          "arXiv 2402.03300 (§4.1, GRPO)",
    taxonomy=taxonomy(["online", "group-sampling", "scalar-reward"], ["online", "policy-gradient"],
                      ["fixed-reference", "reverse-kl", "ratio-clipping"], []),
)
def grpo(policy: Logps, reference: Logps, *, old: Logps, score: Tensor, group: Tensor, clip_eps: float = 0.2,
         kl_coef: float = 0.04, std_eps: float = 1e-4, scale_advantages: bool = True) -> MethodOutput:
    """Clipped surrogate with group-normalised sequence advantages plus a k3 KL penalty, token-averaged.

    online.md §13: for G responses y_i of one prompt with rewards R_i, A_i = (R_i - mean R)/(std R + eps),
    broadcast to every token, and per response
        L_i = (1/|y_i|) sum_t [ -min(rho_t A_i, clip(rho_t, 1-eps, 1+eps) A_i) + kl_coef k3_t ],
    rho_t = pi_theta/pi_old(y_t|s_t), k3_t = e^{ref - theta} - (ref - theta) - 1 (DeepSeekMath Eq. 3-4).
    old: per-token log-probs under the sampling policy; score: (B,) rewards; group: (B,) prompt ids (a
    batch holds whole groups). Defaults (DeepSeekMath): clip_eps 0.2, kl_coef 0.04, std_eps 1e-4 (TRL);
    scale_advantages False keeps only the centring. Rewards in the output: the (B, 1) scores.
    """
    return grpo_objective("grpo", policy, reference, old, score, group, clip_eps=clip_eps, kl_coef=kl_coef,
                          std_eps=std_eps, scale_advantages=scale_advantages)


@tabular_check("grpo")
def grpo_tabular_check(fn=grpo):
    """online.md §13 Tests (i) and the bandit behind (iii): (1) the loss and its gradient are unchanged
    when every reward of a group is mapped R -> 3R - 2 (std_eps = 0, random groups of 4 with random
    per-token log-probs); (2) the exact expected GRPO update (every 3-tuple of draws of a 4-arm bandit
    enumerated, kl_coef 0) takes the uniform policy to the arm of highest reward (1, .4, .7, .2): pi(arm 0)
    >= 0.95 after 60 steps."""
    from preftune.rl.exact import affine_invariance_error, grpo_bandit_fixed_point

    rewards = [1.0, 0.4, 0.7, 0.2]
    probs = grpo_bandit_fixed_point(lambda p, r, o, s, g, **kw: fn(p, r, old=o, score=s[:, 0], group=g, **kw),
                                    [[x] for x in rewards], params={"kl_coef": 0.0})
    from preftune.methods.registry import CheckResult

    return [CheckResult("grpo", "loss and gradient unchanged by R -> 3R - 2 within every group", 0.0,
                        affine_invariance_error(lambda p, r, o, s, g: fn(p, r, old=o, score=s[:, 0], group=g,
                                                                         std_eps=0.0), aspects=1), 1e-10),
            CheckResult("grpo", "expected GRPO updates reach the best arm of a 4-arm bandit: pi(arm 0)", 0.95,
                        float(probs[0]), 0.0, bound=">=")]
