"""Unit tests of curry_dpo, adpo, adpo_listwise and brain: hand-worked values, gradients, reductions.

Expected numbers are worked by hand with `math` from offline.md §4, §5, §16 (or the equation in the
method's docstring), never by calling the method under test. All tensors are float64.

The pairwise worked example (as in test_methods_core.py):
    lp(y_w) = -3, lp(y_l) = -5, lpr(y_w) = -4, lpr(y_l) = -4.5, |y_w| = 2, |y_l| = 4
    Delta_w = 1, Delta_l = -0.5;  per token: avg_w - avgr_w = -1.5 + 2 = 0.5, avg_l - avgr_l = -1.25 + 1.125 = -0.125
"""
from __future__ import annotations

import math

import pytest
import torch

from handworked import F64, assert_same_loss_and_gradient, ell, sigmoid
from preftune.methods import get
from preftune.records import Logps


def softmax(xs):
    top = max(xs)
    e = [math.exp(x - top) for x in xs]
    return [v / sum(e) for v in e]


def record(sums, lengths=None, requires_grad=False) -> Logps:
    sums = torch.tensor(sums, dtype=F64).reshape(-1, len(sums[0]) if isinstance(sums[0], list) else len(sums))
    length = torch.ones_like(sums) if lengths is None else torch.tensor(lengths, dtype=F64).expand_as(sums).clone()
    return Logps(sum=sums.requires_grad_(requires_grad), length=length)


def example(requires_grad=False):
    return (record([-3.0, -5.0], [2.0, 4.0], requires_grad), record([-4.0, -4.5], [2.0, 4.0]))


