"""Unit tests of the baseline losses: exo_pair, nca_pair, bco_pair, sppo_hard, aot, apo_zero, apo_down,
discopop, wpo, rpo.

Every expected number is worked by hand with `math` from the formula restated in the method's
docstring (with the paper's equation), never by calling the method under test. Reductions call the
registered parent (dpo, cdpo, ipo, kto, sft) on the same records. All tensors are float64.

The worked example (as in test_methods_core.py, offline.md §0 notation):
    lp(y_w)  = -3.0,  lp(y_l)  = -5.0      policy sums
    lpr(y_w) = -4.0,  lpr(y_l) = -4.5      reference sums
    |y_w| = 2,  |y_l| = 4,  beta = 0.5
hence
    Delta_w = 1,  Delta_l = -0.5,  r_w = beta Delta_w = 0.5,  r_l = -0.25,  h = r_w - r_l = 0.75
    avg(y_w) = -1.5,  avg(y_l) = -1.25
"""
from __future__ import annotations

import math

import pytest
import torch

from handworked import F64, call, ell, flat, pair, random_pairs, sigmoid
from preftune.methods import build_objective, get
from preftune.methods.state import RunningMean
from preftune.records import Logps

BETA = 0.5
R_W, R_L, H = 0.5, -0.25, 0.75


def example(requires_grad: bool = False) -> tuple[Logps, Logps]:
    return pair(-3.0, -5.0, (2.0, 4.0), requires_grad), pair(-4.0, -4.5, (2.0, 4.0))


def exo_value(h: float, eps: float) -> float:
    """Eq. 16, K = 2: s log(s/(1-e)) + (1-s) log((1-s)/e), s = sigmoid(h)."""
    s = sigmoid(h)
    return s * math.log(s / (1 - eps)) + (1 - s) * math.log((1 - s) / eps)


def lrml(h: float, tau: float) -> float:
    """DiscoPOP Eq. 5: (1 - g) log(1 + e^-h) + g e^-h, g = sigmoid(h / tau)."""
    g = sigmoid(h / tau)
    return (1 - g) * ell(h) + g * math.exp(-h)


# --------------------------------------------------------------------------- hand-worked values

