"""The RL losses (preftune/rl/methods): hand-worked values from the spec's formulas, reductions to their
parents, and gradients where the formula says where they go. Expected values use plain `math`."""
from __future__ import annotations

import math

import pytest
import torch
from handworked import ell, sigmoid

from preftune.records import Logps
from preftune.rl.methods.dapo_step import dapo_step
from preftune.rl.methods.entropy_bonus import entropy_bonus
from preftune.rl.methods.grpo import grpo
from preftune.rl.methods.mcts_dpo import mcts_dpo
from preftune.rl.methods.mo_grpo import mo_grpo
from preftune.rl.methods.oreo import oreo
from preftune.rl.methods.pdppo import pdppo
from preftune.rl.methods.ppo import ppo
from preftune.rl.methods.rto import rto

F64 = torch.float64


def rec(values) -> Logps:
    """A per-token record from nested lists (B, K, T), every position a response token."""
    tokens = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=F64)
    return Logps.from_tokens(tokens, torch.ones_like(tokens, dtype=torch.bool))


def leaf(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=True)


def k3(theta, ref):
    return math.exp(ref - theta) - (ref - theta) - 1


# ------------------------------------------------------------------------------------------------ GRPO

@pytest.mark.method("grpo", "value")
def test_grpo_hand_worked_value():
    # One group of two one-token responses, rewards (1, 0): mean .5, unbiased std sqrt(.5).
    policy, reference = rec([[[-0.5]], [[-1.0]]]), rec([[[-0.7]], [[-0.9]]])
    out = grpo(policy, reference, old=rec([[[-0.5]], [[-1.0]]]), score=torch.tensor([1.0, 0.0], dtype=F64),
               group=torch.tensor([0, 0]))
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    expected = [-a + 0.04 * k3(-0.5, -0.7), a + 0.04 * k3(-1.0, -0.9)]
    torch.testing.assert_close(out.loss, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.method("grpo", "value")
def test_grpo_clips_the_ratio_where_the_advantage_is_positive():
    # rho = e^{0.5} > 1.2 with A > 0: the clipped branch (1.2 A) is the minimum, so no gradient flows.
    tokens = leaf([[[0.0]], [[-1.0]]])
    out = grpo(rec(tokens), rec([[[0.0]], [[-1.0]]]), old=rec([[[-0.5]], [[-1.0]]]), score=torch.tensor([1.0, 0.0], dtype=F64),
               group=torch.tensor([0, 0]), kl_coef=0.0)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    assert float(out.loss[0].detach()) == pytest.approx(-1.2 * a, abs=1e-12)
    out.loss.sum().backward()
    assert float(tokens.grad[0, 0, 0]) == 0.0 and float(tokens.grad[1, 0, 0]) != 0.0


@pytest.mark.method("grpo", "reduction")
def test_grpo_without_scaling_or_kl_is_reinforce_with_the_group_mean_baseline():
    # At rho = 1 the gradient is -(R - mean R) d log pi / |y|: REINFORCE with the group-mean baseline.
    g = torch.Generator().manual_seed(0)
    tokens = -torch.rand(6, 1, 3, generator=g, dtype=F64)
    scores, group = torch.rand(6, generator=g, dtype=F64), torch.tensor([0, 0, 0, 1, 1, 1])
    leaf = tokens.clone().requires_grad_(True)
    grpo(Logps.from_tokens(leaf, torch.ones_like(leaf, dtype=torch.bool)), rec(tokens.tolist()),
         old=rec(tokens.tolist()), score=scores, group=group, kl_coef=0.0,
         scale_advantages=False).loss.sum().backward()
    baseline = torch.stack([scores[:3].mean()] * 3 + [scores[3:].mean()] * 3)
    reinforce = -((scores - baseline).reshape(-1, 1, 1) * torch.ones_like(tokens)) / 3
    torch.testing.assert_close(leaf.grad, reinforce, rtol=0, atol=1e-12)


# -------------------------------------------------------------------------------------------- MO-GRPO

@pytest.mark.method("mo_grpo", "value")
def test_mo_grpo_combines_the_aspects_with_the_weights():
    policy, reference, old = rec([[[-0.5]], [[-1.0]]]), rec([[[-0.5]], [[-1.0]]]), rec([[[-0.5]], [[-1.0]]])
    aspects = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    out = mo_grpo(policy, reference, old=old, aspects=aspects, group=torch.tensor([0, 0]), weights=[0.8, 0.2])
    # R = (0.8, 0.2): mean .5, unbiased std sqrt(.18); k3 = 0 since policy = reference.
    a = 0.3 / (math.sqrt(0.18) + 1e-4)
    torch.testing.assert_close(out.loss, torch.tensor([-a, a], dtype=F64), rtol=0, atol=1e-12)
    assert out.metrics["aspect_0"].tolist() == [1.0, 0.0]


@pytest.mark.method("mo_grpo", "value")
def test_mo_grpo_group_normalisation_standardises_each_aspect_first():
    aspects = torch.tensor([[10.0, 0.0], [0.0, 1.0], [5.0, 0.5]], dtype=F64)
    same = rec([[[-1.0]]] * 3)
    out = mo_grpo(same, same, old=same, aspects=aspects, group=torch.tensor([0, 0, 0]), aspect_normalisation="group",
                  std_eps=0.0)
    # Each aspect standardised is (1, -1, 0) and (-1, 1, 0): their mean is 0 everywhere, so no advantage.
    assert out.metrics["advantage_abs"].abs().max() == 0.0


@pytest.mark.method("mo_grpo", "reduction")
def test_mo_grpo_with_one_aspect_is_grpo():
    g = torch.Generator().manual_seed(1)
    tokens = -torch.rand(4, 1, 2, generator=g, dtype=F64)
    old = tokens + 0.3 * torch.randn(4, 1, 2, generator=g, dtype=F64)
    scores, group = torch.rand(4, generator=g, dtype=F64), torch.tensor([0, 0, 1, 1])
    args = dict(old=Logps.from_tokens(old, torch.ones_like(old, dtype=torch.bool)), group=group)
    policy = Logps.from_tokens(tokens, torch.ones_like(tokens, dtype=torch.bool))
    a = mo_grpo(policy, policy, aspects=scores.unsqueeze(-1), weights=[1.0], **args).loss
    b = grpo(policy, policy, score=scores, **args).loss
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ PPO / RTO

def ppo_inputs():
    policy = rec([[[-0.4, -0.6]]])
    return dict(reference=rec([[[-0.5, -0.5]]]), old=rec([[[-0.4, -0.6]]]), values=torch.tensor([[[0.2, 0.5]]], dtype=F64),
                old_values=torch.tensor([[[0.2, 0.5]]], dtype=F64), score=torch.tensor([1.0], dtype=F64)), policy


@pytest.mark.method("ppo", "value")
def test_ppo_hand_worked_value():
    inputs, policy = ppo_inputs()
    out = ppo(policy, inputs.pop("reference"), whiten_advantages=False, kl_coef=0.1, lam=0.5, **inputs)
    r0, r1 = -0.1 * (-0.4 + 0.5), -0.1 * (-0.6 + 0.5) + 1.0
    d0, d1 = r0 + 0.5 - 0.2, r1 - 0.5
    a1 = d1
    a0 = d0 + 0.5 * a1
    g0, g1 = a0 + 0.2, a1 + 0.5
    policy_loss = (-a0 - a1) / 2  # rho = 1
    value = (0.5 * (0.2 - g0) ** 2 + 0.5 * (0.5 - g1) ** 2) / 2  # |V - G| within the clip: unclipped
    assert float(out.loss[0].detach()) == pytest.approx(policy_loss + value, abs=1e-12)


@pytest.mark.method("ppo", "reduction")
def test_ppo_at_ratio_one_is_the_policy_gradient_with_gae_advantages():
    g = torch.Generator().manual_seed(2)
    old = -torch.rand(3, 1, 4, generator=g, dtype=F64)
    values = torch.randn(3, 1, 4, generator=g, dtype=F64)
    reference = old + 0.2 * torch.randn(3, 1, 4, generator=g, dtype=F64)
    score = torch.tensor([1.0, 0.0, 0.5], dtype=F64)
    leaf = old.clone().requires_grad_(True)
    mask = torch.ones_like(old, dtype=torch.bool)
    ppo(Logps.from_tokens(leaf, mask), Logps.from_tokens(reference, mask), old=Logps.from_tokens(old, mask),
        values=values, old_values=values, score=score, whiten_advantages=False).loss.sum().backward()
    from preftune.rl.advantages import gae, last_token_reward

    rewards = -0.01 * (old - reference) + last_token_reward(score.reshape(-1, 1), mask)
    advantages, _ = gae(rewards, values, mask, 1.0, 0.95)
    torch.testing.assert_close(leaf.grad, -advantages / 4, rtol=0, atol=1e-12)


@pytest.mark.method("rto", "value")
def test_rto_hand_worked_token_rewards():
    inputs, policy = ppo_inputs()
    dpo = rec([[[-0.1, -1.5]]])  # log pi_dpo - log pi_ref = (0.4, -1.0)
    out = rto(policy, inputs.pop("reference"), dpo=dpo, whiten_advantages=False, kl_coef=0.1, lam=0.5,
              dpo_reward_scale=0.1, dpo_reward_clip=0.05, **inputs)
    dense = [min(0.05, 0.1 * 0.4), max(-0.05, 0.1 * -1.0)]  # (0.04, -0.05): scaled, then clipped
    r0, r1 = -0.1 * 0.1 + dense[0], -0.1 * -0.1 + 1.0 + dense[1]
    a1 = r1 - 0.5
    a0 = r0 + 0.5 - 0.2 + 0.5 * a1
    value = (0.5 * (0.2 - a0 - 0.2) ** 2 + 0.5 * (0.5 - a1 - 0.5) ** 2) / 2
    assert float(out.loss[0].detach()) == pytest.approx((-a0 - a1) / 2 + value, abs=1e-12)
    assert float(out.metrics["dpo_reward"][0]) == pytest.approx(-0.01, abs=1e-12)


@pytest.mark.method("rto", "reduction")
def test_rto_without_dpo_rewards_is_ppo():
    inputs, policy = ppo_inputs()
    reference = inputs.pop("reference")
    a = rto(policy, reference, dpo=rec([[[3.0, -4.0]]]), dpo_reward_scale=0.0, **inputs)
    b = ppo(policy, reference, **inputs)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- DAPO

def sums(values):
    s = torch.tensor(values, dtype=F64)
    return Logps(sum=s, length=torch.ones_like(s))


@pytest.mark.method("dapo_step", "value")
def test_dapo_step_hand_worked_value():
    policy, reference = sums([[-1.0, -2.0]]), sums([[-1.5, -1.5]])
    advantages = torch.tensor([[0.3, -0.1]], dtype=F64)
    out = dapo_step(policy, reference, advantages=advantages, beta=0.5)
    # log-ratios (0.5, -0.5); centred targets (0.2, -0.2)/0.5 = (0.4, -0.4).
    assert float(out.loss[0].detach()) == pytest.approx(((0.5 - 0.4) ** 2 + (-0.5 + 0.4) ** 2) / 2, abs=1e-12)
    none = dapo_step(policy, reference, advantages=advantages, beta=0.5, centre="none")
    assert float(none.loss[0]) == pytest.approx(((0.5 - 0.6) ** 2 + (-0.5 + 0.2) ** 2) / 2, abs=1e-12)


@pytest.mark.method("dapo_step", "reduction")
def test_dapo_step_with_two_candidates_fully_centred_is_a_quarter_of_ipo():
    # (h - (A1 - A2)/beta)^2 / 4 with h the log-ratio margin: IPO's loss with 1/(2 tau) = (A1 - A2)/beta.
    from preftune.methods.ipo import ipo

    policy, reference = sums([[-1.0, -2.5]]), sums([[-1.2, -1.4]])
    advantages, beta = torch.tensor([[0.3, -0.1]], dtype=F64), 0.5
    out = dapo_step(policy, reference, advantages=advantages, beta=beta, centre="both")
    tau = beta / (2 * 0.4)
    torch.testing.assert_close(out.loss, ipo(policy, reference, beta=tau, length_normalize=False).loss / 4,
                               rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------- OREO

@pytest.mark.method("oreo", "value")
def test_oreo_hand_worked_value():
    policy, reference = rec([[[-0.2, -0.4]]]), rec([[[-0.5, -0.1]]])  # Delta = (0.3, -0.3), acc = (0, -0.3)
    values = torch.tensor([[[0.6, 0.9]]], dtype=F64)
    kl = torch.tensor([[[0.02, 0.04]]], dtype=F64)
    out = oreo(policy, reference, values=values, outcome=torch.tensor([1.0], dtype=F64), token_kl=kl,
               step_ids=torch.tensor([[[0, 1]]]), beta=0.5, kl_coef=0.1)
    value_part = ((0.6 + 0.5 * 0.0 - 1) ** 2 + (0.9 + 0.5 * -0.3 - 1) ** 2) / 2
    policy_part = ((0.5 * (0.3 + -0.3) + 0.6 - 1) ** 2 + (0.5 * -0.3 + 0.9 - 1) ** 2) / 2
    assert float(out.loss[0].detach()) == pytest.approx(value_part + policy_part + 0.1 * 0.03, abs=1e-12)


@pytest.mark.method("oreo", "value")
def test_oreo_gradients_reach_only_the_current_action_and_the_values():
    tokens = leaf([[[-0.2, -0.4, -0.3]]])
    values = leaf([[[0.6, 0.9, 0.1]]])
    out = oreo(rec(tokens), rec([[[-0.5, -0.1, -0.3]]]), values=values, outcome=torch.tensor([1.0], dtype=F64),
               token_kl=torch.zeros(1, 1, 3, dtype=F64), step_ids=torch.tensor([[[0, 1, 2]]]), beta=0.5)
    out.loss.sum().backward()
    # Policy residual of token t depends on log pi only through Delta_t: d/d Delta_t = 2 beta res_t / T.
    delta = [0.3, -0.3, 0.0]
    after = [sum(delta[t + 1:]) for t in range(3)]
    residual = [0.5 * (delta[t] + after[t]) + [0.6, 0.9, 0.1][t] - 1 for t in range(3)]
    expected = torch.tensor([[[2 * 0.5 * r / 3 for r in residual]]], dtype=F64)
    torch.testing.assert_close(tokens.grad, expected, rtol=0, atol=1e-12)
    value_residual = [[0.6, 0.9, 0.1][t] + 0.5 * sum(delta[t:]) - 1 for t in range(3)]
    torch.testing.assert_close(values.grad, torch.tensor([[[2 * r / 3 for r in value_residual]]], dtype=F64),
                               rtol=0, atol=1e-12)


@pytest.mark.method("oreo", "reduction")
def test_oreo_step_level_with_one_token_steps_is_token_level():
    g = torch.Generator().manual_seed(3)
    tokens, reference = -torch.rand(2, 1, 4, generator=g, dtype=F64), -torch.rand(2, 1, 4, generator=g, dtype=F64)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    args = dict(values=torch.randn(2, 1, 4, generator=g, dtype=F64), outcome=torch.tensor([1.0, 0.0], dtype=F64),
                token_kl=torch.rand(2, 1, 4, generator=g, dtype=F64), step_ids=torch.arange(4).expand(2, 1, 4))
    leaves = [tokens.clone().requires_grad_(True) for _ in range(2)]
    losses = [oreo(Logps.from_tokens(leaf, mask), Logps.from_tokens(reference, mask), level=level, **args).loss
              for leaf, level in zip(leaves, ("token", "step"))]
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=1e-15)
    grads = [torch.autograd.grad(loss.sum(), leaf)[0] for loss, leaf in zip(losses, leaves)]
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-15)


