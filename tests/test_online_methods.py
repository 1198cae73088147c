"""The online methods' losses: hand-worked values, reductions to their parents, gradients.

Conventions (records.py): response 0 is the chosen one, response 1 the rejected one; `reference`
is whatever the online loop passes (pi_t for sppo/dno/apo, pi_ref for the others).
"""
import math

import pytest
import torch

from preftune.methods.apo import apo
from preftune.methods.dno import dno
from preftune.methods.dpo import dpo
from preftune.methods.egpo import egpo
from preftune.methods.inpo import inpo
from preftune.methods.ipo import ipo
from preftune.methods.mnpo import mnpo
from preftune.methods.nash_mp import nash_mp
from preftune.methods.ofs_dpo import ofs_dpo
from preftune.methods.online_dpo import online_dpo
from preftune.methods.sppo import sppo
from preftune.records import Logps

D = torch.float64


def pair(chosen, rejected, requires_grad=False):
    record = Logps.pair(torch.tensor([chosen], dtype=D), torch.tensor([rejected], dtype=D))
    if requires_grad:
        record = Logps(sum=record.sum.clone().requires_grad_(True), length=record.length)
    return record


def batch(rows, requires_grad=False):
    sums = torch.tensor(rows, dtype=D).requires_grad_(requires_grad)
    return Logps(sum=sums, length=torch.ones_like(sums.detach()))


def softplus(x):
    return math.log1p(math.exp(x))


POLICY, REFERENCE, PREVIOUS = pair(-1.0, -2.0), pair(-1.5, -1.0), pair(-1.2, -1.8)


# -- sppo ------------------------------------------------------------------------------------------------

@pytest.mark.method("sppo", "value")
def test_sppo_value_by_hand():
    # log-ratios (0.5, -1); targets eta (w - 1/2) = 2 * (0.25, -0.25) = (0.5, -0.5)
    out = sppo(POLICY, REFERENCE, win_rate=torch.tensor([[0.75, 0.25]], dtype=D), eta=2.0)
    assert out.loss.item() == pytest.approx(0.5 * ((0.5 - 0.5) ** 2 + (-1.0 + 0.5) ** 2))
    assert out.rewards[0].tolist() == pytest.approx([0.5 + 0.5 / 2, 0.5 - 1.0 / 2])


@pytest.mark.method("sppo", "value")
def test_sppo_vanishes_exactly_at_the_multiplicative_weights_point():
    # log pi/pi_t = eta (w - 1/2) for both responses: the loss and its gradient are 0.
    w = torch.tensor([[0.9, 0.3]], dtype=D)
    reference = batch([[-2.0, -1.0]])
    policy = batch((reference.sum + 3.0 * (w - 0.5)).tolist(), requires_grad=True)
    out = sppo(policy, reference, win_rate=w, eta=3.0)
    grad, = torch.autograd.grad(out.loss.sum(), policy.sum)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-15) and grad.abs().max() < 1e-12


@pytest.mark.method("sppo", "reduction")
def test_sppo_without_preference_information_is_a_pure_proximal_term():
    # win-rate 1/2 everywhere: L = 1/2 sum (log pi/pi_t)^2, minimised by staying at pi_t.
    policy = batch([[-0.7, -1.9]])
    reference = batch([[-1.0, -1.0]])
    out = sppo(policy, reference, win_rate=torch.full((1, 2), 0.5, dtype=D), eta=1000.0)
    assert out.loss.item() == pytest.approx(0.5 * (0.3 ** 2 + 0.9 ** 2))


@pytest.mark.method("sppo", "gradient")
def test_sppo_gradient_is_the_residual():
    policy = batch([[-1.0, -2.0]], requires_grad=True)
    out = sppo(policy, REFERENCE, win_rate=torch.tensor([[0.75, 0.25]], dtype=D), eta=2.0)
    grad, = torch.autograd.grad(out.loss.sum(), policy.sum)
    assert grad[0].tolist() == pytest.approx([0.0, -0.5])


# -- dno -------------------------------------------------------------------------------------------------