VALUE_CASES = [
    # EXO, e = 0.1: s = sigmoid(0.75) = 0.67918; 0.67918 log(0.67918/0.9) + 0.32082 log(0.32082/0.1) = 0.18271.
    pytest.param("exo_pair", dict(beta=BETA, label_smoothing=0.1), exo_value(H, 0.1),
                 marks=pytest.mark.method("exo_pair", "value"), id="exo_pair-e0.1"),
    # EXO with the default e = 1e-3: 0.67918 log(0.67918/0.999) + 0.32082 log(320.82) = 1.58877.
    pytest.param("exo_pair", dict(beta=BETA), exo_value(H, 1e-3),
                 marks=pytest.mark.method("exo_pair", "value"), id="exo_pair-default-e"),
    # NCA: l(r_w) + l(-r_w)/2 + l(-r_l)/2 = l(0.5) + l(-0.5)/2 + l(0.25)/2.
    pytest.param("nca_pair", dict(beta=BETA), ell(0.5) + 0.5 * ell(-0.5) + 0.5 * ell(0.25),
                 marks=pytest.mark.method("nca_pair", "value"), id="nca_pair"),
    # BCO, one-example batch: delta = mean(0.5, -0.25) = 0.125; l(0.5 - 0.125) + l(0.125 + 0.25) = 2 l(0.375).
    pytest.param("bco_pair", dict(beta=BETA), 2 * ell(0.375),
                 marks=pytest.mark.method("bco_pair", "value"), id="bco_pair-batch-shift"),
    # BCO with a fixed delta = 0: l(0.5) + l(0.25).
    pytest.param("bco_pair", dict(beta=BETA, reward_shift=0.0), ell(0.5) + ell(0.25),
                 marks=pytest.mark.method("bco_pair", "value"), id="bco_pair-no-shift"),
    # BCO with delta = 1: l(0.5 - 1) + l(1 + 0.25) = l(-0.5) + l(1.25).
    pytest.param("bco_pair", dict(beta=BETA, reward_shift=1.0), ell(-0.5) + ell(1.25),
                 marks=pytest.mark.method("bco_pair", "value"), id="bco_pair-shift-1"),
    # SPPO hard, beta 0.5: targets +-1/(2 beta) = +-1: (1 - 1)^2 + (-0.5 + 1)^2 = 0.25.
    pytest.param("sppo_hard", dict(beta=0.5), 0.25,
                 marks=pytest.mark.method("sppo_hard", "value"), id="sppo_hard"),
    # SPPO hard, beta 0.25: targets +-2: (1 - 2)^2 + (-0.5 + 2)^2 = 1 + 2.25 = 3.25.
    pytest.param("sppo_hard", dict(beta=0.25), 3.25,
                 marks=pytest.mark.method("sppo_hard", "value"), id="sppo_hard-beta0.25"),
    # AOT on a batch of one: the sorts are trivial, so it is DPO: l(h) = l(0.75).
    pytest.param("aot", dict(beta=BETA), ell(H), marks=pytest.mark.method("aot", "value"), id="aot-batch-of-one"),
    # AOT unpaired, batch of one: u = Delta_w = 1, v = Delta_l = -0.5: l(0.5 * 1.5) = l(0.75).
    pytest.param("aot", dict(beta=BETA, paired=False), ell(H),
                 marks=pytest.mark.method("aot", "value"), id="aot-unpaired-batch-of-one"),
    # APO-zero (Eq. 7): (1 - sigmoid(0.5)) + sigmoid(-0.25) = 0.37754 + 0.43782.
    pytest.param("apo_zero", dict(beta=BETA), (1 - sigmoid(0.5)) + sigmoid(-0.25),
                 marks=pytest.mark.method("apo_zero", "value"), id="apo_zero"),
    # APO-down (Eq. 8): sigmoid(0.5) + (1 - sigmoid(0.75)) = 0.62246 + 0.32082.
    pytest.param("apo_down", dict(beta=BETA), sigmoid(0.5) + (1 - sigmoid(0.75)),
                 marks=pytest.mark.method("apo_down", "value"), id="apo_down"),
    # DiscoPOP, tau = 0.05: g = sigmoid(15) = 1 - 3.06e-7, nearly all exponential: e^-0.75 = 0.47237.
    pytest.param("discopop", dict(beta=BETA, tau=0.05), lrml(H, 0.05),
                 marks=pytest.mark.method("discopop", "value"), id="discopop-tau0.05"),
    # DiscoPOP, tau = 1: g = sigmoid(0.75) = 0.67918: 0.32082 l(0.75) + 0.67918 e^-0.75.
    pytest.param("discopop", dict(beta=BETA, tau=1.0), (1 - sigmoid(0.75)) * ell(0.75) + sigmoid(0.75) * math.exp(-0.75),
                 marks=pytest.mark.method("discopop", "value"), id="discopop-tau1"),
    # WPO: weight exp(avg_w + avg_l) = exp(-1.5 - 1.25) = exp(-2.75) = 0.06393; loss 0.06393 l(0.75).
    pytest.param("wpo", dict(beta=BETA), math.exp(-2.75) * ell(H),
                 marks=pytest.mark.method("wpo", "value"), id="wpo"),
    # WPO with label smoothing 0.1: exp(-2.75) [0.9 l(0.75) + 0.1 l(-0.75)].
    pytest.param("wpo", dict(beta=BETA, label_smoothing=0.1), math.exp(-2.75) * (0.9 * ell(H) + 0.1 * ell(-H)),
                 marks=pytest.mark.method("wpo", "value"), id="wpo-label-smoothing"),
    # RPO, alpha 1: l(0.75) + NLL(y_w)/|y_w| = l(0.75) + 3/2.
    pytest.param("rpo", dict(beta=BETA), ell(H) + 1.5, marks=pytest.mark.method("rpo", "value"), id="rpo"),
    # RPO, alpha 0.5: l(0.75) + 0.5 * 1.5.
    pytest.param("rpo", dict(beta=BETA, alpha=0.5), ell(H) + 0.75,
                 marks=pytest.mark.method("rpo", "value"), id="rpo-alpha0.5"),
]