def test_oreo_step_level_reads_values_at_step_starts_only():
    values = torch.tensor([[[0.5, 99.0, 0.7, 99.0]]], dtype=F64)
    out = oreo(rec([[[-1.0] * 4]]), rec([[[-1.0] * 4]]), values=values, outcome=torch.tensor([1.0], dtype=F64),
               token_kl=torch.zeros(1, 1, 4, dtype=F64), step_ids=torch.tensor([[[0, 0, 1, 1]]]), level="step")
    # Delta = 0 everywhere: both residuals are V - 1 at the two step starts.
    assert float(out.loss[0].detach()) == pytest.approx(2 * ((0.5 - 1) ** 2 + (0.7 - 1) ** 2) / 2, abs=1e-12)


# ------------------------------------------------------------------------------------------ MCTS-DPO

@pytest.mark.method("mcts_dpo", "value")
def test_mcts_dpo_hand_worked_value():
    policy = rec([[[-0.1, -0.2, -0.3], [-0.1, -0.2, -0.9]]])
    reference = rec([[[-0.5, -0.5, -0.5], [-0.5, -0.5, -0.5]]])
    out = mcts_dpo(policy, reference, visits=torch.tensor([[3, 1]]), diverge_at=torch.tensor([2]), beta=0.5)
    z = (-0.3 + 0.5) - (-0.9 + 0.5)  # only the third token differs
    eps = 1 - 1 / (1 + 1 / 3)
    assert float(out.loss[0].detach()) == pytest.approx((1 - eps) * ell(0.5 * z) + eps * ell(-0.5 * z), abs=1e-12)
    assert float(out.metrics["label_smoothing"][0]) == pytest.approx(0.25, abs=1e-12)