@pytest.mark.method("dno", "value")
def test_dno_soft_label_value_by_hand():
    # h = eta (0.5 - (-1)) = 0.15 at eta = 0.1; q = 0.7
    out = dno(POLICY, REFERENCE, soft_label=torch.tensor([0.7], dtype=D), eta=0.1)
    assert out.loss.item() == pytest.approx(0.7 * softplus(-0.15) + 0.3 * softplus(0.15))
    assert out.rewards[0].tolist() == pytest.approx([0.05, -0.1])


@pytest.mark.method("dno", "reduction")
def test_dno_with_hard_labels_is_dpo_against_the_previous_iterate():
    # DNO-Prct: q = 1 is DPO with pi_t as the reference, eta as DPO's beta.
    policy, previous = batch([[-1.0, -2.0], [-3.0, -0.5]]), batch([[-1.5, -1.0], [-2.0, -2.0]])
    out = dno(policy, previous, soft_label=torch.ones(2, dtype=D), eta=0.3)
    assert torch.equal(out.loss, dpo(policy, previous, beta=0.3).loss)


@pytest.mark.method("dno", "reduction")
def test_dno_with_an_uninformative_label_is_symmetric():
    flipped = dno(POLICY.responses([1, 0]), REFERENCE.responses([1, 0]), soft_label=torch.tensor([0.5], dtype=D))
    assert dno(POLICY, REFERENCE, soft_label=torch.tensor([0.5], dtype=D)).loss.item() == pytest.approx(flipped.loss.item())


@pytest.mark.method("dno", "gradient")
def test_dno_gradient_in_the_margin_is_sigmoid_minus_label():
    policy = batch([[-1.0, -2.0]], requires_grad=True)
    out = dno(policy, REFERENCE, soft_label=torch.tensor([0.7], dtype=D), eta=0.1)
    grad, = torch.autograd.grad(out.loss.sum(), policy.sum)
    expected = 0.1 * (1 / (1 + math.exp(-0.15)) - 0.7)
    assert grad[0].tolist() == pytest.approx([expected, -expected])


# -- inpo ------------------------------------------------------------------------------------------------

@pytest.mark.method("inpo", "value")
def test_inpo_value_by_hand():
    # h = 1 - 0.25 (-0.5) - 0.75 (0.6) = 0.675; target 1/(2 eta) = 1
    out = inpo(POLICY, REFERENCE, previous=PREVIOUS, eta=0.5, tau_ratio=0.25)
    assert out.loss.item() == pytest.approx((0.675 - 1.0) ** 2)


@pytest.mark.method("inpo", "reduction")
def test_inpo_with_all_weight_on_the_reference_is_ipo():
    # tau/eta = 1: h = Delta_pi - Delta_ref, target 1/(2 eta): IPO with tau = eta on summed log-ratios.
    out = inpo(POLICY, REFERENCE, previous=PREVIOUS, eta=0.2, tau_ratio=1.0)
    assert out.loss.item() == pytest.approx(ipo(POLICY, REFERENCE, beta=0.2, length_normalize=False).loss.item())


@pytest.mark.method("inpo", "reduction")
def test_inpo_without_kl_is_ipo_against_the_previous_iterate():
    # The paper's "w/o KL" ablation, tau = 0.
    out = inpo(POLICY, REFERENCE, previous=PREVIOUS, eta=0.2, tau_ratio=0.0)
    assert out.loss.item() == pytest.approx(ipo(POLICY, PREVIOUS, beta=0.2, length_normalize=False).loss.item())


# -- mnpo ------------------------------------------------------------------------------------------------

@pytest.mark.method("mnpo", "value")
def test_mnpo_value_by_hand():
    older = pair(-0.8, -1.2)  # Delta = 0.4; pi_t's Delta = 0.6; mixture (0.5, 0.5): 0.5
    out = mnpo(POLICY, REFERENCE, history=[PREVIOUS, older], eta=0.5, ratio=0.25, history_weights=(1.0, 1.0))
    z = 1.0 - 0.25 * (-0.5) - 0.75 * 0.5
    assert out.loss.item() == pytest.approx((z - 1.0) ** 2)


