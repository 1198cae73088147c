"""Unit tests of the diffusion methods: hand-worked values and reductions to their parents.

Expected numbers are worked by hand with `math` from diffusion.md (or the equation in the method's
docstring), never by calling the method under test. Records are float64.

The pairwise worked example: E_theta = (0.30, 0.50), E_ref = (0.35, 0.45), so Delta_w = -0.05,
Delta_l = +0.05 and the Diffusion-DPO argument is -(beta/2)(Delta_w - Delta_l) = 0.05 beta.
"""
from __future__ import annotations

import math

import pytest
import torch

from handworked import F64, assert_same_loss_and_gradient, ell, sigmoid
from preftune.diffusion.methods.d3po import pareto_preference
from preftune.diffusion.methods.dense_dpo import latent_frame_segments, segment_errors
from preftune.diffusion.methods.rankdpo import dcg_weights
from preftune.diffusion.methods.common import group_advantages
from preftune.diffusion.records import Denoise, Steps
from preftune.methods import get
from preftune.records import Logps


def denoise(errors, requires_grad=False, **fields) -> Denoise:
    error = torch.tensor(errors, dtype=F64).reshape(-1, len(errors[0]) if isinstance(errors[0], list) else len(errors))
    return Denoise(error.requires_grad_(requires_grad), **fields)


def pair(requires_grad=False):
    return denoise([0.30, 0.50], requires_grad), denoise([0.35, 0.45])


def fn(name):
    return get(name).fn