def random_lists(n: int, k: int, seed: int = 0, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    length = torch.randint(1, 9, (n, k), generator=g).to(F64)
    policy = -3.0 * length * torch.rand(n, k, generator=g, dtype=F64)
    reference = policy + torch.randn(n, k, generator=g, dtype=F64)
    scores = torch.randn(n, k, generator=g, dtype=F64)
    return (Logps(sum=policy.requires_grad_(requires_grad), length=length), Logps(sum=reference, length=length),
            scores)


def twin(logps: Logps) -> Logps:
    """An independent leaf with the same values (to compare gradients of two losses)."""
    return Logps(sum=logps.sum.detach().clone().requires_grad_(True), length=logps.length)


# --------------------------------------------------------------------------- curry_dpo

@pytest.mark.method("curry_dpo", "value")
def test_curry_dpo_value_is_the_dpo_loss_of_the_pair():
    # offline.md §4: the loss is plain DPO; h = 0.5 * (1 - (-0.5)) = 0.75.
    policy, reference = example()
    out = get("curry_dpo").fn(policy, reference, beta=0.5)
    assert out.loss.item() == pytest.approx(ell(0.75), abs=1e-12)
    assert out.rewards[0].tolist() == pytest.approx([0.5, -0.25], abs=1e-12)
    assert out.metrics["accuracy"].item() == 1.0


@pytest.mark.method("curry_dpo", "reduction")
def test_curry_dpo_is_dpo_in_value_and_gradient():
    policy, reference, _ = random_lists(64, 2, requires_grad=True)
    other = twin(policy)
    got = get("curry_dpo").fn(policy, reference, beta=0.3).loss
    want = get("dpo").fn(other, reference, beta=0.3).loss
    assert torch.equal(got, want)
    got.sum().backward()
    want.sum().backward()
    assert torch.equal(policy.sum.grad, other.sum.grad)


# --------------------------------------------------------------------------- adpo (pairwise)

@pytest.mark.method("adpo", "value")
@pytest.mark.parametrize("q, normalise, u", [
    (1.0, False, 0.75),     # u = (1 - (-0.5)) / tau = 1.5 / 2
    (0.8, False, 0.75),
    (0.8, True, 0.3125),    # u = (0.5 - (-0.125)) / 2
], ids=["hard", "soft", "soft-per-token"])
def test_adpo_hand_worked_value(q, normalise, u):
    policy, reference = example()
    out = get("adpo").fn(policy, reference, tau=2.0, q=q, length_normalize=normalise)
    assert out.loss.item() == pytest.approx(q * ell(u) + (1 - q) * ell(-u), abs=1e-12)
    assert out.metrics["win_mass"].item() == pytest.approx(sigmoid(u), abs=1e-12)
    expected_rewards = [0.25, -0.0625] if normalise else [0.5, -0.25]  # (s - a) / tau
    assert out.rewards[0].tolist() == pytest.approx(expected_rewards, abs=1e-12)
    assert out.metrics["margin"].item() == pytest.approx(u, abs=1e-12)


@pytest.mark.method("adpo", "gradient")
def test_adpo_gradient():
    # dL/du = -q sigmoid(-u) + (1 - q) sigmoid(u); du/dlp_w = 1/tau, du/dlp_l = -1/tau.
    policy, reference = example(requires_grad=True)
    get("adpo").fn(policy, reference, tau=2.0, q=0.8).loss.sum().backward()
    dl_du = -0.8 * sigmoid(-0.75) + 0.2 * sigmoid(0.75)
    assert policy.sum.grad[0].tolist() == pytest.approx([dl_du / 2, -dl_du / 2], abs=1e-12)


@pytest.mark.method("adpo", "reduction")
@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_adpo_hard_label_with_tau_one_over_beta_is_dpo(beta):
    # offline.md §5 Test 1: K = 2, q = 1, anchor = ref, tau = 1/beta equals DPO (to 1e-6; here 1e-12).
    policy, reference, _ = random_lists(64, 2, requires_grad=True)
    other = twin(policy)
    got = get("adpo").fn(policy, reference, tau=1 / beta, q=1.0).loss
    want = get("dpo").fn(other, reference, beta=beta).loss
    assert_same_loss_and_gradient(got, want, policy, other)


@pytest.mark.method("adpo", "reduction")
def test_adpo_soft_label_is_cdpo():
    policy, reference, _ = random_lists(64, 2)
    got = get("adpo").fn(policy, reference, tau=1 / 0.3, q=0.9).loss
    want = get("cdpo").fn(policy, reference, beta=0.3, label_smoothing=0.1).loss
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.method("adpo", "reduction")
@pytest.mark.method("adpo_listwise", "reduction")
@pytest.mark.parametrize("name", ["adpo", "adpo_listwise"])
def test_adding_a_constant_to_every_score_of_a_group_changes_nothing(name):
    # offline.md §5 Test 2: groupwise shift invariance, on the policy scores and on the anchor.
    k = 2 if name == "adpo" else 4
    policy, reference, scores = random_lists(32, k, seed=2)
    extras = {} if name == "adpo" else {"scores": scores}
    base = get(name).fn(policy, reference, tau=0.7, **extras).loss
    shift = torch.linspace(-50, 50, 32, dtype=F64).unsqueeze(-1)  # a different constant per group
    moved = get(name).fn(Logps(sum=policy.sum + shift, length=policy.length), reference, tau=0.7, **extras).loss
    anchored = get(name).fn(policy, Logps(sum=reference.sum - shift, length=reference.length), tau=0.7, **extras).loss
    torch.testing.assert_close(moved, base, rtol=0, atol=1e-11)
    torch.testing.assert_close(anchored, base, rtol=0, atol=1e-11)
    # ... while a constant added to one response only does change it.
    lopsided = policy.sum.clone()
    lopsided[:, 0] += 1.0
    assert not torch.allclose(get(name).fn(Logps(sum=lopsided, length=policy.length), reference, tau=0.7,
                                           **extras).loss, base)


# --------------------------------------------------------------------------- adpo_listwise

# A group of three: policy sums (-1, -2, -3), anchor (-1.5, -1.5, -2.5): s - a = (0.5, -0.5, -0.5);
# tau = 0.5: u = (1, -1, -1); log p_i = u_i - log(e + 2/e). Rewards (2, 0, 1).
U3 = [1.0, -1.0, -1.0]
LOG_P3 = [u - math.log(math.e + 2 / math.e) for u in U3]
SCORES3 = [2.0, 0.0, 1.0]


def group3(requires_grad=False):
    return record([-1.0, -2.0, -3.0], None, requires_grad), record([-1.5, -1.5, -2.5])


def cross_entropy(q):
    return -sum(qi * lp for qi, lp in zip(q, LOG_P3))


def kde_target(scores, h, beta_r):
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    z = [(s - mean) / std for s in scores]
    smoothed = [sum(math.exp(-(a - b) ** 2 / (2 * h * h)) * b for b in z) /
                sum(math.exp(-(a - b) ** 2 / (2 * h * h)) for b in z) for a in z]
    return softmax([s / beta_r for s in smoothed])


def standardised(scores):
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    return [(s - mean) / std for s in scores]


LISTWISE_VALUES = [
    # softmax target, beta_r = 1: q = softmax(2, 0, 1).
    pytest.param(dict(), cross_entropy(softmax([2.0, 0.0, 1.0])), id="softmax"),
    # beta_r = 0.25 sharpens the target: q = softmax(8, 0, 4).
    pytest.param(dict(reward_temperature=0.25), cross_entropy(softmax([8.0, 0.0, 4.0])), id="softmax-sharp"),
    # z-scored rewards: mean 1, std sqrt(2/3): z = (1.2247, -1.2247, 0).
    pytest.param(dict(standardize=True, reward_temperature=0.5),
                 cross_entropy(softmax([2 * z for z in standardised(SCORES3)])), id="standardised"),
    # top1: q one-hot on the best item, L = -log p_0.
    pytest.param(dict(target="top1"), -LOG_P3[0], id="top1"),
    pytest.param(dict(target="kde", kde_bandwidth=0.7, reward_temperature=0.5),
                 cross_entropy(kde_target(SCORES3, 0.7, 0.5)), id="kde"),
    # Plackett-Luce over the items sorted by reward: order (0, 2, 1) with u = (1, -1, -1):
    #   -[(1 - log(e + 2/e)) + (-1 - log(2/e))] = log(e + 2/e) - 1 + log 2.
    pytest.param(dict(loss_type="plackett_luce"), math.log(math.e + 2 / math.e) - 1 + math.log(2), id="plackett-luce"),
]


@pytest.mark.method("adpo_listwise", "value")
@pytest.mark.parametrize("params, expected", LISTWISE_VALUES)
def test_adpo_listwise_hand_worked_value(params, expected):
    policy, reference = group3()
    out = get("adpo_listwise").fn(policy, reference, scores=torch.tensor([SCORES3], dtype=F64), tau=0.5, **params)
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert out.rewards[0].tolist() == pytest.approx(U3, abs=1e-12)
    # WinMass: p_theta of the best-rewarded item (item 0); the policy ranks it first.
    assert out.metrics["win_mass"].item() == pytest.approx(math.exp(LOG_P3[0]), abs=1e-12)
    assert out.metrics["top1_accuracy"].item() == 1.0


@pytest.mark.method("adpo_listwise", "value")
def test_kde_target_limits():
    scores = torch.tensor([[2.0, 0.0, 1.0, 1.1]], dtype=F64)
    from preftune.methods.adpo import listwise_target

    # A tiny bandwidth leaves the z-scores alone (the standardised softmax) ...
    narrow = listwise_target(scores, "kde", 0.5, kde_bandwidth=1e-3)
    torch.testing.assert_close(narrow, listwise_target(scores, "softmax", 0.5, standardize=True), rtol=0, atol=1e-12)
    # ... a huge one pools everything (uniform), and in between the two close rewards 1.0 and 1.1 get
    # closer target masses than the plain softmax gives them.
    torch.testing.assert_close(listwise_target(scores, "kde", 0.5, kde_bandwidth=1e4),
                               torch.full((1, 4), 0.25, dtype=F64), rtol=0, atol=1e-6)
    mid = listwise_target(scores, "kde", 0.5, kde_bandwidth=0.6)
    assert (mid[0, 3] / mid[0, 2]).item() < (narrow[0, 3] / narrow[0, 2]).item()


@pytest.mark.method("adpo_listwise", "gradient")
def test_adpo_listwise_gradient_is_p_minus_q_over_tau():
    policy, reference = group3(requires_grad=True)
    get("adpo_listwise").fn(policy, reference, scores=torch.tensor([SCORES3], dtype=F64), tau=0.5).loss.sum().backward()
    q, p = softmax([2.0, 0.0, 1.0]), [math.exp(v) for v in LOG_P3]
    assert policy.sum.grad[0].tolist() == pytest.approx([(pi - qi) / 0.5 for pi, qi in zip(p, q)], abs=1e-12)


@pytest.mark.method("adpo_listwise", "reduction")
@pytest.mark.parametrize("beta_r", [0.3, 1.0, 4.0])
def test_two_item_listwise_is_pairwise_with_the_reward_gap_label(beta_r):
    # offline.md §5 Test 4: K = 2 listwise == pairwise, q = softmax(r/beta_r)_w = sigmoid((r_w - r_l)/beta_r).
    policy, reference, scores = random_lists(32, 2, seed=4)
    listwise = get("adpo_listwise").fn(policy, reference, scores=scores, tau=0.8, reward_temperature=beta_r).loss
    for i in range(32):
        # The pairwise form needs the better-rewarded response first.
        order = [0, 1] if scores[i, 0] >= scores[i, 1] else [1, 0]
        q = sigmoid(abs(float(scores[i, 0] - scores[i, 1])) / beta_r)
        pairwise = get("adpo").fn(policy.select([i]).responses(order), reference.select([i]).responses(order),
                                  tau=0.8, q=q).loss
        assert listwise[i].item() == pytest.approx(pairwise.item(), abs=1e-12)


@pytest.mark.method("adpo_listwise", "reduction")
@pytest.mark.parametrize("params", [dict(target="top1"), dict(loss_type="plackett_luce")], ids=["top1", "plackett-luce"])
def test_two_item_hard_listwise_is_dpo(params):
    policy, reference, scores = random_lists(32, 2, seed=5)
    scores = torch.tensor([[1.0, 0.0]], dtype=F64).expand(32, 2)
    got = get("adpo_listwise").fn(policy, reference, scores=scores, tau=5.0, **params).loss
    torch.testing.assert_close(got, get("dpo").fn(policy, reference, beta=0.2).loss, rtol=0, atol=1e-12)


def test_adpo_rejects_bad_settings():
    policy, reference = example()
    with pytest.raises(ValueError, match="probability"):
        get("adpo").fn(policy, reference, q=1.5)
    with pytest.raises(ValueError, match="tau must be positive"):
        get("adpo").fn(policy, reference, tau=0.0)
    with pytest.raises(ValueError, match="loss_type"):
        get("adpo_listwise").fn(policy, reference, scores=torch.zeros(1, 2, dtype=F64), loss_type="listnet")


# --------------------------------------------------------------------------- brain

# n = 3 samples: policy lp = (-2, -3, -1), p_SFT = reference lpr = (-2.5, -2, -1.5),
# proposal lq = (-2, -2.5, -1), rewards r = (1, 0, -1), beta_post = 0.5:
#   alpha = softmax(lpr + r/beta_post - lq) = softmax(-2.5 + 2 + 2, -2 + 0 + 2.5, -1.5 - 2 + 1) = softmax(1.5, 0.5, -2.5)
#   b     = softmax(lp - lq) = softmax(0, -0.5, 0)
LP, LPR, LQ, R = [-2.0, -3.0, -1.0], [-2.5, -2.0, -1.5], [-2.0, -2.5, -1.0], [1.0, 0.0, -1.0]
ALPHA = softmax([1.5, 0.5, -2.5])
B = softmax([0.0, -0.5, 0.0])


def brain_inputs(requires_grad=False):
    return (record(LP, None, requires_grad), record(LPR), torch.tensor([R], dtype=F64), torch.tensor([LQ], dtype=F64))


@pytest.mark.method("brain", "value")
def test_brain_hand_worked_value():
    policy, reference, scores, proposal = brain_inputs()
    out = get("brain").fn(policy, reference, scores=scores, proposal_logps=proposal, beta_post=0.5)
    assert out.loss.item() == pytest.approx(-sum(a * math.log(b) for a, b in zip(ALPHA, B)), abs=1e-12)
    assert out.metrics["ess"].item() == pytest.approx(1 / sum(a * a for a in ALPHA) / 3, abs=1e-12)
    assert out.metrics["sn_kl"].item() == pytest.approx(sum(a * math.log(a / b) for a, b in zip(ALPHA, B)), abs=1e-12)
    assert out.rewards[0].tolist() == pytest.approx([0.5, -1.0, 0.5], abs=1e-12)  # beta * (lp - lpr), beta = 1


@pytest.mark.method("brain", "value")
def test_brain_takes_the_proposal_as_a_record_of_an_auxiliary_model():
    policy, reference, scores, proposal = brain_inputs()
    as_tensor = get("brain").fn(policy, reference, scores=scores, proposal_logps=proposal).loss
    as_record = get("brain").fn(policy, reference, scores=scores, proposal_logps=record(LQ)).loss
    assert torch.equal(as_tensor, as_record)


@pytest.mark.method("brain", "gradient")
@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_brain_gradient_is_minus_alpha_minus_b(beta):
    # offline.md §16 Test 1: autograd of the surrogate == -sum_i (alpha_i - b_i) grad log pi(y_i), times beta
    # for the [recon] temperature (b = softmax(beta (lp - lpr) + lpr - lq), which is softmax(lp - lq) at beta 1).
    policy, reference, scores, proposal = brain_inputs(requires_grad=True)
    get("brain").fn(policy, reference, scores=scores, proposal_logps=proposal, beta_post=0.5,
                    beta=beta).loss.sum().backward()
    b = softmax([beta * (lp - lpr) + lpr - lq for lp, lpr, lq in zip(LP, LPR, LQ)])
    assert policy.sum.grad[0].tolist() == pytest.approx([-beta * (a - bi) for a, bi in zip(ALPHA, b)], abs=1e-12)


@pytest.mark.method("brain", "gradient")
def test_brain_gradient_vanishes_exactly_at_the_posterior():
    # All arms enumerated, uniform proposal: b = pi, so the gradient is 0 iff pi = alpha = posterior.
    ref = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=F64).log()
    r = torch.tensor([[1.0, 0.4, -0.3, -1.1]], dtype=F64)
    posterior = torch.log_softmax(ref + r[0] / 0.5, -1)
    uniform = torch.full((1, 4), math.log(0.25), dtype=F64)
    at = record(posterior.tolist(), None, requires_grad=True)
    get("brain").fn(at, record(ref.tolist()), scores=r, proposal_logps=uniform, beta_post=0.5).loss.sum().backward()
    assert at.sum.grad.abs().max().item() < 1e-15
    # Plain gradient descent on the logits from the reference converges to the posterior.
    logits = ref.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([logits], lr=2.0)
    for _ in range(2000):
        optimizer.zero_grad()
        policy = Logps(sum=torch.log_softmax(logits, -1).unsqueeze(0), length=torch.ones(1, 4, dtype=F64))
        get("brain").fn(policy, record(ref.tolist()), scores=r, proposal_logps=uniform, beta_post=0.5).loss.sum().backward()
        optimizer.step()
    torch.testing.assert_close(torch.softmax(logits.detach(), -1), posterior.exp(), rtol=0, atol=1e-8)


