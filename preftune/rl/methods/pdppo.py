"""PDPPO: Post-Decision Proximal Policy Optimization with dual critics (Felizardo et al. 2025, arXiv 2504.05150;
code leokan92/pdppo)."""
from __future__ import annotations

import torch
from torch import Tensor

from preftune.methods.registry import CheckResult, register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput
from preftune.rl.methods.common import clip_fraction, clipped_surrogate, token_mean

CRITICS = ("min", "mean", "post", "state")


def combine_critics(values: Tensor, post_values: Tensor, critic: str) -> Tensor:
    """The baseline from the state critic V(s) and the post-decision critic V^x(s^x)."""
    if critic == "min":
        return torch.minimum(values, post_values)
    if critic == "mean":
        return 0.5 * (values + post_values)
    if critic == "post":
        return post_values
    if critic == "state":
        return values
    raise ValueError(f"pdppo: critic must be one of {CRITICS}, got {critic!r}")


@register(
    name="pdppo", seed="pdppo", family="rl", input_kind="rollout", needs_reference=False, needs_token_logps=True,
    extras=("old", "returns", "values", "post_values", "old_values", "old_post_values", "entropy"), status="stable",
    paper="Felizardo et al. 2025, Post-Decision Proximal Policy Optimization with Dual Critic Networks for "
          "Accelerated Learning, arXiv 2504.05150",
    taxonomy=taxonomy(["online", "environment-reward"], ["online", "policy-gradient", "actor-critic"],
                      ["ratio-clipping", "entropy-bonus"], ["post-decision-state"]),
    reconstructed="the paper may describe the critics' combination differently from the official code's "
                  "elementwise min (online.md §14 [R]): critic = min (code) | mean | post (one post-decision "
                  "critic) | state (vanilla PPO)",
)
def pdppo(policy: Logps, *, old: Logps, returns: Tensor, values: Tensor, post_values: Tensor, old_values: Tensor,
          old_post_values: Tensor, entropy: Tensor, critic: str = "min", clip_eps: float = 0.2, value_coef: float = 0.5,
          entropy_coef: float = 0.012) -> MethodOutput:
    """PPO whose baseline and value loss combine a state critic and a post-decision-state critic.

    online.md §14 (official update): with normalised Monte-Carlo returns G, V-bar = combine(V_old(s),
    V^x_old(s^x)) and A = G - V-bar, per transition
        L = mean_m -min(rho_m A, clip(rho_m, 1 +- eps) A) + value_coef (combine(V(s), V^x(s^x)) - G)^2
            - entropy_coef mean_m H_m,
    rho_m the ratio of machine m's action (a MultiDiscrete action is one categorical per machine).
    combine: "min" (official: only the lower critic gets a value gradient per sample), "mean", "post"
    (the post-decision critic alone) or "state" (one state critic: vanilla PPO, the paper's baseline).
    policy, old: (B, 1, M) per-machine action log-probs; returns, values, post_values, old_values,
    old_post_values: (B,); entropy: (B, 1, M). Defaults (official): eps 0.2, value_coef 0.5, entropy 0.012.
    """
    if policy.tokens is None or old.tokens is None:
        raise ValueError("pdppo needs per-machine action log-probs (Logps.tokens)")
    baseline = combine_critics(old_values.detach(), old_post_values.detach(), critic)
    advantages = (returns - baseline).detach()
    mask = policy.mask
    surrogate = token_mean(clipped_surrogate(policy.tokens, old.tokens, advantages.reshape(-1, 1, 1), clip_eps), mask)
    value_error = (combine_critics(values, post_values, critic) - returns) ** 2
    entropy_mean = token_mean(entropy, mask)
    loss = surrogate + value_coef * value_error - entropy_coef * entropy_mean
    metrics = {"policy_loss": surrogate.detach(), "value_loss": value_error.detach(), "entropy": entropy_mean.detach(),
               "advantage": advantages, "clip_fraction": clip_fraction(policy.tokens, old.tokens, mask, clip_eps),
               "post_below_state": (post_values < values).float().detach()}
    return MethodOutput(loss, returns.detach().reshape(-1, 1), metrics)


@tabular_check("pdppo")
def pdppo_tabular_check(fn=pdppo):
    """online.md §14 Tests on the small lot-sizing instance (I = 2, M = 1, T = 5) and on random transitions.
    (i) The post-decision state the agent computes from its observation and action equals the
    environment's internal one on 500 random steps. (ii) The exact dynamic-programming optimum agrees
    with 3000 simulated episodes of its policy in the environment (within 4 standard errors).
    (iii) With deterministic demand V^x(s^x) = exogenous reward + V(s') at every post-decision state
    (and not with Bin(4, .4) demand). (iv) Through the loss: the advantage is G - min(V_old, V^x_old), only
    the lower critic gets a value gradient, 2 value_coef (min - G); critic "state" is vanilla PPO's loss."""
    from preftune.rl.lot_sizing_checks import environment_checks

    return environment_checks() + loss_checks(fn)


def loss_checks(fn) -> list[CheckResult]:
    """Property (iv) of the check, through `fn`, on eight random two-machine transitions."""
    from preftune.rl.exact import F64, records

    g = torch.Generator().manual_seed(4)
    b, m = 8, 2
    old = -torch.rand(b, 1, m, generator=g, dtype=F64) * 2
    returns = torch.randn(b, generator=g, dtype=F64)
    v, vx = torch.randn(b, generator=g, dtype=F64), torch.randn(b, generator=g, dtype=F64)
    entropy = torch.rand(b, 1, m, generator=g, dtype=F64)
    leaves = [old.clone().requires_grad_(True), v.clone().requires_grad_(True), vx.clone().requires_grad_(True)]
    out = fn(records(leaves[0]), old=records(old), returns=returns, values=leaves[1], post_values=leaves[2],
             old_values=v, old_post_values=vx, entropy=entropy)
    grad_policy, grad_v, grad_vx = torch.autograd.grad(out.loss.sum(), leaves)
    advantage = -grad_policy.sum((1, 2))  # d/d log pi_m of mean_m -rho_m A at rho = 1 is -A/M per machine
    low = torch.minimum(v, vx)
    results = [CheckResult("pdppo", "advantage through the loss = G - min(V_old, V^x_old)", 0.0,
                           float((advantage - (returns - low)).abs().max()), 1e-12)]
    lower_is_state = v <= vx
    expected_v = torch.where(lower_is_state, 2 * 0.5 * (low - returns), torch.zeros_like(v))
    expected_vx = torch.where(lower_is_state, torch.zeros_like(v), 2 * 0.5 * (low - returns))
    results.append(CheckResult("pdppo", "value gradient reaches only the lower critic, 2 c (min - G)", 0.0,
                               max(float((grad_v - expected_v).abs().max()), float((grad_vx - expected_vx).abs().max())),
                               1e-12))
    policy = old + 0.3 * torch.randn(b, 1, m, generator=g, dtype=F64)
    state = fn(records(policy), old=records(old), returns=returns, values=v, post_values=vx, old_values=v,
               old_post_values=vx, entropy=entropy, critic="state").loss
    ratio, adv = (policy - old).exp(), (returns - v).reshape(-1, 1, 1)
    surrogate = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean((1, 2))
    vanilla = surrogate + 0.5 * (v - returns) ** 2 - 0.012 * entropy.mean((1, 2))
    results.append(CheckResult("pdppo", "critic 'state' = vanilla PPO's clipped loss with one critic (by hand)", 0.0,
                               float((state - vanilla).abs().max()), 1e-12))
    return results