def random_records(n=32, k=2, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    policy = (0.2 + torch.rand(n, k, generator=g, dtype=F64)).requires_grad_(requires_grad)
    reference = policy.detach() + 0.05 * torch.randn(n, k, generator=g, dtype=F64)
    return Denoise(policy), Denoise(reference)


def twin(record: Denoise) -> Denoise:
    return Denoise(record.error.detach().clone().requires_grad_(True))


def as_logps(record: Denoise) -> Logps:
    """The ELBO surrogate as a log-likelihood: log p = -E (length 1)."""
    return Logps(sum=-record.error, length=torch.ones_like(record.error))


# --------------------------------------------------------------------------- diffusion_dpo

@pytest.mark.method("diffusion_dpo", "value")
def test_diffusion_dpo_value():
    policy, reference = pair()
    out = fn("diffusion_dpo")(policy, reference, beta=10.0)
    assert out.loss.item() == pytest.approx(ell(0.5), abs=1e-12)
    assert out.rewards[0].tolist() == pytest.approx([0.25, -0.25], abs=1e-12)
    assert out.metrics["accuracy"].item() == 1.0


@pytest.mark.method("diffusion_dpo", "reduction")
def test_diffusion_dpo_is_dpo_on_the_elbo_surrogate_with_half_beta():
    # diffusion.md §1: the code form's -(beta/2)[Delta_w - Delta_l] is DPO's beta' (log-ratio gap) with
    # log p = -E and beta' = beta/2.
    policy, reference = random_records()
    other = twin(policy)
    got = fn("diffusion_dpo")(policy, reference, beta=40.0).loss
    want = fn("dpo")(as_logps(other), as_logps(reference), beta=20.0).loss
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(policy.error.grad, other.error.grad, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- d3po

def steps(logps, requires_grad=False):
    return Steps(torch.tensor([logps], dtype=F64).requires_grad_(requires_grad))


@pytest.mark.method("d3po", "value")
@pytest.mark.parametrize("preference, clip, expected_inside", [
    (1.0, 0.1, 0.1 * (math.log(1.1) - math.log(0.9))),   # both ratios clipped: exp(0.2) > 1.1, exp(-0.3) < 0.9
    (-1.0, 0.5, 0.1 * (-0.2 - 0.3)),                      # within 1 +- 0.5: plain log-ratios, sample 1 preferred
    (0.0, 0.1, 0.0),                                      # a tie: log 2
])
def test_d3po_value(preference, clip, expected_inside):
    policy, reference = steps([-1.0, -2.0]), steps([-1.2, -1.7])   # log-ratios +0.2 and -0.3
    out = fn("d3po")(policy, reference, preference=torch.tensor([preference], dtype=F64), beta=0.1, clip=clip)
    assert out.loss.item() == pytest.approx(ell(expected_inside), abs=1e-12)


@pytest.mark.method("d3po", "reduction")
def test_d3po_without_clipping_is_dpo_on_step_log_probs():
    g = torch.Generator().manual_seed(1)
    logp = torch.randn(16, 2, generator=g, dtype=F64).requires_grad_(True)
    reference = Steps(logp.detach() + 0.3 * torch.randn(16, 2, generator=g, dtype=F64))
    other = logp.detach().clone().requires_grad_(True)
    got = fn("d3po")(Steps(logp), reference, preference=torch.ones(16, dtype=F64), beta=0.7, clip=float("inf")).loss
    want = fn("dpo")(Logps(sum=other, length=torch.ones_like(other)), Logps(sum=reference.logp, length=torch.ones_like(other)),
                     beta=0.7).loss
    assert_same_loss_and_gradient(got, want, Logps(sum=logp, length=logp), Logps(sum=other, length=other))


def test_pareto_preference_labels_dominance_and_ties():
    rewards = torch.tensor([[[1.0, 2.0], [0.5, 2.0]],     # 0 dominates (>= both, > one)
                            [[1.0, 1.0], [2.0, 0.0]],     # neither
                            [[0.0, 0.0], [0.0, 0.1]],     # 1 dominates
                            [[1.0, 1.0], [1.0, 1.0]]])    # equal: tie
    assert pareto_preference(rewards).tolist() == [1.0, 0.0, -1.0, 0.0]
    assert pareto_preference(torch.tensor([[2.0, 1.0], [1.0, 1.0]])).tolist() == [1.0, 0.0]


# --------------------------------------------------------------------------- diffusion_dro

@pytest.mark.method("diffusion_dro", "value")
def test_diffusion_dro_value_is_the_hinge():
    policy, reference = pair()   # A_e = -0.05, A_pi = +0.05
    out = fn("diffusion_dro")(policy, reference, margin=0.2)
    assert out.loss.item() == pytest.approx(-0.05 - 0.05 + 0.2, abs=1e-12)
    assert fn("diffusion_dro")(policy, reference, margin=0.05).loss.item() == 0.0


@pytest.mark.method("diffusion_dro", "reduction")
def test_diffusion_dro_with_an_active_hinge_is_the_linear_ranking_loss():
    # While the hinge is active the loss is (A_e - A_pi) + m: its gradient is DSO-DRO's (E_e - E_pi).
    policy, reference = random_records(seed=2)
    other = twin(policy)
    got = fn("diffusion_dro")(policy, reference, margin=10.0).loss
    want = fn("dso_dro")(other).loss - (reference.error[:, 0] - reference.error[:, 1]) + 10.0
    assert_same_loss_and_gradient(got, want, Logps(sum=policy.error, length=policy.error),
                                  Logps(sum=other.error, length=other.error))


# --------------------------------------------------------------------------- smpo

@pytest.mark.method("smpo", "value")
def test_smpo_value_with_the_code_constants():
    policy, reference = pair()
    scores = torch.tensor([[0.25, 0.20]], dtype=F64)
    kappa = 10 * (2 * sigmoid(0.05 / (0.28202 - 0.11544)) - 1)
    out = fn("smpo")(policy, reference, scores=scores, beta=10.0)
    assert out.loss.item() == pytest.approx(ell(kappa * 0.5), abs=1e-12)
    assert out.metrics["kappa"].item() == pytest.approx(kappa, abs=1e-12)
    swapped = fn("smpo")(policy, reference, scores=scores.flip(1), beta=10.0)  # relabelled by reward
    assert swapped.loss.item() == pytest.approx(ell(-kappa * 0.5), abs=1e-12)
    kept = fn("smpo")(policy, reference, scores=scores.flip(1), beta=10.0, relabel=False)
    assert kept.loss.item() == pytest.approx(ell(kappa * 0.5), abs=1e-12)


@pytest.mark.method("smpo", "reduction")
def test_smpo_with_kappa_one_is_diffusion_dpo():
    policy, reference = random_records(seed=3)
    other = twin(policy)
    margin = 0.1
    scores = torch.tensor([[margin, 0.0]], dtype=F64).expand(32, 2)
    scale = 1 / (2 * sigmoid(margin) - 1)   # kappa = 1 with normalisers low = 0, high = 1
    got = fn("smpo")(policy, reference, scores=scores, beta=30.0, scale=scale, score_low=0.0, score_high=1.0).loss
    want = fn("diffusion_dpo")(other, reference, beta=30.0).loss
    assert_same_loss_and_gradient(got, want, Logps(sum=policy.error, length=policy.error),
                                  Logps(sum=other.error, length=other.error), atol=1e-10)


# --------------------------------------------------------------------------- rankdpo

@pytest.mark.method("rankdpo", "value")
def test_rankdpo_value_of_a_three_list():
    # Errors (0.30, 0.50, 0.40) vs ref (0.35, 0.45, 0.40): s = -(beta/2) Delta = (0.25, -0.25, 0) at beta 10.
    policy, reference = denoise([0.30, 0.50, 0.40]), denoise([0.35, 0.45, 0.40])
    psi = [1.0, 0.0, 0.5]
    s = [0.25, -0.25, 0.0]
    tau = [1, 3, 2]          # ranks by s
    gain = [2 ** p - 1 for p in psi]
    inv = [1 / math.log(1 + r) for r in tau]
    expected = 0.0
    for i in range(3):
        for j in range(3):
            if psi[i] > psi[j]:
                expected += abs(gain[i] - gain[j]) * abs(inv[i] - inv[j]) * ell(s[i] - s[j])
    out = fn("rankdpo")(policy, reference, scores=torch.tensor([psi], dtype=F64), beta=10.0)
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert out.metrics["accuracy"].item() == 1.0


@pytest.mark.method("rankdpo", "reduction")
def test_rankdpo_with_two_samples_is_weighted_diffusion_dpo():
    policy, reference = random_records(seed=4)
    other = twin(policy)
    g = torch.Generator().manual_seed(5)
    scores = torch.rand(32, 2, generator=g, dtype=F64)
    got = fn("rankdpo")(policy, reference, scores=scores, beta=20.0).loss
    order = (scores[:, 0] >= scores[:, 1])
    weight = (2 ** scores[:, 0] - 2 ** scores[:, 1]).abs() * abs(1 / math.log(2) - 1 / math.log(3))
    # Diffusion-DPO on the pair put in score order.
    winner = torch.where(order, other.error[:, 0], other.error[:, 1])
    loser = torch.where(order, other.error[:, 1], other.error[:, 0])
    ref_w = torch.where(order, reference.error[:, 0], reference.error[:, 1])
    ref_l = torch.where(order, reference.error[:, 1], reference.error[:, 0])
    want = weight * fn("diffusion_dpo")(Denoise(torch.stack([winner, loser], -1)),
                                        Denoise(torch.stack([ref_w, ref_l], -1)), beta=20.0).loss
    assert_same_loss_and_gradient(got, want, Logps(sum=policy.error, length=policy.error),
                                  Logps(sum=other.error, length=other.error))


def test_dcg_weights_options_and_no_gradient():
    scores = torch.tensor([[1.0, 0.0, 0.5]], dtype=F64)
    implicit = torch.tensor([[0.0, 1.0, 2.0]], dtype=F64, requires_grad=True)
    w = dcg_weights(scores, implicit)
    assert not w.requires_grad
    # rank by model: tau = (3, 2, 1); weight(0, 1) = |1 - 0| * |1/ln 4 - 1/ln 3|
    assert w[0, 0, 1].item() == pytest.approx(abs(1 / math.log(4) - 1 / math.log(3)), abs=1e-12)
    by_labels = dcg_weights(scores, implicit, rank_by="labels", discount="log2")
    assert by_labels[0, 0, 1].item() == pytest.approx(abs(1 / math.log2(2) - 1 / math.log2(4)), abs=1e-12)
    with pytest.raises(ValueError, match="discount"):
        dcg_weights(scores, implicit, discount="log10")


# --------------------------------------------------------------------------- dso_dro

@pytest.mark.method("dso_dro", "value")
def test_dso_dro_value_and_floor():
    policy, _ = pair()
    assert fn("dso_dro")(policy).loss.item() == pytest.approx(0.30 - 0.50, abs=1e-12)
    assert fn("dso_dro")(policy, floor=0.1).loss.item() == pytest.approx(-0.1, abs=1e-12)


@pytest.mark.method("dso_dro", "reduction")
def test_dso_dro_is_diffusion_dpo_linearised_at_the_reference():
    # diffusion.md §6: at theta = ref, grad L_DiffDPO = (beta/4) grad L_DRO, per example.
    policy, _ = random_records(seed=6)
    other = twin(policy)
    dpo = fn("diffusion_dpo")(policy, Denoise(policy.error.detach()), beta=8.0).loss
    dro = 8.0 / 4 * fn("dso_dro")(other).loss
    dpo.sum().backward()
    dro.sum().backward()
    torch.testing.assert_close(policy.error.grad, other.error.grad, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- ddo

@pytest.mark.method("ddo", "value")
def test_ddo_value():
    policy, reference = pair()   # l = -Delta = (+0.05, -0.05): real 0.05, fake -0.05
    out = fn("ddo")(policy, reference, alpha=2.0, beta=10.0)
    expected = ell(0.5) + 2.0 * ell(0.5)   # softplus(-0.5) + 2 softplus(10 * -0.05)
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert out.metrics["d_real"].item() == pytest.approx(sigmoid(0.5), abs=1e-12)


@pytest.mark.method("ddo", "reduction")
def test_ddo_without_fakes_is_dpo_against_an_unmoved_sample():
    # alpha = 0 keeps the real term -log sigmoid(beta l_real): DPO whose rejected response keeps its
    # reference log-probability (log p = -E).
    policy, reference = random_records(seed=7)
    other = twin(policy)
    got = fn("ddo")(policy, reference, alpha=0.0, beta=3.0).loss
    fixed = torch.stack([other.error[:, 0], reference.error[:, 1]], -1)
    want = fn("dpo")(as_logps(Denoise(fixed)), as_logps(reference), beta=3.0).loss
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(policy.error.grad[:, 0], other.error.grad[:, 0], rtol=0, atol=1e-12)
    assert policy.error.grad[:, 1].abs().max() == 0


# --------------------------------------------------------------------------- awm, ddpo, flow_grpo

@pytest.mark.method("awm", "value")
def test_awm_value_is_advantage_weighted_error_plus_drift():
    error = torch.tensor([[0.2, 0.4], [0.1, 0.3]], dtype=F64)
    prediction = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.5, 0.5]]], dtype=F64)
    ref_prediction = torch.zeros_like(prediction)
    advantages = torch.tensor([0.5, -1.0], dtype=F64)
    out = fn("awm")(Denoise(error, prediction=prediction), Denoise(error, prediction=ref_prediction),
                    advantages=advantages, beta=0.1)
    # On-policy rho = 1: L_pg = -A per draw; drift = mean ||v||^2 per example.
    assert out.loss.tolist() == pytest.approx([-0.5 + 0.1 * 0.5, 1.0 + 0.1 * (1.0 + 0.25) / 2], abs=1e-12)