@pytest.mark.method("brain", "gradient")
@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_brain_optimum_does_not_depend_on_the_proposal_at_any_beta(beta):
    # All arms enumerated, a non-uniform proposal q': the gradient vanishes at
    # pi = pi_ref exp(r / (beta beta_post)) / Z whatever q' is (the importance weights cancel q'), which is
    # the posterior p_SFT exp(r / beta_post) / Z at beta = 1.
    ref = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=F64).log()
    r = torch.tensor([[1.0, 0.4, -0.3, -1.1]], dtype=F64)
    optimum = torch.log_softmax(ref + r[0] / (beta * 0.5), -1)
    for q in ([0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]):
        at = record(optimum.tolist(), None, requires_grad=True)
        get("brain").fn(at, record(ref.tolist()), scores=r, proposal_logps=torch.tensor([q], dtype=F64).log(),
                        beta_post=0.5, beta=beta).loss.sum().backward()
        assert at.sum.grad.abs().max().item() < 1e-14, q


@pytest.mark.method("brain", "reduction")
@pytest.mark.parametrize("beta", [1.0, 0.1])
def test_brain_two_samples_argmax_with_the_reference_as_proposal_is_dpo(beta):
    # offline.md §16 Test 3: n = 2, q' = p_SFT = pi_ref, alpha one-hot on the higher reward: l(beta Delta);
    # the paper states it at beta = 1, beta = 0.1 is the [recon] temperature.
    policy, reference, _ = random_lists(64, 2, seed=6, requires_grad=True)
    other = twin(policy)
    scores = torch.tensor([[0.7, -0.2]], dtype=F64).expand(64, 2)
    got = get("brain").fn(policy, reference, scores=scores, proposal_logps=reference, posterior="argmax",
                          beta=beta).loss
    want = get("dpo").fn(other, reference, beta=beta).loss
    assert_same_loss_and_gradient(got, want, policy, other)


@pytest.mark.method("brain", "reduction")
def test_brain_argmax_shares_the_target_between_tied_best_samples():
    policy, reference, scores, proposal = brain_inputs()
    tied = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
    out = get("brain").fn(policy, reference, scores=tied, proposal_logps=proposal, posterior="argmax")
    assert out.loss.item() == pytest.approx(-0.5 * math.log(B[0]) - 0.5 * math.log(B[1]), abs=1e-12)
    with pytest.raises(ValueError, match="posterior"):
        get("brain").fn(policy, reference, scores=tied, proposal_logps=proposal, posterior="mean")
