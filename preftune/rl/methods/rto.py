"""RTO: Reinforced Token Optimization (Zhong et al., ICML 2025, arXiv 2404.18922; code zkshan2002/RTO)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from preftune.methods.registry import CheckResult, register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput
from preftune.rl.methods.common import require_tokens
from preftune.rl.methods.ppo import advantage_checks, kl_penalty_rewards, ppo_on_token_rewards


def dpo_token_rewards(dpo: Logps, reference: Logps, scale: float, clip: float | None) -> Tensor:
    """(B, 1, T) clip(scale (log pi_dpo - log pi_ref)(y_t|s_t), -clip, clip): RTO's dense reward (scaled, then clipped)."""
    reward = scale * (dpo.tokens - reference.tokens).detach() * dpo.mask
    return reward if clip is None else reward.clamp(-clip, clip)


@register(
    name="rto", seed="rto", family="rl", input_kind="rollout", needs_reference=True, needs_token_logps=True,
    extras=("old", "dpo", "values", "old_values", "score"), status="stable",
    paper="Zhong et al. 2025, DPO Meets PPO: Reinforced Token Optimization for RLHF, ICML 2025, arXiv 2404.18922",
    taxonomy=taxonomy(["online", "token-level", "dense-reward"], ["online", "policy-gradient", "actor-critic"],
                      ["fixed-reference", "reverse-kl", "ratio-clipping"], ["credit-assignment"]),
)
def rto(policy: Logps, reference: Logps, *, old: Logps, dpo: Logps, values: Tensor, old_values: Tensor, score: Tensor,
        dpo_reward_scale: float = 0.05, dpo_reward_clip: float | None = 0.05, kl_coef: float = 0.01,
        gamma: float = 1.0, lam: float = 0.95, clip_eps: float = 0.2, reward_clip: float = 10.0, value_coef: float = 1.0,
        value_clip: float | None = 0.2, whiten_advantages: bool = True) -> MethodOutput:
    """PPO whose per-token reward adds the DPO policy's token rewards to the sequence reward (online.md §9).

        r_h = clip(beta1 [log pi_dpo(y_h|s_h) - log pi_ref(y_h|s_h)], -c, c) - beta2 log(pi_old/pi_ref)(y_h|s_h)
              + 1[h = H] clip(r_RM(x, y), -10, 10),
    then exactly ppo (ppo.py): GAE, clipped surrogate, value loss. dpo: per-token log-probs of the rollouts
    under any DPO-trained model of the same reference (the library's `preftune train --loss dpo` output);
    reference: the SFT policy pi_ref. DPO's implicit reward is a token-level reward up to shaping
    (Rafailov et al. 2024), so the sum over tokens of beta_dpo log pi_dpo/pi_ref is r(y) minus a potential.
    Defaults (official run script): beta1 = dpo_reward_scale 0.05, c = dpo_reward_clip 0.05 (None: no clip),
    beta2 = kl_coef 0.01; the rest as ppo. dpo_reward_scale = 0 is ppo.
    """
    require_tokens("rto", policy=policy, reference=reference, old=old, dpo=dpo)
    dense = dpo_token_rewards(dpo, reference, dpo_reward_scale, dpo_reward_clip)
    rewards = kl_penalty_rewards(old, reference, score, kl_coef, reward_clip) + dense
    out = ppo_on_token_rewards(policy, old, values, old_values, rewards, gamma=gamma, lam=lam, clip_eps=clip_eps,
                               value_coef=value_coef, value_clip=value_clip, whiten_advantages=whiten_advantages)
    out.metrics["dpo_reward"] = (dense * policy.mask).sum((1, 2))
    return out