@pytest.mark.method("awm", "reduction")
def test_awm_with_unit_advantages_has_the_flow_matching_gradient():
    policy, reference = random_records(k=4, seed=8)
    other = twin(policy)
    got = fn("awm")(policy, reference, advantages=torch.ones(32, dtype=F64), beta=0.0).loss
    got.sum().backward()
    other.error.mean(-1).sum().backward()   # the pretraining loss, mean over the J draws
    torch.testing.assert_close(policy.error.grad, other.error.grad, rtol=0, atol=1e-12)


@pytest.mark.method("ddpo", "value")
def test_ddpo_value_clipped_and_score_function():
    policy = steps([-1.0])
    out = fn("ddpo")(policy, advantages=torch.tensor([2.0], dtype=F64), old_logp=torch.tensor([-1.1], dtype=F64),
                     clip=0.05)
    ratio = math.exp(0.1)
    assert out.loss.item() == pytest.approx(max(-2.0 * ratio, -2.0 * 1.05), abs=1e-12)
    sf = fn("ddpo")(policy, advantages=torch.tensor([2.0], dtype=F64), old_logp=torch.tensor([-1.1], dtype=F64),
                    estimator="sf")
    assert sf.loss.item() == pytest.approx(2.0, abs=1e-12)


@pytest.mark.method("ddpo", "reduction")
def test_ddpo_importance_sampling_is_the_score_function_on_policy():
    g = torch.Generator().manual_seed(9)
    logp = torch.randn(16, 1, generator=g, dtype=F64).requires_grad_(True)
    other = logp.detach().clone().requires_grad_(True)
    advantages = torch.randn(16, generator=g, dtype=F64)
    fn("ddpo")(Steps(logp), advantages=advantages, old_logp=logp.detach()[:, 0]).loss.sum().backward()
    fn("ddpo")(Steps(other), advantages=advantages, old_logp=other.detach()[:, 0], estimator="sf").loss.sum().backward()
    torch.testing.assert_close(logp.grad, other.grad, rtol=0, atol=1e-12)


