"""PPO with a sequence-level reward, GAE and a KL penalty in the reward (Schulman et al. 2017, arXiv 1707.06347;
the RLHF form of Ouyang et al. 2022 as OpenRLHF implements it)."""
from __future__ import annotations

import torch
from torch import Tensor

from preftune.methods.registry import CheckResult, register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput
from preftune.rl.advantages import gae, last_token_reward, whiten
from preftune.rl.methods.common import (clip_fraction, clipped_surrogate, require_tokens, token_mean,
                                        value_loss)


def ppo_on_token_rewards(policy: Logps, old: Logps, values: Tensor, old_values: Tensor, token_rewards: Tensor, *,
                         gamma: float, lam: float, clip_eps: float, value_coef: float, value_clip: float | None,
                         whiten_advantages: bool) -> MethodOutput:
    """Clipped surrogate plus value loss for per-token rewards (B, 1, T): GAE on the rollout's values
    V_old, the returns A + V_old as value targets; both parts averaged over each response's tokens."""
    mask = policy.mask
    advantages, returns = gae(token_rewards.detach(), old_values.detach(), mask, gamma, lam)
    if whiten_advantages:
        advantages = whiten(advantages, mask)
    policy_loss = token_mean(clipped_surrogate(policy.tokens, old.tokens, advantages, clip_eps), mask)
    critic_loss = token_mean(value_loss(values, returns, old_values.detach(), value_clip), mask)
    metrics = {"policy_loss": policy_loss.detach(), "value_loss": critic_loss.detach(),
               "return": (token_rewards.detach() * mask).sum((1, 2)), "value": token_mean(values.detach(), mask),
               "clip_fraction": clip_fraction(policy.tokens, old.tokens, mask, clip_eps)}
    return MethodOutput(policy_loss + value_coef * critic_loss, (token_rewards.detach() * mask).sum(-1), metrics)


def kl_penalty_rewards(old: Logps, reference: Logps, score: Tensor, kl_coef: float, reward_clip: float) -> Tensor:
    """r_t = -kl_coef (log pi_old - log pi_ref)(y_t|s_t) + 1[t = last] clip(score, -c, c): (B, 1, T)."""
    kl = (old.tokens - reference.tokens).detach() * old.mask
    final = last_token_reward(score.to(kl.dtype).clamp(-reward_clip, reward_clip).reshape(-1, 1), old.mask)
    return final - kl_coef * kl


@register(
    name="ppo", seed=None, family="rl", input_kind="rollout", needs_reference=True, needs_token_logps=True,
    extras=("old", "values", "old_values", "score"), status="stable",
    paper="Schulman et al. 2017, Proximal Policy Optimization Algorithms, arXiv 1707.06347; Ouyang et al. 2022, "
          "Training language models to follow instructions with human feedback, arXiv 2203.02155",
    taxonomy=taxonomy(["online", "scalar-reward", "sequence-level"], ["online", "policy-gradient", "actor-critic"],
                      ["fixed-reference", "reverse-kl", "ratio-clipping"], []),
)
def ppo(policy: Logps, reference: Logps, *, old: Logps, values: Tensor, old_values: Tensor, score: Tensor,
        gamma: float = 1.0, lam: float = 0.95, clip_eps: float = 0.2, kl_coef: float = 0.01, reward_clip: float = 10.0,
        value_coef: float = 1.0, value_clip: float | None = 0.2, whiten_advantages: bool = True) -> MethodOutput:
    """RLHF PPO: a sequence reward on the last token, a per-token KL penalty, GAE, clipped surrogate and value loss.

    online.md §9 (the RTO paper's baseline): per-token reward r_t = -kl_coef log(pi_old/pi_ref)(y_t|s_t)
    + 1[t = H] clip(score, -reward_clip, reward_clip); GAE(gamma, lam) on the critic's rollout values V_old
    gives A_t and returns A_t + V_old; advantages whitened over the batch; loss per response
        (1/H) sum_t -min(rho_t A_t, clip(rho_t, 1 +- eps) A_t) + value_coef (1/H) sum_t 1/2 max((V - G)^2, (V_clip - G)^2).
    values: (B, 1, T) critic values at the state before each token (with gradient); old_values: the same at
    rollout time; score: (B,) reward-model scores. Defaults: OpenRLHF's (gamma 1, lam 0.95, eps 0.2,
    init_kl_coef 0.01, value_clip 0.2). With separate optimizers for actor and critic the value_coef only
    scales the critic's learning rate; with a shared backbone it weighs the two.
    """
    require_tokens("ppo", policy=policy, reference=reference, old=old)
    rewards = kl_penalty_rewards(old, reference, score, kl_coef, reward_clip)
    return ppo_on_token_rewards(policy, old, values, old_values, rewards, gamma=gamma, lam=lam, clip_eps=clip_eps,
                                value_coef=value_coef, value_clip=value_clip, whiten_advantages=whiten_advantages)