@tabular_check("rto")
def rto_tabular_check(fn=rto):
    """online.md §9 Test, on a depth-2 binary token tree with leaf rewards r = (1, 0, .2, .3) and a uniform
    pi_ref. pi_dpo is DPO's optimum pi_ref e^{r/beta}/Z (beta = 0.5), the policy DPO's own check verifies.
    (1) Token rewards: with beta1 = beta (no clip, no KL, zero critic, lam = 1) the first token's advantage
    read through the loss is r(y) + sum_h beta log pi_dpo/pi_ref = 2 r(y) - beta log Z. (2) With the
    default clip c = .05 every token's advantage is the hand-clipped reward-to-go. (3) beta1 = 0 is ppo:
    same loss and gradient. (4) Tabular PPO with the dense rewards (beta1 = 0.5, c = 0.5) reaches
    pi(best leaf) >= 0.9 in fewer updates than with the sequence reward alone (the same loss, beta1 = 0)."""
    from preftune.rl.exact import F64, Tree, loss_advantages, records, tabular_ppo_updates_to
    from preftune.rl.methods.ppo import ppo

    tree, rewards, beta = Tree(), [1.0, 0.0, 0.2, 0.3], 0.5
    reference = tree.token_logps(tree.uniform_logits())
    probs = torch.softmax(torch.tensor(rewards, dtype=F64) / beta, -1)  # pi_ref uniform
    dpo = tree.token_logps(tree.logits_of(probs))
    log_z = math.log(sum(math.exp(r / beta) for r in rewards) / len(rewards))
    zeros, score = torch.zeros_like(reference), torch.tensor(rewards, dtype=F64)

    def advantages(scale, clip, lam=1.0):
        return loss_advantages(lambda p, **kw: fn(p, **kw), reference, reference=records(reference),
                               old=records(reference), dpo=records(dpo), values=zeros, old_values=zeros, score=score,
                               dpo_reward_scale=scale, dpo_reward_clip=clip, kl_coef=0.0, lam=lam,
                               whiten_advantages=False)

    identity = torch.tensor([2 * r - beta * log_z for r in rewards], dtype=F64)
    results = [CheckResult("rto", "first-token advantage = r(y) + sum_h beta log pi_dpo/pi_ref = 2 r(y) - beta log Z",
                           0.0, float((advantages(beta, None)[:, 0, 0] - identity).abs().max()), 1e-10)]
    dense = (0.05 * (dpo - reference)).clamp(-0.05, 0.05)[:, 0]
    expected = torch.stack([dense[:, 1:].sum(-1) + dense[:, 0], dense[:, 1]], -1) + score.unsqueeze(-1)
    results.append(CheckResult("rto", "advantages with the default clip c = 0.05 = hand-clipped dense reward-to-go",
                               0.0, float((advantages(0.05, 0.05)[:, 0] - expected).abs().max()), 1e-10))

    # The PPO parts of the same loss, with pi_dpo = pi_ref so that the dense reward is zero.
    results += advantage_checks("rto", lambda p, **kw: fn(p, kw["reference"], dpo=kw.pop("reference"),
                                                          **{"whiten_advantages": False, **kw}))
    g = torch.Generator().manual_seed(5)
    policy, old = reference + 0.2 * torch.randn(reference.shape, generator=g, dtype=F64), reference.clone()
    values, olds = torch.randn(reference.shape, generator=g, dtype=F64), torch.randn(reference.shape, generator=g, dtype=F64)
    leaves = [policy.clone().requires_grad_(True) for _ in range(2)]
    outs = [fn(records(leaves[0]), records(reference), old=records(old), dpo=records(dpo), values=values,
               old_values=olds, score=score, dpo_reward_scale=0.0),
            ppo(records(leaves[1]), records(reference), old=records(old), values=values, old_values=olds, score=score)]
    grads = [torch.autograd.grad(o.loss.sum(), leaf)[0] for o, leaf in zip(outs, leaves)]
    results.append(CheckResult("rto", "dpo_reward_scale = 0 gives ppo's loss and gradient", 0.0,
                               max(float((outs[0].loss - outs[1].loss).detach().abs().max()),
                                   float((grads[0] - grads[1]).abs().max())), 1e-12))

    def run(scale, limit):
        return tabular_ppo_updates_to(lambda p, r, **kw: fn(p, r, dpo_reward_scale=scale, dpo_reward_clip=0.5,
                                                            whiten_advantages=False, kl_coef=0.0, **kw),
                                      tree, rewards, 0, lr=0.3, max_updates=limit,
                                      extras=lambda _: {"dpo": records(dpo)})[0]
    sparse = run(0.0, 200)
    dense_updates = run(0.5, sparse)  # past the sparse count the property has failed: stop there
    results.append(CheckResult("rto", f"tabular PPO updates to pi(best leaf) >= 0.9 with dense rewards, vs "
                                      f"{sparse} with the sequence reward alone (bound: {sparse} - 1)",
                               sparse - 1, dense_updates, 0.0, bound="<="))
    return results