@pytest.mark.method("flow_grpo", "value")
def test_flow_grpo_value_adds_the_step_kl():
    policy = Steps(torch.tensor([[-1.0]], dtype=F64), mean=torch.tensor([[[0.3, 0.1]]], dtype=F64),
                   std=torch.tensor([[0.5]], dtype=F64))
    reference = Steps(torch.tensor([[-1.0]], dtype=F64), mean=torch.tensor([[[0.1, 0.1]]], dtype=F64),
                      std=torch.tensor([[0.5]], dtype=F64))
    out = fn("flow_grpo")(policy, reference, advantages=torch.tensor([1.0], dtype=F64),
                          old_logp=torch.tensor([-1.0], dtype=F64), beta=0.5)
    kl = (0.2 ** 2 / 2) / (2 * 0.25)
    assert out.loss.item() == pytest.approx(-1.0 + 0.5 * kl, abs=1e-12)


@pytest.mark.method("flow_grpo", "reduction")
def test_flow_grpo_without_kl_is_ddpo():
    g = torch.Generator().manual_seed(10)
    logp = torch.randn(8, 1, generator=g, dtype=F64)
    old = logp[:, 0] + 0.01 * torch.randn(8, generator=g, dtype=F64)
    advantages = torch.randn(8, generator=g, dtype=F64)
    got = fn("flow_grpo")(Steps(logp), Steps(logp), advantages=advantages, old_logp=old, beta=0.0, clip=0.005).loss
    want = fn("ddpo")(Steps(logp), advantages=advantages, old_logp=old, clip=0.005).loss
    assert torch.equal(got, want)


