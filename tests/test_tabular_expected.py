"""The exact expected loss and the full-batch optimiser, against sums and optima written by hand."""
import pytest
import torch
import torch.nn.functional as F

import preftune.methods  # noqa: F401  (registers the methods)
from preftune.methods import build_objective
from preftune.tabular import (Bandit, Dataset, PreferenceModel, bradley_terry_fit, dpo_optimal_policy,
                              expected_loss, method_loss, objective_loss, optimise_policy, pairwise_dataset,
                              plackett_luce_dataset, pointwise_dataset, reference_pair_sampling, uniform_pair_sampling)

LOGITS = torch.tensor([[0.3, -1.2, 0.8, 0.1]], dtype=torch.float64)


def test_expected_dpo_loss_is_the_weighted_sum_over_ordered_pairs():
    bandit = Bandit.create([0.4, 0.3, 0.2, 0.1], [3, 1, 4, 2])
    P = PreferenceModel.bradley_terry([1.0, 0.4, -0.3, -1.1])
    mu = reference_pair_sampling(bandit)
    beta = 0.3
    delta = torch.log_softmax(LOGITS[0], 0) - bandit.ref_logp[0]
    by_hand = sum(mu[i, j] * P.matrix[i, j] * -F.logsigmoid(beta * (delta[i] - delta[j]))
                  for i in range(4) for j in range(4) if i != j) / mu.triu().sum()
    value = expected_loss(method_loss("dpo", beta=beta), bandit, pairwise_dataset(P, mu), LOGITS)
    assert value.item() == pytest.approx(by_hand.item(), abs=1e-15)


def test_objective_expected_loss_is_the_weighted_sum_of_its_terms():
    bandit = Bandit.create([0.4, 0.3, 0.2, 0.1], [3, 1, 4, 2])
    data = pairwise_dataset(PreferenceModel.bradley_terry([1.0, 0.4, -0.3, -1.1]))
    combined = expected_loss(objective_loss(build_objective("dpo + 0.2*sft")), bandit, data, LOGITS)
    parts = [expected_loss(method_loss(m), bandit, data, LOGITS) for m in ("dpo", "sft")]
    assert combined.item() == pytest.approx((parts[0] + 0.2 * parts[1]).item(), abs=1e-15)


def test_optimiser_reaches_dpo_closed_form_on_several_prompts():
    """Two prompts, different references and rewards, mixed 30/70: each prompt's optimum is its own
    pi_ref exp(r/beta)/Z, the sampling and the prompt weights notwithstanding."""
    refs = [[0.5, 0.25, 0.25], [0.1, 0.3, 0.6]]
    rewards = [[0.5, -0.2, 0.1], [-0.4, 0.3, 0.0]]
    bandit, beta = Bandit.create(refs, [[1, 2, 3], [2, 2, 5]]), 0.5
    data = Dataset.concat([pairwise_dataset(PreferenceModel.bradley_terry(r), reference_pair_sampling(bandit, x), x)
                           for x, r in enumerate(rewards)], weights=[0.3, 0.7])
    optimum = optimise_policy(method_loss("dpo", beta=beta), bandit, data)
    assert optimum.converged and optimum.grad_norm < 1e-12
    for x in range(2):
        assert torch.allclose(optimum.probs[x], dpo_optimal_policy(refs[x], rewards[x], beta), atol=1e-12)


def test_dpo_on_an_intransitive_matrix_fits_bradley_terry():
    """DPO's expected loss in s = beta * log(pi/pi_ref) is the BT log-likelihood, so its optimum is
    pi_ref exp(r_BT/beta) with r_BT the BT maximum-likelihood fit under the same pair sampling."""
    P = PreferenceModel.from_matrix([[0.5, 0.9, 0.4], [0.1, 0.5, 0.7], [0.6, 0.3, 0.5]])
    ref, beta = [0.6, 0.3, 0.1], 0.1
    bandit = Bandit.create(ref)
    optimum = optimise_policy(method_loss("dpo", beta=beta), bandit, pairwise_dataset(P))
    fit = bradley_terry_fit(P, uniform_pair_sampling(3))
    assert torch.allclose(optimum.probs[0], dpo_optimal_policy(ref, fit, beta), atol=1e-9)


def test_pointwise_dataset_weights_and_labels():
    data = pointwise_dataset([0.9, 0.0, 0.5], sampling=[1, 1, 2])
    assert data.responses.squeeze(-1).tolist() == [0, 2, 0, 1, 2]  # the impossible (1, desirable) row is dropped
    assert data.extras["label"].tolist() == [True, True, False, False, False]
    assert torch.allclose(data.weight, torch.tensor([0.225, 0.25, 0.025, 0.25, 0.25], dtype=torch.float64))


def test_pairwise_dataset_rejects_asymmetric_sampling():
    with pytest.raises(ValueError):
        pairwise_dataset(PreferenceModel.rock_paper_scissors(), torch.tensor([[0, 1, 1], [2, 0, 1], [1, 1, 0.]]))


def test_plackett_luce_rankings_have_bradley_terry_pairwise_marginals():
    """Luce's choice axiom: under Plackett-Luce, P(i ranked above j) = sigmoid(r_i - r_j) for any K."""
    rewards = [0.9, -0.4, 0.2, 1.3]
    data = plackett_luce_dataset(rewards)
    assert data.num_rows == 24 and data.weight.sum().item() == pytest.approx(1.0, abs=1e-15)
    position = data.responses.argsort(-1)  # position[m, k]: rank of response k in ranking m
    above = (position[:, :, None] < position[:, None, :]).double()
    marginal = torch.einsum("m,mij->ij", data.weight, above)
    bt = PreferenceModel.bradley_terry(rewards).matrix
    off_diagonal = ~torch.eye(4, dtype=torch.bool)
    assert torch.allclose(marginal[off_diagonal], bt[off_diagonal], atol=1e-15)


def test_reward_recovery_helper_applies_the_implicit_reward_score():
    """optimum_matches_reward compares beta * score(Delta): DPO at beta 0.1 is 0.05 * (2 Delta)."""
    from preftune.tabular.checks import optimum_matches_reward

    assert optimum_matches_reward("dpo", params={"beta": 0.1}, beta=0.05, score=lambda delta: 2 * delta).passed
    assert not optimum_matches_reward("dpo", params={"beta": 0.1}, beta=0.05).passed