@pytest.mark.method("mcts_dpo", "reduction")
def test_mcts_dpo_without_smoothing_from_the_first_token_is_dpo():
    from preftune.methods.dpo import dpo

    policy = rec([[[-0.1, -0.2], [-0.4, -0.9]]])
    reference = rec([[[-0.5, -0.4], [-0.3, -0.5]]])
    a = mcts_dpo(policy, reference, visits=torch.tensor([[4, 2]]), diverge_at=torch.tensor([0]), conservative=False)
    torch.testing.assert_close(a.loss, dpo(policy, reference, beta=0.1).loss, rtol=0, atol=1e-15)
    assert float(a.loss[0]) == pytest.approx(-math.log(sigmoid(0.1 * ((-0.3 + 0.9) - (-1.3 + 0.8)))), abs=1e-12)


# --------------------------------------------------------------------------------------------- PDPPO

@pytest.mark.method("pdppo", "value")
def test_pdppo_hand_worked_value():
    policy, old = rec([[[-0.5, -1.0]]]), rec([[[-0.5, -1.0]]])
    out = pdppo(policy, old=old, returns=torch.tensor([0.8], dtype=F64), values=torch.tensor([0.3], dtype=F64),
                post_values=torch.tensor([0.1], dtype=F64), old_values=torch.tensor([0.3], dtype=F64),
                old_post_values=torch.tensor([0.1], dtype=F64), entropy=torch.tensor([[[0.6, 0.4]]], dtype=F64))
    a = 0.8 - 0.1
    assert float(out.loss[0].detach()) == pytest.approx(-a + 0.5 * (0.1 - 0.8) ** 2 - 0.012 * 0.5, abs=1e-12)