def test_group_advantages_normalise_within_prompts():
    rewards = torch.tensor([1.0, 3.0, 10.0, 14.0])
    groups = torch.tensor([0, 0, 1, 1])
    local = group_advantages(rewards, groups, global_std=False, eps=0.0)
    assert local.tolist() == pytest.approx([-1.0, 1.0, -1.0, 1.0])
    std = rewards.std(unbiased=False).item()
    assert group_advantages(rewards, groups, eps=0.0).tolist() == pytest.approx([-1 / std, 1 / std, -2 / std, 2 / std])
    assert group_advantages(torch.tensor([0.0, 100.0]), torch.tensor([0, 0]), clip=5.0, global_std=False,
                            eps=0.0).tolist() == [-1.0, 1.0]


# --------------------------------------------------------------------------- dense_dpo

@pytest.mark.method("dense_dpo", "value")
def test_dense_dpo_value_masks_ties():
    segments_policy = torch.tensor([[[0.30, 0.20, 0.10], [0.50, 0.20, 0.30]]], dtype=F64)
    segments_ref = torch.tensor([[[0.35, 0.20, 0.10], [0.45, 0.25, 0.20]]], dtype=F64)
    policy = Denoise(segments_policy.mean(-1), segments=segments_policy)
    reference = Denoise(segments_ref.mean(-1), segments=segments_ref)
    labels = torch.tensor([[1.0, 0.0, -1.0]], dtype=F64)
    # segment 0: Delta = (-0.05, 0.05), y = +1: inside = 0.5 at beta 10; segment 2: Delta = (0, 0.1), y = -1:
    # inside = -5 * -1 * (0 - 0.1) = -0.5.
    out = fn("dense_dpo")(policy, reference, segment_labels=labels, beta=10.0)
    assert out.loss.item() == pytest.approx((ell(0.5) + ell(-0.5)) / 2, abs=1e-12)
    summed = fn("dense_dpo")(policy, reference, segment_labels=labels, beta=10.0, normalise="sum")
    assert summed.loss.item() == pytest.approx(ell(0.5) + ell(-0.5), abs=1e-12)


