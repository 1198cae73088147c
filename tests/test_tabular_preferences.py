"""Preference models of the tabular engine: each constructor against a value computed by hand."""
import itertools

import pytest
import torch

from preftune.tabular import PreferenceModel

CYCLIC_RANKINGS = ([0, 1, 2], [1, 2, 0], [2, 0, 1])


def test_bradley_terry_is_sigmoid_of_reward_differences():
    r = torch.tensor([0.7, -0.2, 1.5], dtype=torch.float64)
    P = PreferenceModel.bradley_terry(r).matrix
    for i, j in itertools.product(range(3), repeat=2):
        assert P[i, j] == pytest.approx(1 / (1 + torch.exp(r[j] - r[i]).item()), abs=1e-15)
    assert PreferenceModel.bradley_terry(r).is_transitive()
    assert PreferenceModel.bradley_terry(r).condorcet_winner() == 2


def test_majority_vote_of_cyclic_annotators_is_intransitive():
    annotators = [PreferenceModel.from_ranking(r) for r in CYCLIC_RANKINGS]
    assert all(a.is_transitive() for a in annotators)
    majority = PreferenceModel.majority_vote(annotators)
    # Condorcet's paradox: two of three annotators prefer 0 to 1, 1 to 2 and 2 to 0.
    assert majority.matrix[0, 1] == 1 and majority.matrix[1, 2] == 1 and majority.matrix[2, 0] == 1
    assert not majority.is_transitive()
    assert majority.condorcet_winner() is None
    # A random annotator per label instead of the vote: the same cycle with probability 2/3.
    mixture = PreferenceModel.mixture(annotators)
    assert mixture.matrix[0, 1].item() == pytest.approx(2 / 3) and not mixture.is_transitive()


def test_majority_vote_of_noisy_annotators_matches_enumeration():
    annotators = [PreferenceModel.bradley_terry(r) for r in ([1.0, 0.0, -0.5], [0.0, 0.8, 0.1], [-0.3, 0.2, 0.9])]
    P = PreferenceModel.majority_vote(annotators).matrix
    for i, j in itertools.product(range(3), repeat=2):
        p = [a.matrix[i, j].item() for a in annotators]
        exact = sum(
            torch.tensor([p[k] if v else 1 - p[k] for k, v in enumerate(votes)], dtype=torch.float64).prod().item()
            for votes in itertools.product([0, 1], repeat=3) if sum(votes) >= 2)
        assert P[i, j].item() == pytest.approx(exact, abs=1e-15)


def test_even_number_of_annotators_splits_ties_evenly():
    annotators = [PreferenceModel.from_ranking([0, 1]), PreferenceModel.from_ranking([1, 0])]
    assert PreferenceModel.majority_vote(annotators).matrix[0, 1].item() == 0.5


def test_label_noise_maps_p_to_mixture_with_its_complement():
    P = PreferenceModel.bradley_terry([1.0, 0.0, -2.0])
    eps = 0.15
    noisy = P.with_label_noise(eps).matrix
    assert torch.allclose(noisy, (1 - eps) * P.matrix + eps * (1 - P.matrix), atol=1e-15)
    assert torch.allclose(P.with_label_noise(0.5).matrix, torch.full((3, 3), 0.5, dtype=torch.float64))


def test_rock_paper_scissors_is_a_cycle_and_win_rates_are_exact():
    rps = PreferenceModel.rock_paper_scissors(0.9)
    assert not rps.is_transitive()
    uniform = torch.full((3,), 1 / 3, dtype=torch.float64)
    assert torch.allclose(rps.win_rate(uniform), torch.full((3,), 0.5, dtype=torch.float64))
    assert rps.preference(torch.tensor([1.0, 0, 0], dtype=torch.float64),
                          torch.tensor([0, 1.0, 0], dtype=torch.float64)).item() == pytest.approx(0.9)


@pytest.mark.parametrize("matrix", [[[0.5, 0.7], [0.4, 0.5]], [[0.5, 1.2], [-0.2, 0.5]], [[0.5, 0.5, 0.5]]])
def test_invalid_preference_matrices_are_rejected(matrix):
    with pytest.raises(ValueError):
        PreferenceModel.from_matrix(matrix)