@pytest.mark.method("pdppo", "reduction")
def test_pdppo_post_only_critic_equal_to_the_state_critic_is_vanilla_ppo():
    g = torch.Generator().manual_seed(4)
    old = -torch.rand(5, 1, 2, generator=g, dtype=F64)
    policy = old + 0.3 * torch.randn(5, 1, 2, generator=g, dtype=F64)
    v, returns = torch.randn(5, generator=g, dtype=F64), torch.randn(5, generator=g, dtype=F64)
    entropy = torch.rand(5, 1, 2, generator=g, dtype=F64)
    mask = torch.ones_like(old, dtype=torch.bool)
    args = dict(old=Logps.from_tokens(old, mask), returns=returns, entropy=entropy)
    state = pdppo(Logps.from_tokens(policy, mask), values=v, post_values=torch.zeros(5, dtype=F64), old_values=v,
                  old_post_values=torch.zeros(5, dtype=F64), critic="state", **args).loss
    post = pdppo(Logps.from_tokens(policy, mask), values=torch.zeros(5, dtype=F64), post_values=v,
                 old_values=torch.zeros(5, dtype=F64), old_post_values=v, critic="post", **args).loss
    torch.testing.assert_close(state, post, rtol=0, atol=0)


# ------------------------------------------------------------------------------------- entropy bonus