@pytest.mark.method("dense_dpo", "reduction")
def test_dense_dpo_with_one_segment_is_diffusion_dpo():
    policy, reference = random_records(seed=11)
    other = twin(policy)
    got = fn("dense_dpo")(Denoise(policy.error, segments=policy.error[..., None]),
                          Denoise(reference.error, segments=reference.error[..., None]),
                          segment_labels=torch.ones(32, 1, dtype=F64), beta=25.0).loss
    want = fn("diffusion_dpo")(other, reference, beta=25.0).loss
    assert_same_loss_and_gradient(got, want, Logps(sum=policy.error, length=policy.error),
                                  Logps(sum=other.error, length=other.error))


def test_segment_map_and_errors():
    assert latent_frame_segments(8, 4).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert latent_frame_segments(9, 4, temporal_stride=4, causal_first_frame=True).tolist() == [0, 0, 1]
    squared = torch.tensor([[[1.0, 3.0], [5.0, 7.0], [9.0, 11.0]]])   # 3 frames x 2 dims
    assert segment_errors(squared, torch.tensor([0, 0, 1])).tolist() == [[4.0, 10.0]]


# --------------------------------------------------------------------------- cpo

@pytest.mark.method("cpo", "value")
def test_cpo_value_of_both_forms():
    policy, reference = pair()   # D_theta = -0.2, D_ref = -0.1
    sigmoid_form = fn("cpo")(policy, reference, beta=10.0, form="sigmoid", sft_weight=0.5)
    assert sigmoid_form.loss.item() == pytest.approx(ell(0.5) + 0.5 * 0.30, abs=1e-12)
    g_plus = sigmoid(5.0 * (-0.2 + 0.1))
    hinge = fn("cpo")(policy, reference, beta=10.0, margin=0.25, sft_weight=0.0)
    expected = 0.9 * g_plus * max(0.0, -0.2 + 0.25) + 0.1 * (1 - g_plus) * max(0.0, 0.2 + 0.25)
    assert hinge.loss.item() == pytest.approx(expected, abs=1e-12)
    at_zero = fn("cpo")(Denoise(policy.error, time=torch.zeros(1, 2, dtype=F64)), reference, beta=10.0, margin=0.25,
                        sft_weight=0.0)
    assert at_zero.loss.item() == 0.0   # the code masks pairs drawn at t = 0


@pytest.mark.method("cpo", "reduction")
def test_cpo_paper_form_is_diffusion_dpo_on_the_two_conditions():
    policy, reference = random_records(seed=12)
    other = twin(policy)
    got = fn("cpo")(policy, reference, beta=15.0, form="sigmoid", sft_weight=0.0).loss
    want = fn("diffusion_dpo")(other, reference, beta=15.0).loss
    assert_same_loss_and_gradient(got, want, Logps(sum=policy.error, length=policy.error),
                                  Logps(sum=other.error, length=other.error))


# --------------------------------------------------------------------------- registration

DIFFUSION_ROWS = {"d3po": "d3po", "diffusion-dro": "diffusion_dro", "smpo-diffusion": "smpo", "rankdpo": "rankdpo",
                  "dso-dro": "dso_dro", "ddo": "ddo", "awm": "awm", "dense-dpo": "dense_dpo", "cpo-condition": "cpo"}


@pytest.mark.parametrize("seed, name", sorted(DIFFUSION_ROWS.items()))
def test_each_diffusion_row_is_a_stable_diffusion_method(seed, name):
    spec = get(name)
    assert (spec.seed, spec.family, spec.status) == (seed, "diffusion", "stable")
    assert spec.check is not None


def test_methods_reject_a_wrong_number_of_samples():
    three = denoise([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="takes 2 samples"):
        fn("diffusion_dpo")(three, three)