@pytest.mark.method("mnpo", "reduction")
def test_mnpo_with_one_history_player_is_inpo():
    kwargs = dict(eta=0.5, ratio=0.3)
    single = mnpo(POLICY, REFERENCE, history=[PREVIOUS], history_weights=(1.0,), **kwargs)
    padded = mnpo(POLICY, REFERENCE, history=[PREVIOUS, pair(5.0, -5.0)], history_weights=(1.0, 0.0), **kwargs)
    expected = inpo(POLICY, REFERENCE, previous=PREVIOUS, eta=0.5, tau_ratio=0.3).loss
    assert torch.allclose(single.loss, expected, rtol=0, atol=1e-15)
    assert torch.allclose(padded.loss, expected, rtol=0, atol=1e-15)


@pytest.mark.method("mnpo", "value")
def test_mnpo_all_zero_weights_are_uniform_and_a_wrong_history_length_is_an_error():
    older = pair(-0.8, -1.2)
    uniform = mnpo(POLICY, REFERENCE, history=[PREVIOUS, older], history_weights=(0.0, 0.0))
    halves = mnpo(POLICY, REFERENCE, history=[PREVIOUS, older], history_weights=(0.5, 0.5))
    assert uniform.loss.item() == pytest.approx(halves.loss.item())
    with pytest.raises(ValueError, match="history"):
        mnpo(POLICY, REFERENCE, history=[PREVIOUS], history_weights=(1.0, 0.0))


# -- egpo ------------------------------------------------------------------------------------------------

@pytest.mark.method("egpo", "value")
def test_egpo_value_by_hand():
    # Delta_pi - Delta_ref = 1 - (-0.5) = 1.5; (p1 - p2)/beta = (0.8 - 0.3)/0.5 = 1
    out = egpo(POLICY, REFERENCE, win_rate=torch.tensor([[0.8, 0.3]], dtype=D), beta=0.5)
    assert out.loss.item() == pytest.approx(0.25)


@pytest.mark.method("egpo", "reduction")
def test_egpo_with_a_half_win_rate_gap_is_ipo():
    # (p1 - p2) = 1/2 makes the target 1/(2 beta): IPO's loss with tau = beta on summed log-ratios.
    out = egpo(POLICY, REFERENCE, win_rate=torch.tensor([[0.75, 0.25]], dtype=D), beta=0.2)
    assert out.loss.item() == pytest.approx(ipo(POLICY, REFERENCE, beta=0.2, length_normalize=False).loss.item())


@pytest.mark.method("egpo", "reduction")
def test_egpo_variance_reduced_target_is_online_ipo_v2():
    # y'' = y' (same untempered policy): p2 = P(y' > y') = 1/2, target (P(y > y') - 1/2)/beta.
    p = 0.9
    out = egpo(POLICY, REFERENCE, win_rate=torch.tensor([[p, 0.5]], dtype=D), beta=0.1)
    assert out.loss.item() == pytest.approx((1.5 - (p - 0.5) / 0.1) ** 2)


# -- nash_mp ---------------------------------------------------------------------------------------------

def nash_mp_inputs():
    policy = batch([[-1.0], [-2.0]], requires_grad=True)
    return policy, batch([[-1.5], [-1.0]]), batch([[-1.2], [-2.5]]), torch.tensor([[0.9], [0.2]], dtype=D)


@pytest.mark.method("nash_mp", "value")
def test_nash_mp_advantage_and_loss_by_hand():
    policy, reference, anchor, wins = nash_mp_inputs()
    out = nash_mp(policy, reference, previous=anchor, win_rate=wins, beta=0.1, eta=2.0)
    advantage = [0.9 - 0.5 - 0.1 * 0.5 - 0.2 / 2, 0.2 - 0.5 - 0.1 * (-1.0) - 0.5 / 2]
    assert out.rewards.flatten().tolist() == pytest.approx(advantage)
    assert out.loss.tolist() == pytest.approx([advantage[0] * 1.0, advantage[1] * 2.0])