@pytest.mark.method("entropy_bonus", "value")
def test_entropy_bonus_is_minus_the_mean_entropy():
    out = entropy_bonus(rec([[[-1.0, -1.0, -1.0]]]), entropy=torch.tensor([[[0.3, 0.6, 0.9]]], dtype=F64))
    assert float(out.loss[0].detach()) == pytest.approx(-0.6, abs=1e-12)


@pytest.mark.method("entropy_bonus", "reduction")
def test_ppo_plus_a_weighted_entropy_bonus_is_ppo_minus_the_weighted_mean_entropy():
    from preftune.methods import build_objective

    inputs, policy = ppo_inputs()
    reference = inputs.pop("reference")
    entropy = torch.tensor([[[0.5, 1.5]]], dtype=F64)
    objective = build_objective("ppo + 0.01*entropy_bonus")
    combined = objective(policy, reference, {**inputs, "entropy": entropy}).loss
    torch.testing.assert_close(combined, ppo(policy, reference, **inputs).loss - 0.01 * 1.0, rtol=0, atol=1e-12)


def test_rl_losses_refuse_sequence_level_records():
    sums_only = Logps(sum=torch.zeros(2, 1), length=torch.ones(2, 1))
    with pytest.raises(ValueError, match="grpo needs per-token log-probs of the policy"):
        grpo(sums_only, sums_only, old=sums_only, score=torch.zeros(2), group=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="centre must be one of"):
        dapo_step(sums(([[-1.0, -2.0]])), sums([[-1.0, -2.0]]), advantages=torch.zeros(1, 2, dtype=F64), centre="mean")