def advantage_checks(method: str, call, dense: float = 0.0) -> list[CheckResult]:
    """Advantages and value gradients read back through autograd on four random 3-token rollouts against
    plain recursions: lam = 1 (A_t = G_t - V_t) and lam = 0.95 (GAE by its definition), kl_coef 0.1.
    `dense`: a per-token reward the caller's loss adds (RTO's), included in the references."""
    from preftune.rl.exact import F64, gae_reference, loss_advantages, records, reward_to_go

    g = torch.Generator().manual_seed(3)
    shape = (4, 1, 3)
    old = -torch.rand(shape, generator=g, dtype=F64) * 2
    reference = old + 0.3 * torch.randn(shape, generator=g, dtype=F64)
    values = torch.randn(shape, generator=g, dtype=F64)
    score = torch.tensor([1.0, -0.5, 12.0, 0.0], dtype=F64)
    kl_coef, results = 0.1, []
    rewards = (-kl_coef * (old - reference) + dense)[:, 0].tolist()
    for row, s in zip(rewards, score.clamp(-10, 10).tolist()):
        row[-1] += s
    for lam in (1.0, 0.95):
        measured = loss_advantages(lambda p, **kw: call(p, lam=lam, **kw), old, reference=records(reference),
                                   old=records(old), values=values, old_values=values, score=score, kl_coef=kl_coef)
        expected = [gae_reference(r, v, 1.0, lam) for r, v in zip(rewards, values[:, 0].tolist())]
        error = float((measured[:, 0] - torch.tensor(expected, dtype=F64)).abs().max())
        results.append(CheckResult(method, f"advantages through the loss = GAE by definition (lam = {lam}, reward "
                                           "clipped at 10, KL penalty 0.1)", 0.0, error, 1e-10))
    leaf = values.clone().requires_grad_(True)
    out = call(records(old), reference=records(reference), old=records(old), values=leaf, old_values=values,
               score=score, kl_coef=kl_coef, lam=1.0, value_clip=None, value_coef=1.0)
    (grad,) = torch.autograd.grad(out.loss.sum(), leaf)
    targets = torch.tensor(reward_to_go(rewards), dtype=F64)
    error = float((grad[:, 0] * 3 - (values[:, 0] - targets)).abs().max())
    results.append(CheckResult(method, "value gradient = (V - G_t) / T with G_t the reward-to-go (lam = 1)", 0.0,
                               error, 1e-10))
    return results


@tabular_check("ppo")
def ppo_tabular_check(fn=ppo):
    """(1) The advantages the loss uses, read back through autograd, equal GAE computed by its definition,
    and the value gradient is (V - G)/T (advantage_checks; whitening off). (2) Tabular PPO on a depth-2
    binary token tree, leaf rewards (1, 0, .2, .3), exact expectations, uniform start: pi(best leaf)
    reaches 0.9 within 60 updates."""
    from preftune.rl.exact import Tree, tabular_ppo_updates_to

    def call(policy, **kw):
        return fn(policy, kw.pop("reference"), **{"whiten_advantages": False, **kw})

    results = advantage_checks("ppo", call)
    updates, _ = tabular_ppo_updates_to(lambda p, r, **kw: fn(p, r, whiten_advantages=False, kl_coef=0.0, **kw),
                                        Tree(), [1.0, 0.0, 0.2, 0.3], 0, max_updates=60)
    results.append(CheckResult("ppo", "tabular PPO on a depth-2 token tree: updates until pi(best leaf) >= 0.9",
                               60, updates, 0.0, bound="<="))
    return results