@pytest.mark.method("nash_mp", "gradient")
def test_nash_mp_gradient_is_minus_the_detached_advantage():
    policy, reference, anchor, wins = nash_mp_inputs()
    out = nash_mp(policy, reference, previous=anchor, win_rate=wins, beta=0.1, eta=2.0)
    grad, = torch.autograd.grad(out.loss.sum(), policy.sum)
    assert torch.allclose(grad, -out.rewards)


@pytest.mark.method("nash_mp", "reduction")
def test_nash_mp_at_its_anchor_is_nash_md_policy_gradient():
    # At the anchor (pi = pi_k) the proximal term vanishes: REINFORCE with baseline 1/2 on
    # P(y > y') - beta log pi/pi_ref, Nash-MD-PG's gradient (online.md §5a).
    policy, reference, _, wins = nash_mp_inputs()
    out = nash_mp(policy, reference, previous=policy.detach(), win_rate=wins, beta=0.1, eta=1.0)
    grad, = torch.autograd.grad(out.loss.sum(), policy.sum)
    assert torch.allclose(grad, -(wins - 0.5 - 0.1 * (policy.sum.detach() - reference.sum)))


# -- apo, online_dpo -------------------------------------------------------------------------------------

@pytest.mark.method("apo", "value")
@pytest.mark.method("online_dpo", "value")
def test_apo_and_online_dpo_values_by_hand():
    # beta (Delta_w - Delta_l) = 0.1 (0.5 + 1) = 0.15
    for fn in (apo, online_dpo):
        assert fn(POLICY, REFERENCE, beta=0.1).loss.item() == pytest.approx(softplus(-0.15))


@pytest.mark.method("apo", "reduction")
@pytest.mark.method("online_dpo", "reduction")
def test_apo_and_online_dpo_are_dpo_per_iteration():
    # Their difference from DPO is the schedule (momentum; fresh on-policy pairs with a fixed
    # reference), not the loss; tests/test_online_loop.py checks alpha = 0 leaves weights unchanged.
    policy, reference = batch([[-1.0, -2.0], [-3.0, -0.5]]), batch([[-1.5, -1.0], [-2.0, -2.0]])
    for fn in (apo, online_dpo):
        assert torch.equal(fn(policy, reference, beta=0.4).loss, dpo(policy, reference, beta=0.4).loss)


# -- ofs_dpo ---------------------------------------------------------------------------------------------

@pytest.mark.method("ofs_dpo", "value")
def test_ofs_dpo_value_by_hand():
    slow = pair(-1.2, -1.4)  # fast over slow: (0.2, -0.6), margin 0.8; beta 0.5 -> 0.4
    out = ofs_dpo(POLICY, REFERENCE, slow=slow, beta=0.5, chase_weight=2.0)
    assert out.loss.item() == pytest.approx(softplus(-0.75) + 2.0 * softplus(-0.4))
    assert out.metrics["chase_loss"].item() == pytest.approx(softplus(-0.4))


@pytest.mark.method("ofs_dpo", "reduction")
def test_ofs_dpo_without_chasing_is_dpo_for_the_module():
    slow = pair(-1.2, -1.4)
    assert torch.equal(ofs_dpo(POLICY, REFERENCE, slow=slow, beta=0.5, chase_weight=0.0).loss,
                       dpo(POLICY, REFERENCE, beta=0.5).loss)


@pytest.mark.method("ofs_dpo", "gradient")
def test_ofs_dpo_chasing_adds_gradient_where_dpo_has_almost_none():
    # A pair DPO already separates widely: its gradient is ~0, the chase against an equally good
    # slow module is not (sigmoid(0) = 1/2).
    policy = batch([[0.0, -40.0]], requires_grad=True)
    reference = batch([[0.0, 0.0]])
    slow = batch([[0.0, -40.0]])
    dpo_grad, = torch.autograd.grad(dpo(policy, reference, beta=1.0).loss.sum(), policy.sum)
    ofs_grad, = torch.autograd.grad(ofs_dpo(policy, reference, slow=slow, beta=1.0).loss.sum(), policy.sum)
    assert dpo_grad.abs().max() < 1e-15
    assert ofs_grad[0].tolist() == pytest.approx([-0.5, 0.5])
