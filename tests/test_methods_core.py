"""Unit tests of the first ten registered losses: dpo, cdpo, robust, ipo, hinge, slic, sft, orpo, simpo, kto.

Every expected number is worked by hand with `math` from offline.md §0-§2 (or from the paper
equation restated in the method's docstring), never by calling preftune. All tensors are float64.

The worked example used by most tests (offline.md §0 notation):
    lp(y_w)  = -3.0,  lp(y_l)  = -5.0      policy sums
    lpr(y_w) = -4.0,  lpr(y_l) = -4.5      reference sums
    |y_w| = 2,  |y_l| = 4,  beta = 0.5
hence
    Delta_w = -3 - (-4) = 1,  Delta_l = -5 - (-4.5) = -0.5,  Delta = 1.5,  h = beta * Delta = 0.75
    avg(y_w) = -3/2 = -1.5,   avg(y_l) = -5/4 = -1.25
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from handworked import F64, assert_same_loss_and_gradient, call, ell, flat, pair, random_pairs, sigmoid
from preftune.methods import build_objective, get
from preftune.records import Logps


LP_W, LP_L = -3.0, -5.0
REF_W, REF_L = -4.0, -4.5
LEN_W, LEN_L = 2.0, 4.0
BETA = 0.5
H = BETA * ((LP_W - REF_W) - (LP_L - REF_L))  # 0.5 * (1 - (-0.5)) = 0.75


# --------------------------------------------------------------------------- record builders


def example(requires_grad: bool = False) -> tuple[Logps, Logps]:
    """The worked example of the module docstring, as (policy, reference)."""
    return (pair(LP_W, LP_L, (LEN_W, LEN_L), requires_grad),
            pair(REF_W, REF_L, (LEN_W, LEN_L)))


# --------------------------------------------------------------------------- hand-worked values

# ORPO (paper Eq. 4-6, docstring): o(y) = log p/(1-p) with p = exp(avg(y)).
O_W = -1.5 - math.log(1 - math.exp(-1.5))    # = -1.24752
O_L = -1.25 - math.log(1 - math.exp(-1.25))  # = -0.91242
# SimPO (offline.md §2) with beta = 2, gamma/beta = 0.5: z = 2 * (-1.5 - (-1.25) - 0.5) = 2 * (-0.75) = -1.5.
Z_SIMPO = -1.5


# name, hyperparameters, expected loss, response lengths (None: the worked example's |y_w| = 2, |y_l| = 4)
VALUE_CASES = [
    # offline.md §1 DPO: l(h) = l(0.75).
    pytest.param("dpo", dict(beta=0.5), ell(0.75), None,
                 marks=pytest.mark.method("dpo", "value"), id="dpo"),
    # cDPO: (1-eps) l(h) + eps l(-h), eps = 0.1.
    pytest.param("cdpo", dict(beta=0.5, label_smoothing=0.1), 0.9 * ell(0.75) + 0.1 * ell(-0.75), None,
                 marks=pytest.mark.method("cdpo", "value"), id="cdpo"),
    # rDPO: [(1-eps) l(h) - eps l(-h)] / (1 - 2 eps) = [0.9 l(0.75) - 0.1 l(-0.75)] / 0.8.
    pytest.param("robust", dict(beta=0.5, label_smoothing=0.1), (0.9 * ell(0.75) - 0.1 * ell(-0.75)) / 0.8, None,
                 marks=pytest.mark.method("robust", "value"), id="robust"),
    # IPO length-normalised: Delta = 1/2 - (-0.5)/4 = 0.625; target 1/(2 tau) = 1; (0.625 - 1)^2 = 0.140625.
    pytest.param("ipo", dict(beta=0.5, length_normalize=True), 0.140625, None,
                 marks=pytest.mark.method("ipo", "value"), id="ipo-length-normalised"),
    # IPO on sequence sums (the paper's equation): Delta = 1.5; (1.5 - 1)^2 = 0.25.
    pytest.param("ipo", dict(beta=0.5, length_normalize=False), 0.25, None,
                 marks=pytest.mark.method("ipo", "value"), id="ipo-sums"),
    # hinge: max(0, 1 - h) = 1 - 0.75 = 0.25.
    pytest.param("hinge", dict(beta=0.5), 0.25, None,
                 marks=pytest.mark.method("hinge", "value"), id="hinge"),
    # hinge with margin 2: max(0, 2 - 0.75) = 1.25.
    pytest.param("hinge", dict(beta=0.5, margin=2.0), 1.25, None,
                 marks=pytest.mark.method("hinge", "value"), id="hinge-margin-2"),
    # SLiC-HF, reference-free: gap = lp_w - lp_l = -3 - (-5) = 2; max(0, 2.5 - 2) = 0.5.
    pytest.param("slic", dict(margin=2.5, reg_weight=0.0), 0.5, None,
                 marks=pytest.mark.method("slic", "value"), id="slic"),
    # SLiC-HF with its regulariser lambda * NLL(y_w) on a one-token chosen response: 0.5 + 0.5 * 3 = 2.0.
    pytest.param("slic", dict(margin=2.5, reg_weight=0.5), 0.5 + 0.5 * 3.0, (1.0, LEN_L),
                 marks=pytest.mark.method("slic", "value"), id="slic-regulariser-unit-length"),
    # SLiC-HF with the regulariser as specified: 0.5 + lambda * (-lp_w) = 0.5 + 0.5 * 3 = 2.0.
    pytest.param("slic", dict(margin=2.5, reg_weight=0.5), 0.5 + 0.5 * 3.0, None,
                 marks=pytest.mark.method("slic", "value"), id="slic-regulariser-per-spec"),
    # SFT: -avg(y_w) = 3/2 = 1.5 (the rejected response plays no part).
    pytest.param("sft", {}, 1.5, None,
                 marks=pytest.mark.method("sft", "value"), id="sft"),
    # ORPO: NLL(y_w) + lambda l(o_w - o_l) = 1.5 + 0.5 * l(-0.33510) = 1.5 + 0.5 * 0.87467 = 1.93733.
    pytest.param("orpo", dict(beta=0.5), 1.5 + 0.5 * ell(O_W - O_L), None,
                 marks=pytest.mark.method("orpo", "value"), id="orpo"),
    # SimPO: l(z) = l(-1.5) = 1.70141.
    pytest.param("simpo", dict(beta=2.0, gamma_beta_ratio=0.5), ell(Z_SIMPO), None,
                 marks=pytest.mark.method("simpo", "value"), id="simpo"),
    # SimPO label smoothing eps = 0.1: 0.9 l(-1.5) + 0.1 l(1.5).
    pytest.param("simpo", dict(beta=2.0, gamma_beta_ratio=0.5, label_smoothing=0.1),
                 0.9 * ell(Z_SIMPO) + 0.1 * ell(-Z_SIMPO), None,
                 marks=pytest.mark.method("simpo", "value"), id="simpo-label-smoothing"),
    # SimPO hinge: max(0, 1 - z) = 1 + 1.5 = 2.5.
    pytest.param("simpo", dict(beta=2.0, gamma_beta_ratio=0.5, loss_type="hinge"), 2.5, None,
                 marks=pytest.mark.method("simpo", "value"), id="simpo-hinge"),
    # SimPO + sft_weight 0.5: l(-1.5) + 0.5 * NLL(y_w) = l(-1.5) + 0.5 * 1.5.
    pytest.param("simpo", dict(beta=2.0, gamma_beta_ratio=0.5, sft_weight=0.5), ell(Z_SIMPO) + 0.75, None,
                 marks=pytest.mark.method("simpo", "value"), id="simpo-sft-term"),
]


@pytest.mark.parametrize("name, params, expected, lengths", VALUE_CASES)
def test_hand_worked_value(name, params, expected, lengths):
    policy, reference = example()
    if lengths is not None:  # the worked example with other response lengths
        policy = Logps(sum=policy.sum, length=torch.tensor([lengths], dtype=F64))
        reference = Logps(sum=reference.sum, length=policy.length)
    loss = call(name, policy, reference, **params).loss
    assert loss.shape == (1,) and loss.dtype == F64
    assert loss.item() == pytest.approx(expected, abs=1e-6)


# offline.md §0 requirement 3: rewards per response, margin = r_w - r_l, accuracy = 1[margin > 0].
REWARD_CASES = [
    # beta * Delta_y = 0.5 * (1, -0.5).
    pytest.param("dpo", dict(beta=0.5), (0.5, -0.25), marks=pytest.mark.method("dpo", "value"), id="dpo"),
    pytest.param("cdpo", dict(beta=0.5), (0.5, -0.25), marks=pytest.mark.method("cdpo", "value"), id="cdpo"),
    pytest.param("robust", dict(beta=0.5), (0.5, -0.25), marks=pytest.mark.method("robust", "value"), id="robust"),
    pytest.param("hinge", dict(beta=0.5), (0.5, -0.25), marks=pytest.mark.method("hinge", "value"), id="hinge"),
    # IPO logs tau * Delta_y / |y| = 0.5 * (1/2, -0.5/4).
    pytest.param("ipo", dict(beta=0.5), (0.25, -0.0625), marks=pytest.mark.method("ipo", "value"), id="ipo"),
    # SLiC logs the raw sums.
    pytest.param("slic", {}, (-3.0, -5.0), marks=pytest.mark.method("slic", "value"), id="slic"),
    # ORPO and SimPO log beta * avg(y): 0.5 * (-1.5, -1.25) and 2 * (-1.5, -1.25).
    pytest.param("orpo", dict(beta=0.5), (-0.75, -0.625), marks=pytest.mark.method("orpo", "value"), id="orpo"),
    pytest.param("simpo", dict(beta=2.0), (-3.0, -2.5), marks=pytest.mark.method("simpo", "value"), id="simpo"),
]


@pytest.mark.parametrize("name, params, expected", REWARD_CASES)
def test_logged_rewards_margin_and_accuracy(name, params, expected):
    policy, reference = example()
    out = call(name, policy, reference, **params)
    assert out.rewards[0].tolist() == pytest.approx(expected, abs=1e-12)
    margin = expected[0] - expected[1]
    assert out.metrics["margin"].item() == pytest.approx(margin, abs=1e-12)
    assert out.metrics["accuracy"].item() == float(margin > 0)


# At pi = pi_ref, h = 0: every reference-based pairwise loss takes its value at zero margin, for any beta.
NEUTRAL_CASES = [
    pytest.param("dpo", {}, lambda beta: math.log(2), marks=pytest.mark.method("dpo", "value"), id="dpo"),
    # cDPO: (1-eps) log 2 + eps log 2 = log 2.
    pytest.param("cdpo", dict(label_smoothing=0.2), lambda beta: math.log(2),
                 marks=pytest.mark.method("cdpo", "value"), id="cdpo"),
    # rDPO: (1-eps-eps) log 2 / (1-2eps) = log 2.
    pytest.param("robust", dict(label_smoothing=0.2), lambda beta: math.log(2),
                 marks=pytest.mark.method("robust", "value"), id="robust"),
    # IPO: (0 - 1/(2 tau))^2 = 1/(4 tau^2).
    pytest.param("ipo", {}, lambda beta: 1 / (4 * beta ** 2), marks=pytest.mark.method("ipo", "value"), id="ipo"),
    # hinge: max(0, margin - 0) = margin.
    pytest.param("hinge", dict(margin=1.5), lambda beta: 1.5, marks=pytest.mark.method("hinge", "value"), id="hinge"),
]


@pytest.mark.parametrize("name, params, at_zero", NEUTRAL_CASES)
@pytest.mark.parametrize("beta", [0.1, 0.5, 3.0])
def test_policy_equal_to_reference_gives_zero_margin_value(name, params, at_zero, beta):
    policy, _ = random_pairs(8)
    loss = call(name, policy, Logps(sum=policy.sum.clone(), length=policy.length), beta=beta, **params).loss
    torch.testing.assert_close(loss, torch.full((8,), at_zero(beta), dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.method("kto", "value")
@pytest.mark.parametrize("mismatched, z0", [
    # Mismatched log-ratios 1.0 and 0.5 (lp - lpr = -6 - (-7), -7 - (-7.5)): z0 = max(0, mean) = 0.75.
    ((-6.0, -7.0, -7.0, -7.5), 0.75),
    # Mismatched log-ratios -1.0 and -0.5: the mean -0.75 is clamped to z0 = 0 (Eq. 8: KL >= 0).
    ((-7.0, -6.0, -7.5, -7.0), 0.0),
    # K = 1, no mismatched completion: z0 = 0.
    (None, 0.0),
], ids=["z0-positive", "z0-clamped", "no-mismatched"])
def test_kto_hand_worked_value(mismatched, z0):
    # Row 0: desirable, r = -3 - (-4) = 1.    Row 1: undesirable, r = -5 - (-4.5) = -0.5.
    # Paper Eq. 8 (docstring): desirable  L = lambda_D * (1 - sigmoid(beta * (r - z0)))
    #                          undesirable L = lambda_U * (1 - sigmoid(beta * (z0 - r)))
    beta, lam_d, lam_u = 0.5, 1.5, 2.0
    policy_sum, reference_sum = [[-3.0], [-5.0]], [[-4.0], [-4.5]]
    if mismatched is not None:
        lp_0, lpr_0, lp_1, lpr_1 = mismatched
        policy_sum, reference_sum = [[-3.0, lp_0], [-5.0, lp_1]], [[-4.0, lpr_0], [-4.5, lpr_1]]
    policy = Logps(sum=torch.tensor(policy_sum, dtype=F64), length=torch.ones(2, len(policy_sum[0]), dtype=F64))
    reference = Logps(sum=torch.tensor(reference_sum, dtype=F64), length=policy.length)
    out = get("kto").fn(policy, reference, label=torch.tensor([True, False]), beta=beta,
                        desirable_weight=lam_d, undesirable_weight=lam_u)
    expected = [lam_d * (1 - sigmoid(beta * (1.0 - z0))), lam_u * (1 - sigmoid(beta * (z0 - (-0.5))))]
    assert out.loss.tolist() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["kl_reference_point"].tolist() == pytest.approx([z0, z0], abs=1e-12)
    # Accuracy: desirable counts when r > z0 (1 > z0), undesirable when r < z0 (-0.5 < z0).
    assert out.metrics["accuracy"].tolist() == [1.0, 1.0]


@pytest.mark.method("orpo", "value")
def test_orpo_stays_finite_for_a_certain_response():
    # avg(y_w) = 0 means p = 1 and odds = inf; common.log_odds clamps p below 1 so loss and gradient stay finite.
    policy = pair([0.0, -1e-12], [-2.0, -2.0], requires_grad=True)
    out = get("orpo").fn(policy, beta=0.1)
    out.loss.sum().backward()
    assert torch.isfinite(out.loss).all() and torch.isfinite(policy.sum.grad).all()


def test_losses_are_per_example():
    # A row's loss depends on that row only (kto is left out: its z0 is a batch mean by design).
    policy, reference = random_pairs(6, seed=3)
    for name in ("dpo", "cdpo", "robust", "ipo", "hinge", "slic", "sft", "orpo", "simpo"):
        batched = call(name, policy, reference).loss
        rows = torch.cat([call(name, policy.select([i]), reference.select([i])).loss for i in range(6)])
        torch.testing.assert_close(batched, rows, rtol=0, atol=1e-12, msg=name)


def test_robust_rejects_flip_rate_of_one_half_or_more():
    policy, reference = example()
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        get("robust").fn(policy, reference, label_smoothing=0.5)


def test_simpo_rejects_unknown_loss_type():
    policy, _ = example()
    with pytest.raises(ValueError, match="'sigmoid' or 'hinge'"):
        get("simpo").fn(policy, loss_type="ipo")


# --------------------------------------------------------------------------- gradients

# ORPO: L = -lp_w/|y_w| + lambda l(o_w - o_l), do/d avg = 1/(1 - p), l'(x) = -sigmoid(-x):
#   dL/dlp_w = [-1 - lambda sigmoid(-(o_w - o_l)) / (1 - p_w)] / |y_w|
#   dL/dlp_l = [+lambda sigmoid(-(o_w - o_l)) / (1 - p_l)] / |y_l|
_S_ORPO = sigmoid(-(O_W - O_L))
ORPO_GRAD = ((-1 - 0.5 * _S_ORPO / (1 - math.exp(-1.5))) / 2, (0.5 * _S_ORPO / (1 - math.exp(-1.25))) / 4)

GRADIENT_CASES = [
    # offline.md §1: dL/dlp_w = -beta sigmoid(-h), dL/dlp_l = +beta sigmoid(-h).
    pytest.param("dpo", dict(beta=0.5), (-0.5 * sigmoid(-0.75), 0.5 * sigmoid(-0.75)),
                 marks=pytest.mark.method("dpo", "gradient"), id="dpo"),
    # cDPO: dL/dh = -(1-eps) sigmoid(-h) + eps sigmoid(h) = sigmoid(h) - (1-eps); dh/dlp_w = beta.
    pytest.param("cdpo", dict(beta=0.5, label_smoothing=0.1),
                 (0.5 * (sigmoid(0.75) - 0.9), -0.5 * (sigmoid(0.75) - 0.9)),
                 marks=pytest.mark.method("cdpo", "gradient"), id="cdpo"),
    # rDPO: dL/dh = -[(1-eps) sigmoid(-h) + eps sigmoid(h)] / (1-2eps).
    pytest.param("robust", dict(beta=0.5, label_smoothing=0.1),
                 (-0.5 * (0.9 * sigmoid(-0.75) + 0.1 * sigmoid(0.75)) / 0.8,
                  0.5 * (0.9 * sigmoid(-0.75) + 0.1 * sigmoid(0.75)) / 0.8),
                 marks=pytest.mark.method("robust", "gradient"), id="robust"),
    # IPO: dL/dDelta = 2 (0.625 - 1) = -0.75; dDelta/dlp_w = 1/|y_w| = 1/2, dDelta/dlp_l = -1/|y_l| = -1/4.
    pytest.param("ipo", dict(beta=0.5), (-0.375, 0.1875),
                 marks=pytest.mark.method("ipo", "gradient"), id="ipo"),
    # hinge below its margin (h = 0.75 < 1): -beta and +beta.
    pytest.param("hinge", dict(beta=0.5), (-0.5, 0.5),
                 marks=pytest.mark.method("hinge", "gradient"), id="hinge"),
    # SLiC, gap 2 < delta 2.5: -1 and +1 (reference-free, no beta).
    pytest.param("slic", dict(margin=2.5), (-1.0, 1.0),
                 marks=pytest.mark.method("slic", "gradient"), id="slic"),
    # SFT: L = -lp_w/|y_w|: -1/2, and the rejected response is untouched.
    pytest.param("sft", {}, (-0.5, 0.0),
                 marks=pytest.mark.method("sft", "gradient"), id="sft"),
    pytest.param("orpo", dict(beta=0.5), ORPO_GRAD,
                 marks=pytest.mark.method("orpo", "gradient"), id="orpo"),
    # SimPO: dL/dz = -sigmoid(-z) = -sigmoid(1.5); dz/dlp_w = beta/|y_w| = 1, dz/dlp_l = -beta/|y_l| = -1/2.
    pytest.param("simpo", dict(beta=2.0, gamma_beta_ratio=0.5), (-sigmoid(1.5), 0.5 * sigmoid(1.5)),
                 marks=pytest.mark.method("simpo", "gradient"), id="simpo"),
]


@pytest.mark.parametrize("name, params, expected", GRADIENT_CASES)
def test_gradient_on_sums_matches_analytic(name, params, expected):
    policy, reference = example(requires_grad=True)
    call(name, policy, reference, **params).loss.sum().backward()
    grad_w, grad_l = policy.sum.grad[0].tolist()
    assert (grad_w, grad_l) == pytest.approx(expected, abs=1e-9)
    # Descent raises the chosen log-prob and never raises the rejected one.
    assert grad_w < 0 <= grad_l


# dL/dh over a wide grid of h, by autograd on lp_w with a flat reference and beta = 1 (so h = lp_w - lp_l).
DL_DH_CASES = [
    pytest.param("dpo", {}, lambda h: -sigmoid(-h), marks=pytest.mark.method("dpo", "gradient"), id="dpo"),
    pytest.param("cdpo", dict(label_smoothing=0.2), lambda h: sigmoid(h) - 0.8,
                 marks=pytest.mark.method("cdpo", "gradient"), id="cdpo"),
    pytest.param("robust", dict(label_smoothing=0.2), lambda h: -(0.8 * sigmoid(-h) + 0.2 * sigmoid(h)) / 0.6,
                 marks=pytest.mark.method("robust", "gradient"), id="robust"),
]


@pytest.mark.parametrize("name, params, dl_dh", DL_DH_CASES)
def test_dl_dh_on_a_grid(name, params, dl_dh):
    h = torch.linspace(-12, 12, 97, dtype=F64)
    policy = pair(h, torch.zeros_like(h), requires_grad=True)
    call(name, policy, flat(policy), beta=1.0, **params).loss.sum().backward()
    expected = torch.tensor([dl_dh(x) for x in h.tolist()], dtype=F64)
    torch.testing.assert_close(policy.sum.grad[:, 0], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(policy.sum.grad[:, 1], -expected, rtol=0, atol=1e-12)


@pytest.mark.method("simpo", "gradient")
def test_simpo_gradient_per_token():
    # offline.md §2 Test 2: dL/dlogpi(y_w,t) = -(beta/|y_w|) sigmoid(-z) for every chosen token,
    # and +(beta/|y_l|) sigmoid(-z) for every rejected token; padding gets nothing.
    # Chosen tokens (-1, -2) sum to -3 over 2 tokens; rejected (-1, -1.5, -1.25, -1.25) sum to -5 over 4.
    tokens = torch.tensor([[[-1.0, -2.0, -7.0, -7.0], [-1.0, -1.5, -1.25, -1.25]]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[[1, 1, 0, 0], [1, 1, 1, 1]]], dtype=torch.bool)
    loss = get("simpo").fn(Logps.from_tokens(tokens, mask), beta=2.0, gamma_beta_ratio=0.5).loss
    assert loss.item() == pytest.approx(ell(Z_SIMPO), abs=1e-12)
    loss.sum().backward()
    s = sigmoid(-Z_SIMPO)  # sigmoid(1.5)
    expected = torch.tensor([[[-2.0 / 2 * s, -2.0 / 2 * s, 0.0, 0.0], [2.0 / 4 * s] * 4]], dtype=F64)
    torch.testing.assert_close(tokens.grad, expected, rtol=0, atol=1e-12)


@pytest.mark.method("simpo", "value")
def test_simpo_invariant_to_repeating_a_response():
    # offline.md §2 Test 1: duplicating a response's per-token log-probs leaves avg, hence the loss, unchanged.
    chosen, rejected = [-1.0, -2.0], [-1.0, -1.5, -1.25, -1.25]
    once = Logps.from_tokens(torch.tensor([[chosen + [0.0] * 6, rejected + [0.0] * 4]], dtype=F64),
                             torch.tensor([[[1] * 2 + [0] * 6, [1] * 4 + [0] * 4]]))
    twice = Logps.from_tokens(torch.tensor([[chosen * 2 + [0.0] * 4, rejected * 2]], dtype=F64),
                              torch.tensor([[[1] * 4 + [0] * 4, [1] * 8]]))
    loss_once = get("simpo").fn(once, beta=2.0, gamma_beta_ratio=0.5).loss
    loss_twice = get("simpo").fn(twice, beta=2.0, gamma_beta_ratio=0.5).loss
    assert loss_once.item() == pytest.approx(ell(Z_SIMPO), abs=1e-12)
    assert loss_twice.item() == pytest.approx(loss_once.item(), abs=1e-12)


@pytest.mark.parametrize("name, params, chosen", [
    # hinge, flat reference, beta 0.5, rejected 0: h = 0.5 * lp_w; h = 1 exactly, 1.25, 4.
    pytest.param("hinge", dict(beta=0.5), 2.0, marks=pytest.mark.method("hinge", "gradient"), id="hinge-h=1"),
    pytest.param("hinge", dict(beta=0.5), 2.5, marks=pytest.mark.method("hinge", "gradient"), id="hinge-h=1.25"),
    pytest.param("hinge", dict(beta=0.5), 8.0, marks=pytest.mark.method("hinge", "gradient"), id="hinge-h=4"),
    # SLiC, margin 1: gap = lp_w - 0 = 1 exactly, 3.
    pytest.param("slic", dict(margin=1.0), 1.0, marks=pytest.mark.method("slic", "gradient"), id="slic-gap=1"),
    pytest.param("slic", dict(margin=1.0), 3.0, marks=pytest.mark.method("slic", "gradient"), id="slic-gap=3"),
])
def test_margin_met_gives_exactly_zero_loss_and_gradient(name, params, chosen):
    # offline.md §1 (Hinge / SLiC-HF test): the gradient is exactly 0 once the margin is met.
    policy = pair(chosen, 0.0, requires_grad=True)
    loss = call(name, policy, flat(policy), **params).loss
    assert loss.item() == 0.0
    loss.sum().backward()
    assert torch.equal(policy.sum.grad, torch.zeros_like(policy.sum))


@pytest.mark.parametrize("name, params, offset", [
    # offline.md §1 cDPO: the single-pair minimiser is h* = log((1-eps)/eps) = log 9 for eps = 0.1;
    # flat reference, beta 0.5: h = 0.5 * (lp_w - lp_l), so lp_w - lp_l = 2 log 9.
    pytest.param("cdpo", dict(beta=0.5, label_smoothing=0.1), 2 * math.log(9),
                 marks=pytest.mark.method("cdpo", "gradient"), id="cdpo"),
    # offline.md §2 Test 3: SimPO with label smoothing has z* = log((1-eps)/eps); lengths 1, beta 2,
    # gamma/beta 0.25: z = 2 * (avg_w - avg_l - 0.25), so avg_w - avg_l = log(9)/2 + 0.25.
    pytest.param("simpo", dict(beta=2.0, gamma_beta_ratio=0.25, label_smoothing=0.1), math.log(9) / 2 + 0.25,
                 marks=pytest.mark.method("simpo", "gradient"), id="simpo"),
    # offline.md §1 IPO: with hard labels the minimiser is Delta* = 1/(2 tau) = 1 for tau = 0.5 (loss 0 there).
    pytest.param("ipo", dict(beta=0.5), 1.0, marks=pytest.mark.method("ipo", "gradient"), id="ipo"),
])
def test_stationary_point_of_a_single_pair(name, params, offset):
    def loss_at(gap, requires_grad=False):
        policy = pair(-2.0 + gap, -2.0, requires_grad=requires_grad)
        return policy, call(name, policy, flat(policy), **params).loss

    policy, loss = loss_at(offset, requires_grad=True)
    loss.sum().backward()
    torch.testing.assert_close(policy.sum.grad, torch.zeros_like(policy.sum), rtol=0, atol=1e-12)
    for step in (-0.1, 0.1):  # a strict minimum, not merely a stationary point
        assert loss_at(offset + step)[1].item() > loss.item()


@pytest.mark.method("kto", "gradient")
def test_kto_gradient_and_detached_reference_point():
    # Same batch as the z0 = 0.75 value case. d/dr [1 - sigmoid(u)] = -beta sigmoid(u)(1 - sigmoid(u)):
    #   row 0 desirable,   u = beta (r - z0) = 0.5 * (1 - 0.75) = 0.125:    dL/dlp = -lambda_D beta s(1-s)
    #   row 1 undesirable, v = beta (z0 - r) = 0.5 * (0.75 + 0.5) = 0.625: dL/dlp = +lambda_U beta s(1-s)
    # z0 is detached (Eq. 8 treats the KL point as a constant), so the mismatched column gets no gradient.
    beta, lam_d, lam_u = 0.5, 1.5, 2.0
    policy = Logps(sum=torch.tensor([[-3.0, -6.0], [-5.0, -7.0]], dtype=F64, requires_grad=True),
                   length=torch.ones(2, 2, dtype=F64))
    reference = Logps(sum=torch.tensor([[-4.0, -7.0], [-4.5, -7.5]], dtype=F64), length=policy.length)
    get("kto").fn(policy, reference, label=torch.tensor([True, False]), beta=beta,
                  desirable_weight=lam_d, undesirable_weight=lam_u).loss.sum().backward()
    s_d, s_u = sigmoid(0.125), sigmoid(0.625)
    expected = [[-lam_d * beta * s_d * (1 - s_d), 0.0], [lam_u * beta * s_u * (1 - s_u), 0.0]]
    torch.testing.assert_close(policy.sum.grad, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- reductions to the parent

@pytest.mark.method("dpo", "reduction")
def test_dpo_with_flat_reference_is_bradley_terry_on_sums():
    # With log pi_ref = 0, DPO is the logistic loss of BT rewards beta * lp(y); l must be computed stably
    # (offline.md §0: never log(sigmoid())), so |h| = 800 gives 800 and ~0, not inf and 0.
    beta = 0.5
    gaps = [-1600.0, -60.0, -3.0, -0.1, 0.0, 0.1, 3.0, 60.0, 1600.0]
    policy = pair([-1.0 + g for g in gaps], [-1.0] * len(gaps))
    loss = get("dpo").fn(policy, flat(policy), beta=beta).loss
    expected = torch.tensor([ell(beta * g) for g in gaps], dtype=F64)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", [
    pytest.param("cdpo", marks=pytest.mark.method("cdpo", "reduction")),
    pytest.param("robust", marks=pytest.mark.method("robust", "reduction")),
])
def test_label_noise_variant_at_zero_flip_rate_is_dpo(name):
    # offline.md §1: eps = 0 gives DPO, for cDPO and rDPO alike; compare losses and gradients.
    for beta in (0.1, 0.5, 2.0):
        policy, reference = random_pairs(64, requires_grad=True)
        twin, _ = random_pairs(64, requires_grad=True)
        got = call(name, policy, reference, beta=beta, label_smoothing=0.0).loss
        want = get("dpo").fn(twin, reference, beta=beta).loss
        assert_same_loss_and_gradient(got, want, policy, twin)


@pytest.mark.method("robust", "reduction")
@pytest.mark.parametrize("eps", [0.05, 0.1, 0.25, 0.4])
def test_robust_is_unbiased_under_label_flips(eps):
    # offline.md §1: (1-eps) L(h) + eps L(-h) == l(h) for every h, where L(-h) is the loss with the
    # pair's labels flipped (chosen and rejected swapped).
    h = torch.linspace(-20, 20, 161, dtype=F64)
    zero = torch.zeros_like(h)
    kept, flipped = pair(h, zero), pair(zero, h)
    loss = get("robust").fn(kept, flat(kept), beta=1.0, label_smoothing=eps).loss
    loss_flipped = get("robust").fn(flipped, flat(flipped), beta=1.0, label_smoothing=eps).loss
    clean = torch.tensor([ell(x) for x in h.tolist()], dtype=F64)
    torch.testing.assert_close((1 - eps) * loss + eps * loss_flipped, clean, rtol=0, atol=1e-12)


@pytest.mark.method("ipo", "reduction")
def test_ipo_length_normalisation():
    # With |y| = 1 for every response, the per-token and the sequence forms coincide; in general the
    # per-token form is the sequence form applied to sums divided by the policy lengths.
    policy, reference = random_pairs(32)
    unit = Logps(sum=policy.sum, length=torch.ones_like(policy.length))
    unit_ref = Logps(sum=reference.sum, length=unit.length)
    torch.testing.assert_close(get("ipo").fn(unit, unit_ref, beta=0.3, length_normalize=True).loss,
                               get("ipo").fn(unit, unit_ref, beta=0.3, length_normalize=False).loss,
                               rtol=0, atol=1e-12)
    per_token = Logps(sum=policy.sum / policy.length, length=policy.length)
    per_token_ref = Logps(sum=reference.sum / policy.length, length=policy.length)
    torch.testing.assert_close(get("ipo").fn(policy, reference, beta=0.3, length_normalize=True).loss,
                               get("ipo").fn(per_token, per_token_ref, beta=0.3, length_normalize=False).loss,
                               rtol=0, atol=1e-12)
    # The two forms differ once lengths differ (the worked example: 0.140625 vs 0.25), so the flag matters.
    a, b = example()
    assert get("ipo").fn(a, b, beta=0.5, length_normalize=True).loss.item() != pytest.approx(
        get("ipo").fn(a, b, beta=0.5, length_normalize=False).loss.item())


@pytest.mark.method("slic", "reduction")
@pytest.mark.method("hinge", "reduction")
def test_slic_without_regulariser_is_hinge_on_reference_free_margins():
    # offline.md §1: slic with lambda = 0 is max(0, delta - (lp_w - lp_l)), i.e. the hinge with a flat
    # reference, beta 1 and margin delta; conversely hinge(beta, m) is slic(delta = m) on beta * (lp - lpr).
    policy, reference = random_pairs(64, seed=5)
    gap = policy.sum[:, 0] - policy.sum[:, 1]
    slic_loss = get("slic").fn(policy, margin=1.3, reg_weight=0.0).loss
    torch.testing.assert_close(slic_loss, get("hinge").fn(policy, flat(policy), beta=1.0, margin=1.3).loss,
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(slic_loss, torch.relu(1.3 - gap), rtol=0, atol=1e-12)
    h = 0.7 * ((policy.sum[:, 0] - reference.sum[:, 0]) - (policy.sum[:, 1] - reference.sum[:, 1]))
    hinge_loss = get("hinge").fn(policy, reference, beta=0.7).loss
    scaled = Logps(sum=0.7 * (policy.sum - reference.sum), length=policy.length)
    torch.testing.assert_close(hinge_loss, get("slic").fn(scaled, margin=1.0, reg_weight=0.0).loss,
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(hinge_loss, torch.relu(1.0 - h), rtol=0, atol=1e-12)
    for loss in (slic_loss, hinge_loss):  # the batch covers both sides of the margin
        assert (loss > 0).any() and (loss == 0).any()


@pytest.mark.method("hinge", "reduction")
def test_hinge_and_dpo_agree_in_sign():
    # Both are decreasing functions of the same margin h: same logged margin/accuracy everywhere, same
    # gradient signs wherever the hinge is active (h < 1), and a hinge gradient of exactly 0 beyond it.
    h = torch.linspace(-4, 3, 57, dtype=F64)
    dpo_policy = pair(h / 0.5, torch.zeros_like(h), requires_grad=True)
    hinge_policy = pair(h / 0.5, torch.zeros_like(h), requires_grad=True)
    dpo_out = get("dpo").fn(dpo_policy, flat(dpo_policy), beta=0.5)
    hinge_out = get("hinge").fn(hinge_policy, flat(hinge_policy), beta=0.5)
    for key in ("margin", "accuracy"):
        torch.testing.assert_close(hinge_out.metrics[key], dpo_out.metrics[key], rtol=0, atol=0)
    dpo_out.loss.sum().backward()
    hinge_out.loss.sum().backward()
    active = h < 1
    assert torch.equal(hinge_policy.sum.grad[active].sign(), dpo_policy.sum.grad[active].sign())
    assert (dpo_policy.sum.grad[:, 0] < 0).all() and (dpo_policy.sum.grad[:, 1] > 0).all()
    assert torch.equal(hinge_policy.sum.grad[~active], torch.zeros_like(hinge_policy.sum.grad[~active]))
    assert (dpo_out.loss.diff() < 0).all() and (hinge_out.loss.diff() <= 0).all()


def _simpo_parent_record(policy: Logps, gamma_beta_ratio: float) -> Logps:
    """Per-token means as sums, with gamma/beta taken off the chosen one: then beta * (chosen - rejected) = z."""
    shifted = policy.mean - torch.tensor([gamma_beta_ratio, 0.0], dtype=F64)
    return Logps(sum=shifted, length=torch.ones_like(policy.length))


@pytest.mark.parametrize("simpo_params, parent, parent_params", [
    # label_smoothing 0: l(z) is DPO on the length-normalised margin (flat reference).
    pytest.param(dict(label_smoothing=0.0), "dpo", {}, marks=pytest.mark.method("simpo", "reduction"),
                 id="sigmoid-vs-dpo"),
    # label_smoothing eps: (1-eps) l(z) + eps l(-z) is cDPO on the same margin.
    pytest.param(dict(label_smoothing=0.2), "cdpo", dict(label_smoothing=0.2),
                 marks=pytest.mark.method("simpo", "reduction"), id="smoothed-vs-cdpo"),
    # hinge: max(0, 1 - z) is the DPO-library hinge with margin 1.
    pytest.param(dict(loss_type="hinge"), "hinge", dict(margin=1.0), marks=pytest.mark.method("simpo", "reduction"),
                 id="hinge-vs-hinge"),
])
def test_simpo_variants_are_their_parents_on_length_normalised_margins(simpo_params, parent, parent_params):
    policy, _ = random_pairs(64, seed=7)
    beta, ratio = 2.5, 0.3
    record = _simpo_parent_record(policy, ratio)
    got = get("simpo").fn(policy, beta=beta, gamma_beta_ratio=ratio, **simpo_params).loss
    want = call(parent, record, flat(record), beta=beta, **parent_params).loss
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.method("simpo", "reduction")
def test_simpo_without_margin_on_unit_lengths_is_reference_free_sigmoid_on_sums():
    # gamma = 0, |y| = 1: z = beta (lp_w - lp_l), L = -log sigmoid(z), worked on three pairs.
    policy = pair([-3.0, -1.0, -0.5], [-5.0, -1.0, -2.5])  # gaps 2, 0, 2
    loss = get("simpo").fn(policy, beta=2.0, gamma_beta_ratio=0.0).loss
    assert loss.tolist() == pytest.approx([ell(4.0), math.log(2), ell(4.0)], abs=1e-12)


@pytest.mark.method("kto", "reduction")
@pytest.mark.parametrize("mismatched, z0", [(None, 0.0), (0.4, 0.4)], ids=["K=1", "z0=0.4"])
def test_kto_label_symmetry(mismatched, z0):
    # Desirable at r and undesirable at 2 z0 - r are the same loss (sigmoid(beta(r - z0)) vs
    # sigmoid(beta(z0 - r'))); and with unit weights desirable(r) + undesirable(r) = 1.
    r = torch.linspace(-6, 6, 49, dtype=F64)
    label_true, label_false = torch.ones_like(r, dtype=torch.bool), torch.zeros_like(r, dtype=torch.bool)

    def kto(ratio, label):
        columns = [ratio] if mismatched is None else [ratio, torch.full_like(ratio, mismatched)]
        policy = Logps(sum=torch.stack(columns, -1), length=torch.ones(len(ratio), len(columns), dtype=F64))
        return get("kto").fn(policy, flat(policy), label=label, beta=0.7).loss

    torch.testing.assert_close(kto(r, label_true), kto(2 * z0 - r, label_false), rtol=0, atol=1e-12)
    torch.testing.assert_close(kto(r, label_true) + kto(r, label_false), torch.ones_like(r), rtol=0, atol=1e-12)
    # The two sides are not trivially equal: the desirable loss falls as r rises, the undesirable one grows.
    assert (kto(r, label_true).diff() < 0).all() and (kto(r, label_false).diff() > 0).all()


@pytest.mark.parametrize("kind", [
    pytest.param("loss", marks=pytest.mark.method("orpo", "reduction")),
    pytest.param("gradient", marks=pytest.mark.method("orpo", "reduction")),
])
def test_orpo_without_odds_ratio_term_is_sft(kind):
    policy, _ = random_pairs(32, requires_grad=True)
    twin, _ = random_pairs(32, requires_grad=True)
    orpo_loss = get("orpo").fn(policy, beta=0.0).loss
    sft_loss = get("sft").fn(twin).loss
    if kind == "loss":
        torch.testing.assert_close(orpo_loss, sft_loss, rtol=0, atol=1e-12)
    else:
        orpo_loss.sum().backward()
        sft_loss.sum().backward()
        torch.testing.assert_close(policy.sum.grad, twin.sum.grad, rtol=0, atol=1e-12)


@pytest.mark.method("sft", "reduction")
def test_sft_reads_response_zero_only():
    # SFT is input_kind "any": on a pairwise record it is the NLL of the chosen response, i.e. the same as
    # on the pointwise record holding only response 0; changing the rejected response changes nothing.
    policy, _ = random_pairs(16)
    pointwise = policy.responses([0])
    other = Logps(sum=torch.stack([policy.sum[:, 0], policy.sum[:, 1] - 10.0], -1), length=policy.length)
    expected = -policy.sum[:, 0] / policy.length[:, 0]
    for record in (policy, pointwise, other):
        torch.testing.assert_close(get("sft").fn(record).loss, expected, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- the Objective combinator

def test_objective_string_sums_weighted_terms_per_example():
    policy, reference = random_pairs(8, seed=11)
    objective = build_objective("dpo + 0.2*sft")
    out = objective(policy, reference)
    # dpo at its default beta 0.1: l(0.1 * (Delta_w - Delta_l)); sft: -lp_w/|y_w|.
    delta = policy.sum - reference.sum
    dpo_loss = -F.logsigmoid(0.1 * (delta[:, 0] - delta[:, 1]))
    sft_loss = -policy.sum[:, 0] / policy.length[:, 0]
    torch.testing.assert_close(out.loss, dpo_loss + 0.2 * sft_loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.metrics["dpo/loss"], dpo_loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.metrics["sft/loss"], sft_loss, rtol=0, atol=1e-12)
    # The first term (the preference loss) supplies the logged rewards: beta * Delta_y, not sft's avg(y).
    torch.testing.assert_close(out.rewards, 0.1 * delta.detach(), rtol=0, atol=1e-12)
    assert objective.needs_reference and objective.input_kind == "pairwise"


def test_objective_mapping_passes_hyperparameters_and_weight():
    policy, reference = example()
    out = build_objective({"dpo": {"beta": 0.3}, "sft": {"weight": 0.2}})(policy, reference)
    # beta 0.3: h = 0.3 * 1.5 = 0.45; plus 0.2 * 1.5.
    assert out.loss.item() == pytest.approx(ell(0.45) + 0.2 * 1.5, abs=1e-12)
    # The default beta 0.1 would give l(0.15) + 0.3: the value above really carries beta = 0.3.
    assert out.loss.item() != pytest.approx(ell(0.15) + 0.3, abs=1e-6)


@pytest.mark.parametrize("name, wrong, valid", [
    ("dpo", "betta", ["beta=0.1"]),
    ("simpo", "gamma", ["beta=2.0", "gamma_beta_ratio=0.5", "label_smoothing=0.0", "loss_type='sigmoid'",
                        "sft_weight=0.0"]),
])
def test_objective_unknown_hyperparameter_lists_valid_ones(name, wrong, valid):
    with pytest.raises(ValueError) as excinfo:
        build_objective({name: {wrong: 1.0}})
    message = str(excinfo.value)
    assert f"'{wrong}'" in message and f"'{name}'" in message
    for entry in valid:
        assert entry in message


def test_objective_refuses_mixing_pairwise_and_pointwise():
    with pytest.raises(ValueError) as excinfo:
        build_objective("dpo + kto")
    message = str(excinfo.value)
    assert "different data kinds" in message and "dpo (pairwise)" in message and "kto (pointwise)" in message


def test_objective_unknown_method_lists_registered_ones():
    with pytest.raises(KeyError) as excinfo:
        build_objective("dpoo + sft")
    message = excinfo.value.args[0]
    assert "'dpoo'" in message
    for name in ("cdpo", "dpo", "hinge", "ipo", "kto", "orpo", "robust", "sft", "simpo", "slic"):
        assert name in message


def test_objective_requires_declared_data_extras():
    objective = build_objective({"kto": {"beta": 0.5}})
    policy = Logps(sum=torch.tensor([[-3.0], [-5.0]], dtype=F64), length=torch.ones(2, 1, dtype=F64))
    reference = Logps(sum=torch.tensor([[-4.0], [-4.5]], dtype=F64), length=policy.length)
    with pytest.raises(ValueError, match=r"needs data columns \['label'\]"):
        objective(policy, reference, {})
    # With the column it is KTO itself: K = 1 so z0 = 0; 1 - sigmoid(0.5 * 1), 1 - sigmoid(0.5 * 0.5).
    out = objective(policy, reference, {"label": torch.tensor([True, False])})
    assert out.loss.tolist() == pytest.approx([1 - sigmoid(0.5), 1 - sigmoid(0.25)], abs=1e-12)


def test_objective_requires_reference_when_a_term_does():
    policy, _ = example()
    with pytest.raises(ValueError, match="needs reference log-probs"):
        build_objective("dpo")(policy, None)
    # A reference-free objective runs without one: SimPO's worked value.
    assert build_objective({"simpo": {"beta": 2.0, "gamma_beta_ratio": 0.5}})(policy, None).loss.item() == \
        pytest.approx(ell(Z_SIMPO), abs=1e-12)


# --------------------------------------------------------------------------- Logps helpers

def _three_rows() -> Logps:
    # Row i, response k has 1 + k + i real tokens with value -(1 + i + k) / 2 and garbage (99) beyond.
    tokens = torch.full((3, 2, 4), 99.0, dtype=F64)
    mask = torch.zeros(3, 2, 4, dtype=torch.bool)
    for i in range(3):
        for k in range(2):
            n = 1 + k + i
            tokens[i, k, :n] = -(1 + i + k) / 2
            mask[i, k, :n] = True
    return Logps.from_tokens(tokens, mask)


def test_logps_mean_is_sum_over_length():
    logps = Logps(sum=torch.tensor([[-3.0, -5.0], [0.0, -1.0]], dtype=F64),
                  length=torch.tensor([[2.0, 4.0], [0.0, 1.0]], dtype=F64))
    # -3/2, -5/4; an empty response (length 0, sum 0) has mean 0, not nan.
    assert logps.mean.tolist() == [[-1.5, -1.25], [0.0, -1.0]]
    assert logps.chosen_mean.tolist() == [-1.5, 0.0] and logps.rejected_mean.tolist() == [-1.25, -1.0]
    assert logps.chosen.tolist() == [-3.0, 0.0] and logps.rejected.tolist() == [-5.0, -1.0]


def test_logps_from_tokens_masks_padding():
    logps = _three_rows()
    # Row 2, response 1: 4 real tokens of -2 each; response 0: 3 tokens of -1.5 and one garbage 99.
    assert logps.sum[2].tolist() == [-4.5, -8.0] and logps.length[2].tolist() == [3.0, 4.0]
    assert logps.sum[0].tolist() == [-0.5, -2.0] and logps.length[0].tolist() == [1.0, 2.0]
    assert logps.mask.dtype == torch.bool and logps.length.dtype == F64
    assert torch.equal(logps.tokens[~logps.mask], torch.zeros(int((~logps.mask).sum()), dtype=F64))
    # An integer mask is accepted as a bool mask, and padding gets no gradient.
    tokens = torch.tensor([[[-1.0, -2.0, 50.0]]], dtype=F64, requires_grad=True)
    record = Logps.from_tokens(tokens, torch.tensor([[[1, 1, 0]]]))
    assert record.sum.item() == -3.0 and record.length.item() == 2.0
    record.sum.sum().backward()
    assert tokens.grad.tolist() == [[[1.0, 1.0, 0.0]]]


def test_logps_from_tokens_ignores_non_finite_padding():
    record = Logps.from_tokens(torch.tensor([[[-1.0, -math.inf]]], dtype=F64), torch.tensor([[[True, False]]]))
    assert record.sum.item() == -1.0


def test_logps_select_keeps_rows_of_every_field():
    logps = _three_rows()
    picked = logps.select([2, 0])
    for field in ("sum", "length", "tokens", "mask"):
        assert torch.equal(getattr(picked, field), getattr(logps, field)[[2, 0]]), field
    by_mask = logps.select(torch.tensor([False, True, False]))
    assert by_mask.sum.tolist() == [[-2.0, -4.5]] and by_mask.tokens.shape == (1, 2, 4)


def test_logps_responses_keeps_columns_of_every_field():
    logps = _three_rows()
    rejected_only = logps.responses([1])
    assert rejected_only.num_responses == 1
    for field in ("sum", "length", "tokens", "mask"):
        assert torch.equal(getattr(rejected_only, field), getattr(logps, field)[:, [1]]), field
    assert rejected_only.chosen.tolist() == logps.rejected.tolist()


def test_logps_pair_keeps_float64():
    record = Logps.pair(torch.tensor([-3.1], dtype=F64), torch.tensor([-5.0], dtype=F64), 2.0, 4.0)
    assert record.sum.dtype == F64 and record.sum[0, 0].item() == -3.1
    assert record.length.tolist() == [[2.0, 4.0]]