@pytest.mark.parametrize("name, params, expected", VALUE_CASES)
def test_hand_worked_value(name, params, expected):
    policy, reference = example()
    loss = call(name, policy, reference, **params).loss
    assert loss.shape == (1,) and loss.dtype == F64
    assert loss.item() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.method(n, "value"), id=n)
    for n in ("exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "apo_zero", "apo_down", "discopop", "wpo", "rpo")])
def test_logged_rewards_margin_and_accuracy(name):
    # offline.md §0 requirement 3: rewards beta * Delta_y = 0.5 * (1, -0.5), margin h = 0.75, accuracy 1.
    policy, reference = example()
    out = call(name, policy, reference, beta=BETA)
    assert out.rewards[0].tolist() == pytest.approx([R_W, R_L], abs=1e-12)
    assert out.metrics["margin"].item() == pytest.approx(H, abs=1e-12)
    assert out.metrics["accuracy"].item() == 1.0


@pytest.mark.method("aot", "value")
def test_aot_couples_sorted_quantiles_not_pairs():
    # Two pairs. A: policy (-3, -5), reference (-4, -4.5): u = lp_w - lp_l = 2, v = 0.5.
    #            B: policy (-2, -1), reference (-1, -3):   u = -1,            v = 2.
    # Paired: sorted u = (-1, 2), sorted v = (0.5, 2): z = 0.5 * (-1.5, 0) -> l(-0.75), l(0) = log 2.
    # DPO pairs them as they come: 0.5 * (2 - 0.5) = 0.75 and 0.5 * (-1 - 2) = -1.5.
    policy, reference = pair([-3.0, -2.0], [-5.0, -1.0]), pair([-4.0, -1.0], [-4.5, -3.0])
    paired = call("aot", policy, reference, beta=BETA).loss
    assert paired.tolist() == pytest.approx([ell(-0.75), math.log(2)], abs=1e-12)
    assert call("dpo", policy, reference, beta=BETA).loss.tolist() == pytest.approx([ell(0.75), ell(-1.5)], abs=1e-12)
    # Unpaired: Delta_w = (1, -1), Delta_l = (-0.5, 2); sorted (-1, 1) and (-0.5, 2): z = 0.5 * (-0.5, -1).
    unpaired = call("aot", policy, reference, beta=BETA, paired=False).loss
    assert unpaired.tolist() == pytest.approx([ell(-0.25), ell(-0.5)], abs=1e-12)


@pytest.mark.method("bco_pair", "value")
def test_bco_running_shift_accumulates_across_batches():
    # Batch 1 is the worked example: rewards (0.5, -0.25), running mean 0.125 -> 2 l(0.375) as in VALUE_CASES.
    # Batch 2: policy (-1, -2), reference (-2, -1): rewards 0.5 * (1, -1) = (0.5, -0.5); the running mean over
    # all four rewards (0.5, -0.25, 0.5, -0.5) is 0.0625, so L = l(0.5 - 0.0625) + l(0.0625 + 0.5).
    state = RunningMean()
    policy, reference = example()
    first = call("bco_pair", policy, reference, beta=BETA, state=state)
    assert first.loss.item() == pytest.approx(2 * ell(0.375), abs=1e-12)
    second = call("bco_pair", pair(-1.0, -2.0), pair(-2.0, -1.0), beta=BETA, state=state)
    assert second.loss.item() == pytest.approx(ell(0.4375) + ell(0.5625), abs=1e-12)
    assert second.metrics["reward_shift"].item() == pytest.approx(0.0625, abs=1e-15)
    assert (state.total, state.count) == (pytest.approx(0.25, abs=1e-15), 4.0)
    # Frozen (evaluation): the state is read, not moved; batch 2's own mean (0) would give l(0.5) + l(0.5).
    state.frozen = True
    again = call("bco_pair", pair(-1.0, -2.0), pair(-2.0, -1.0), beta=BETA, state=state)
    assert again.loss.item() == pytest.approx(second.loss.item(), abs=1e-15) and state.count == 4.0


def test_exo_pair_rejects_label_smoothing_outside_the_open_interval():
    policy, reference = example()
    for eps in (0.0, 0.6):
        with pytest.raises(ValueError, match=r"\(0, 0.5\]"):
            call("exo_pair", policy, reference, label_smoothing=eps)


def test_losses_are_per_example_except_the_batch_level_ones():
    # aot sorts the batch and bco_pair shifts by a batch statistic; every other loss is row by row.
    policy, reference = random_pairs(6, seed=3)
    for name in ("exo_pair", "nca_pair", "sppo_hard", "apo_zero", "apo_down", "discopop", "wpo", "rpo"):
        batched = call(name, policy, reference).loss
        rows = torch.cat([call(name, policy.select([i]), reference.select([i])).loss for i in range(6)])
        torch.testing.assert_close(batched, rows, rtol=0, atol=1e-12, msg=name)


# --------------------------------------------------------------------------- gradients

def _grad(name, params, policy_sums=((-3.0, -5.0),), reference_sums=((-4.0, -4.5),), lengths=(2.0, 4.0)):
    policy = Logps(sum=torch.tensor(policy_sums, dtype=F64, requires_grad=True),
                   length=torch.tensor(lengths, dtype=F64).expand(len(policy_sums), 2).clone())
    reference = Logps(sum=torch.tensor(reference_sums, dtype=F64), length=policy.length)
    call(name, policy, reference, **params).loss.sum().backward()
    return policy.sum.grad


def _discopop_slope(h: float, tau: float) -> float:
    """d/dh of Eq. 5: g'(e^-h - l(h)) - (1 - g) sigmoid(-h) - g e^-h, g' = g (1 - g) / tau."""
    g = sigmoid(h / tau)
    return g * (1 - g) / tau * (math.exp(-h) - ell(h)) - (1 - g) * sigmoid(-h) - g * math.exp(-h)


_S = sigmoid(H)
_C = math.log(0.9 / 0.1)
GRADIENT_CASES = [
    # EXO: dL/dh = s(1-s)(h - log((1-e)/e)), dh/dlp_w = beta = -dh/dlp_l.
    pytest.param("exo_pair", dict(beta=BETA, label_smoothing=0.1),
                 (BETA * _S * (1 - _S) * (H - _C), -BETA * _S * (1 - _S) * (H - _C)),
                 marks=pytest.mark.method("exo_pair", "gradient"), id="exo_pair"),
    # NCA: dL/dr_w = -sigmoid(-r_w) + sigmoid(r_w)/2, dL/dr_l = sigmoid(r_l)/2; dr/dlp = beta.
    pytest.param("nca_pair", dict(beta=BETA),
                 (BETA * (-sigmoid(-R_W) + 0.5 * sigmoid(R_W)), BETA * 0.5 * sigmoid(R_L)),
                 marks=pytest.mark.method("nca_pair", "gradient"), id="nca_pair"),
    # BCO, batch shift delta = 0.125 detached: dL/dr_w = -sigmoid(-(r_w - delta)), dL/dr_l = sigmoid(r_l - delta).
    pytest.param("bco_pair", dict(beta=BETA),
                 (-BETA * sigmoid(-0.375), BETA * sigmoid(-0.375)),
                 marks=pytest.mark.method("bco_pair", "gradient"), id="bco_pair"),
    # SPPO hard, targets +-1: 2 (Delta_w - 1) = 0 and 2 (Delta_l + 1) = 1.
    pytest.param("sppo_hard", dict(beta=0.5), (0.0, 1.0),
                 marks=pytest.mark.method("sppo_hard", "gradient"), id="sppo_hard"),
    # APO-zero: -beta sigmoid'(r_w), +beta sigmoid'(r_l).
    pytest.param("apo_zero", dict(beta=BETA),
                 (-BETA * sigmoid(R_W) * sigmoid(-R_W), BETA * sigmoid(R_L) * sigmoid(-R_L)),
                 marks=pytest.mark.method("apo_zero", "gradient"), id="apo_zero"),
    # APO-down: beta [sigmoid'(r_w) - sigmoid'(h)], +beta sigmoid'(h).
    pytest.param("apo_down", dict(beta=BETA),
                 (BETA * (sigmoid(R_W) * sigmoid(-R_W) - _S * (1 - _S)), BETA * _S * (1 - _S)),
                 marks=pytest.mark.method("apo_down", "gradient"), id="apo_down"),
    # DiscoPOP, tau 1: beta f'(h), -beta f'(h).
    pytest.param("discopop", dict(beta=BETA, tau=1.0),
                 (BETA * _discopop_slope(H, 1.0), -BETA * _discopop_slope(H, 1.0)),
                 marks=pytest.mark.method("discopop", "gradient"), id="discopop"),
    # WPO: the detached weight exp(-2.75) times DPO's (-beta sigmoid(-h), +beta sigmoid(-h)).
    pytest.param("wpo", dict(beta=BETA),
                 (-math.exp(-2.75) * BETA * sigmoid(-H), math.exp(-2.75) * BETA * sigmoid(-H)),
                 marks=pytest.mark.method("wpo", "gradient"), id="wpo"),
    # RPO: DPO's gradient plus alpha * d(-lp_w/|y_w|)/dlp_w = -1/2 on the chosen response.
    pytest.param("rpo", dict(beta=BETA), (-BETA * sigmoid(-H) - 0.5, BETA * sigmoid(-H)),
                 marks=pytest.mark.method("rpo", "gradient"), id="rpo"),
]


@pytest.mark.parametrize("name, params, expected", GRADIENT_CASES)
def test_gradient_on_sums_matches_analytic(name, params, expected):
    assert _grad(name, params)[0].tolist() == pytest.approx(expected, abs=1e-12)


@pytest.mark.method("aot", "gradient")
def test_aot_gradient_goes_to_the_entry_each_sorted_value_came_from():
    # The two-pair batch of test_aot_couples_sorted_quantiles_not_pairs: sorted u = (u_B, u_A) with terms
    # z_0 = -0.75 (u_B against v_A) and z_1 = 0 (u_A against v_B). dl/dz = -sigmoid(-z), dz/du = beta, and
    # u = lp_w - lp_l, so pair A gets (-beta sigmoid(0), +beta sigmoid(0)) and pair B (-beta sigmoid(0.75), ...).
    grad = _grad("aot", dict(beta=BETA), ((-3.0, -5.0), (-2.0, -1.0)), ((-4.0, -4.5), (-1.0, -3.0)), (1.0, 1.0))
    a, b = BETA * sigmoid(0.0), BETA * sigmoid(0.75)
    torch.testing.assert_close(grad, torch.tensor([[-a, a], [-b, b]], dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.method("bco_pair", "gradient")
def test_bco_shift_is_detached_so_each_reward_gets_its_own_classifier_gradient():
    # With delta = the batch mean (0.125 here) treated as a constant, d/dlp_w depends on r_w and delta only;
    # if delta were differentiated the two gradients would also carry -/+ (d/d delta) / 2 terms.
    grad = _grad("bco_pair", dict(beta=BETA))
    assert grad[0, 0].item() == pytest.approx(-BETA * sigmoid(-(R_W - 0.125)), abs=1e-12)
    assert grad[0, 1].item() == pytest.approx(BETA * sigmoid(R_L - 0.125), abs=1e-12)


# --------------------------------------------------------------------------- reductions to the parent

@pytest.mark.method("exo_pair", "reduction")
@pytest.mark.parametrize("eps", [0.1, 1e-3, 1e-12])
def test_exo_gradient_is_dpos_reweighted_by_a_positive_factor_below_its_target(eps):
    # dEXO/dh = s(1-s)(h - c) = [s (c - h)] * dDPO/dh with dDPO/dh = -sigmoid(-h) = -(1-s), c = log((1-e)/e).
    # The factor s (c - h) is positive for h < c: same direction as DPO; as e -> 0, c -> inf and EXO pushes
    # everywhere DPO does (its target moves to infinity), with weight growing like log(1/e).
    h = torch.linspace(-6, 6, 49, dtype=F64)
    policy = pair(h, torch.zeros_like(h), requires_grad=True)
    call("exo_pair", policy, flat(policy), beta=1.0, label_smoothing=eps).loss.sum().backward()
    exo_grad = policy.sum.grad[:, 0].clone()
    policy.sum.grad = None
    call("dpo", policy, flat(policy), beta=1.0).loss.sum().backward()
    dpo_grad = policy.sum.grad[:, 0]
    c = math.log((1 - eps) / eps)
    torch.testing.assert_close(exo_grad, torch.sigmoid(h) * (c - h) * dpo_grad, rtol=1e-12, atol=1e-15)
    assert bool(((exo_grad < 0) == (dpo_grad < 0))[h < c].all())


@pytest.mark.method("exo_pair", "reduction")
def test_exo_is_the_reverse_kl_of_cdpo():
    # cDPO (1-e) l(h) + e l(-h) = KL(label || q) + H(label); EXO = KL(q || label). Both vanish (after removing
    # the entropy) exactly where q = label, i.e. h* = log((1-e)/e); elsewhere the two KLs differ.
    eps = 0.2
    entropy = -(1 - eps) * math.log(1 - eps) - eps * math.log(eps)
    h_star = math.log((1 - eps) / eps)
    policy = pair(2 * h_star, 0.0)  # beta 0.5: h = h*
    assert call("exo_pair", policy, flat(policy), beta=0.5, label_smoothing=eps).loss.item() == pytest.approx(0, abs=1e-15)
    assert call("cdpo", policy, flat(policy), beta=0.5, label_smoothing=eps).loss.item() == pytest.approx(entropy, abs=1e-12)
    # At h = 0, q = (1/2, 1/2): KL(q || label) = -log 2 - (log(1-e) + log e)/2; KL(label || q) = log 2 - H(label).
    at_zero = pair(0.0, 0.0)
    exo0 = call("exo_pair", at_zero, flat(at_zero), label_smoothing=eps).loss.item()
    cdpo0 = call("cdpo", at_zero, flat(at_zero), label_smoothing=eps).loss.item()
    assert exo0 == pytest.approx(-math.log(2) - 0.5 * (math.log(1 - eps) + math.log(eps)), abs=1e-12)
    assert cdpo0 - entropy == pytest.approx(math.log(2) - entropy, abs=1e-12)


@pytest.mark.method("nca_pair", "reduction")
def test_nca_at_the_reference_moves_like_half_of_dpo():
    # At pi = pi_ref (r = 0): dNCA/dr_w = -1/2 + 1/4 = -1/4 and dNCA/dr_l = +1/4, i.e. exactly half of DPO's
    # (-1/2, +1/2): both start in the same direction. Away from it NCA is not a function of the margin.
    policy, _ = random_pairs(5, seed=1, requires_grad=True)
    reference = Logps(sum=policy.sum.detach().clone(), length=policy.length)
    call("nca_pair", policy, reference, beta=0.3).loss.sum().backward()
    nca = policy.sum.grad.clone()
    policy.sum.grad = None
    call("dpo", policy, reference, beta=0.3).loss.sum().backward()
    torch.testing.assert_close(nca, 0.5 * policy.sum.grad, rtol=0, atol=1e-15)
    assert call("nca_pair", policy, reference).loss.detach().tolist() == pytest.approx([2 * math.log(2)] * 5, abs=1e-12)


@pytest.mark.method("nca_pair", "reduction")
def test_nca_optimises_absolute_not_relative_rewards():
    # DPO only sees the margin: shifting both log-ratios by +1 leaves it unchanged. NCA does not:
    # raising both rewards lowers l(r_w) and raises l(-r_w), l(-r_l) (the paper's "absolute likelihood").
    policy, reference = example()
    shifted = pair(-2.0, -4.0, (2.0, 4.0))
    assert call("dpo", shifted, reference, beta=BETA).loss.item() == pytest.approx(call("dpo", policy, reference, beta=BETA).loss.item(), abs=1e-15)
    expected = ell(1.0) + 0.5 * ell(-1.0) + 0.5 * ell(-0.25)  # r = (1, 0.25)
    assert call("nca_pair", shifted, reference, beta=BETA).loss.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.method("bco_pair", "reduction")
def test_bco_upper_bounds_dpo_for_every_shift_and_the_bound_closes_when_both_are_classified():
    # Theorem 1 of the paper: l(r_w - d) + l(d - r_l) >= l(r_w - r_l) for every d, because
    # sigmoid(a) sigmoid(b) <= sigmoid(a + b). The gap is log(1 + (e^-a + e^-b)/(1 + e^-(a+b))) -> 0 as a, b -> inf.
    policy, reference = random_pairs(40, seed=2)
    dpo_loss = call("dpo", policy, reference, beta=0.7).loss
    for shift in (-3.0, -0.5, 0.0, 0.4, 2.0):
        bco_loss = call("bco_pair", policy, reference, beta=0.7, reward_shift=shift).loss
        assert bool((bco_loss >= dpo_loss - 1e-15).all())
    confident = pair(40.0, -40.0)  # beta 1, flat reference: r_w = 40, r_l = -40, a = b = 40 with d = 0
    gap = (call("bco_pair", confident, flat(confident), beta=1.0, reward_shift=0.0).loss
           - call("dpo", confident, flat(confident), beta=1.0).loss).item()
    assert 0 <= gap < 1e-16 + 2 * math.exp(-40)


@pytest.mark.method("bco_pair", "reduction")
def test_bco_without_state_shifts_by_the_batch_mean_and_a_fixed_shift_by_itself():
    policy, reference = random_pairs(7, seed=4)
    rewards = 0.3 * (policy.sum - reference.sum)
    batch = call("bco_pair", policy, reference, beta=0.3)
    fixed = call("bco_pair", policy, reference, beta=0.3, reward_shift=float(rewards.mean()))
    torch.testing.assert_close(batch.loss, fixed.loss, rtol=0, atol=1e-14)
    assert batch.metrics["reward_shift"].tolist() == pytest.approx([float(rewards.mean())] * 7, abs=1e-15)


@pytest.mark.method("sppo_hard", "reduction")
def test_sppo_hard_is_half_ipo_plus_a_penalty_on_the_total_log_ratio():
    # (Dw - t)^2 + (Dl + t)^2 = (1/2)(Dw - Dl - 2t)^2 + (1/2)(Dw + Dl)^2 with t = 1/(2 beta); IPO on sums with
    # target 1/(2 tau) = 2t = 1/beta has tau = beta/2. When Dw + Dl = 0 SPPO-hard is exactly half of that IPO.
    policy, reference = random_pairs(9, seed=5)
    beta = 0.4
    ratios = policy.sum - reference.sum
    ipo = call("ipo", policy, reference, beta=beta / 2, length_normalize=False).loss
    sppo = call("sppo_hard", policy, reference, beta=beta).loss
    torch.testing.assert_close(sppo, 0.5 * ipo + 0.5 * ratios.sum(-1) ** 2, rtol=1e-12, atol=1e-12)
    balanced = pair(1.3, -1.3)
    assert call("sppo_hard", balanced, flat(balanced), beta=beta).loss.item() == pytest.approx(
        0.5 * call("ipo", balanced, flat(balanced), beta=beta / 2, length_normalize=False).loss.item(), abs=1e-12)


@pytest.mark.method("aot", "reduction")
def test_aot_equals_dpo_or_cdpo_when_the_orders_agree():
    # Policy and reference margins in the same order (here the reference sorted like the policy): sorting
    # changes nothing, so AOT is DPO (cDPO with label smoothing) example for example, after sorting both.
    policy, reference = random_pairs(8, seed=6)
    order = torch.argsort(policy.sum[:, 0] - policy.sum[:, 1])
    policy = policy.select(order)
    ref_margin = torch.sort(reference.sum[:, 0] - reference.sum[:, 1]).values
    comonotone = Logps(sum=torch.stack([ref_margin, torch.zeros_like(ref_margin)], -1), length=reference.length)
    for eps, parent in ((0.0, "dpo"), (0.2, "cdpo")):
        params = dict(label_smoothing=eps) if eps else {}
        expected = call(parent, policy, comonotone, beta=BETA, **params).loss
        torch.testing.assert_close(call("aot", policy, comonotone, beta=BETA, label_smoothing=eps).loss, expected,
                                   rtol=0, atol=1e-12)


@pytest.mark.method("aot", "reduction")
def test_aot_batch_loss_is_invariant_to_shuffling_policy_values_and_dpo_is_not():
    policy, reference = random_pairs(8, seed=7)
    shuffled = Logps(sum=policy.sum[torch.randperm(8, generator=torch.Generator().manual_seed(0))], length=policy.length)
    assert call("aot", shuffled, reference).loss.sum().item() == pytest.approx(call("aot", policy, reference).loss.sum().item(), abs=1e-12)
    assert call("dpo", shuffled, reference).loss.sum().item() != pytest.approx(call("dpo", policy, reference).loss.sum().item(), abs=1e-6)


@pytest.mark.method("apo_zero", "reduction")
def test_apo_zero_is_kto_with_zero_reference_point_on_both_responses():
    # KTO (its Eq. 8) with no mismatched completion has z0 = 0: desirable 1 - sigmoid(beta r), undesirable
    # 1 - sigmoid(-beta r) = sigmoid(beta r). Chosen as desirable plus rejected as undesirable is APO-zero.
    policy, reference = random_pairs(10, seed=8)
    kto = get("kto").fn
    chosen = kto(policy.responses([0]), reference.responses([0]), label=torch.ones(10, dtype=torch.bool), beta=0.3).loss
    rejected = kto(policy.responses([1]), reference.responses([1]), label=torch.zeros(10, dtype=torch.bool), beta=0.3).loss
    torch.testing.assert_close(call("apo_zero", policy, reference, beta=0.3).loss, chosen + rejected, rtol=0, atol=1e-15)


@pytest.mark.method("apo_zero", "reduction")
@pytest.mark.method("apo_down", "reduction")
def test_anchored_gradients_at_the_reference():
    # At pi = pi_ref every sigmoid' is 1/4. APO-zero: (-beta/4, +beta/4), exactly half of DPO's (-beta/2, +beta/2).
    # APO-down: chosen beta/4 - beta/4 = 0 (its two pulls cancel), rejected +beta/4: both likelihoods are
    # anchored to go down, the rejected first. The chosen anchor terms are complements (they sum to 1).
    policy, _ = random_pairs(4, seed=9, requires_grad=True)
    reference = Logps(sum=policy.sum.detach().clone(), length=policy.length)
    beta = 0.6
    call("apo_zero", policy, reference, beta=beta).loss.sum().backward()
    torch.testing.assert_close(policy.sum.grad, torch.tensor([[-beta / 4, beta / 4]] * 4, dtype=F64), rtol=0, atol=1e-15)
    policy.sum.grad = None
    call("apo_down", policy, reference, beta=beta).loss.sum().backward()
    torch.testing.assert_close(policy.sum.grad, torch.tensor([[0.0, beta / 4]] * 4, dtype=F64), rtol=0, atol=1e-15)
    moved, ref = random_pairs(6, seed=10)
    r = beta * (moved.sum - ref.sum)
    total = call("apo_zero", moved, ref, beta=beta).loss + call("apo_down", moved, ref, beta=beta).loss
    torch.testing.assert_close(total, 1 + torch.sigmoid(r[:, 1]) + 1 - torch.sigmoid(r[:, 0] - r[:, 1]),
                               rtol=0, atol=1e-15)


@pytest.mark.method("discopop", "reduction")
def test_discopop_gate_limits_are_the_logistic_and_exponential_losses():
    # g = sigmoid(h / tau): tau -> 0 makes g a step, so L -> l(h) for h < 0 (gate 0, DPO's loss) and
    # e^-h for h > 0 (gate 1, the exponential loss); tau -> inf makes g = 1/2, the even mix. At h = 0 the mix
    # is always (log 2 + 1)/2. beta 1 and a flat reference, so h = lp_w - lp_l.
    h = torch.tensor([-4.0, -1.0, -0.3, 0.3, 1.0, 4.0], dtype=F64)
    policy = pair(h, torch.zeros_like(h))
    step = call("discopop", policy, flat(policy), beta=1.0, tau=1e-6).loss
    expected = [ell(x) if x < 0 else math.exp(-x) for x in h.tolist()]
    assert step.tolist() == pytest.approx(expected, abs=1e-12)
    even = call("discopop", policy, flat(policy), beta=1.0, tau=1e13).loss
    assert even.tolist() == pytest.approx([0.5 * (ell(x) + math.exp(-x)) for x in h.tolist()], abs=1e-9)
    origin = pair(0.0, 0.0)
    for tau in (0.05, 1.0, 30.0):
        assert call("discopop", origin, flat(origin), tau=tau).loss.item() == pytest.approx(0.5 * (math.log(2) + 1), abs=1e-15)


@pytest.mark.method("wpo", "reduction")
def test_wpo_is_dpo_times_a_detached_weight_and_dpo_when_the_policy_is_certain():
    policy, reference = random_pairs(6, seed=11, requires_grad=True)
    weight = torch.exp(policy.sum.detach()[:, 0] / policy.length[:, 0] + policy.sum.detach()[:, 1] / policy.length[:, 1])
    for eps, parent in ((0.0, "dpo"), (0.1, "cdpo")):
        params = dict(label_smoothing=eps) if eps else {}
        torch.testing.assert_close(call("wpo", policy, reference, beta=0.2, label_smoothing=eps).loss,
                                   weight * call(parent, policy, reference, beta=0.2, **params).loss, rtol=1e-12, atol=0)
    # Gradient: the weight is a constant, so the gradient is weight * DPO's gradient.
    call("wpo", policy, reference, beta=0.2).loss.sum().backward()
    wpo_grad = policy.sum.grad.clone()
    policy.sum.grad = None
    call("dpo", policy, reference, beta=0.2).loss.sum().backward()
    torch.testing.assert_close(wpo_grad, weight.unsqueeze(-1) * policy.sum.grad, rtol=1e-12, atol=0)
    # A policy certain of both responses (log-probs 0) weighs every pair 1: plain DPO.
    certain = pair([0.0, 0.0], [0.0, 0.0], (3.0, 5.0))
    other = pair([-1.0, 0.5], [0.3, -2.0], (3.0, 5.0))
    torch.testing.assert_close(call("wpo", certain, other).loss, call("dpo", certain, other, beta=0.01).loss, rtol=0, atol=0)


@pytest.mark.method("rpo", "reduction")
def test_rpo_with_alpha_zero_is_dpo():
    policy, reference = random_pairs(6, seed=12)
    torch.testing.assert_close(call("rpo", policy, reference, beta=0.3, alpha=0.0).loss,
                               call("dpo", policy, reference, beta=0.3).loss, rtol=0, atol=0)


@pytest.mark.method("rpo", "reduction")
@pytest.mark.parametrize("alpha", [1.0, 0.25])
def test_rpo_equals_the_dpo_plus_sft_objective(alpha):
    # The paper normalises the NLL by the winning response's length, -log M(y_w|x)/|y_w|: the token-mean NLL
    # that `sft` computes, so the two agree exactly (lengths 1..8 here, so a sequence NLL would not).
    policy, reference = random_pairs(6, seed=13)
    objective = build_objective({"dpo": {"beta": 0.3}, "sft": {"weight": alpha}})
    torch.testing.assert_close(call("rpo", policy, reference, beta=0.3, alpha=alpha).loss,
                               objective(policy, reference).loss, rtol=0, atol=1e-15)
    if alpha == 1.0:  # the string form of the same objective, with default betas on both sides
        torch.testing.assert_close(call("rpo", policy, reference).loss,
                                   build_objective("dpo + 1*sft")(policy, reference).loss, rtol=0, atol=1e-15)


@pytest.mark.method("discopop", "value")
def test_discopop_stays_finite_for_extreme_margins_in_float32():
    # g e^-h is computed as exp(log g - h): at h = -200 (float32) exp(200) overflows while g underflows.
    h = torch.tensor([-4000.0, -200.0, 0.0, 200.0], dtype=torch.float32)
    policy = Logps(sum=torch.stack([h, torch.zeros_like(h)], -1).requires_grad_(True), length=torch.ones(4, 2))
    loss = get("discopop").fn(policy, Logps(sum=torch.zeros(4, 2), length=torch.ones(4, 2)), beta=1.0).loss
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(policy.sum.grad).all()
    assert loss[1].item() == pytest.approx(200.0, rel=1e-6)  # gate 0: the logistic loss l(-200) = 200
