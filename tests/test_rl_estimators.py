"""The pure estimators and search primitives of preftune/rl: advantages, returns, MCTS nodes."""
from __future__ import annotations

import math

import pytest
import torch

from preftune.rl.advantages import (combine_aspects, discounted_returns, gae, group_normalised, last_token_reward,
                                    masked_mean, monte_carlo_value, reverse_cumsum, whiten)
from preftune.rl.exact import gae_reference
from preftune.rl.tree import (Node, backup, conservative_epsilon, first_difference, most_visited, puct, select_path,
                              sibling_pair, single_child_chain, step_prior)

F64 = torch.float64


def test_group_normalised_standardises_within_each_group_only():
    rewards = torch.tensor([1.0, 0.0, 0.0, 5.0, 5.0, 5.0], dtype=F64)
    out = group_normalised(rewards, torch.tensor([0, 0, 0, 1, 1, 1]), eps=0.0)
    std = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    torch.testing.assert_close(out[:3], torch.tensor([2 / 3, -1 / 3, -1 / 3], dtype=F64) / std)
    assert out[3:].tolist() == [0.0, 0.0, 0.0]  # equal rewards: no signal
    centred = group_normalised(rewards, torch.tensor([0, 0, 0, 1, 1, 1]), scale=False)
    torch.testing.assert_close(centred[:3], torch.tensor([2 / 3, -1 / 3, -1 / 3], dtype=F64))


def test_combine_aspects_weights_and_checks_shapes():
    aspects = torch.tensor([[1.0, 3.0], [2.0, 0.0]], dtype=F64)
    assert combine_aspects(aspects, None).tolist() == [2.0, 1.0]
    assert combine_aspects(aspects, [0.25, 0.75]).tolist() == [2.5, 0.5]
    with pytest.raises(ValueError, match="2 reward aspects but 3 weights"):
        combine_aspects(aspects, [1, 1, 1])
    with pytest.raises(ValueError, match="needs the group"):
        combine_aspects(aspects, None, normalise="group")


def test_gae_matches_its_definition_and_ignores_padding():
    rewards = torch.tensor([[0.1, -0.2, 1.0, 9.0]], dtype=F64)
    values = torch.tensor([[0.5, 0.3, 0.8, 9.0]], dtype=F64)
    mask = torch.tensor([[True, True, True, False]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    expected = gae_reference([0.1, -0.2, 1.0], [0.5, 0.3, 0.8], 0.9, 0.8)
    torch.testing.assert_close(advantages[0, :3], torch.tensor(expected, dtype=F64))
    assert advantages[0, 3] == 0 and returns[0, 3] == 0
    torch.testing.assert_close(returns[0, :3], advantages[0, :3] + values[0, :3])


def test_last_token_reward_whiten_reverse_cumsum_and_masked_mean():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert last_token_reward(torch.tensor([2.0, 3.0]), mask).tolist() == [[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]]
    x = torch.tensor([[1.0, 2.0, 50.0], [3.0, 9.0, 9.0]], dtype=F64)
    white = whiten(x, mask)
    assert abs(float(white[mask].mean())) < 1e-12 and float(white[mask].std(unbiased=False)) == pytest.approx(1, abs=1e-6)
    assert white[~mask].abs().max() == 0
    assert reverse_cumsum(x, mask).tolist() == [[3.0, 2.0, 0.0], [3.0, 0.0, 0.0]]
    assert masked_mean(x, mask).tolist() == [1.5, 3.0]


def test_discounted_returns_restart_at_episode_ends_and_mc_values():
    assert discounted_returns([1.0, 1.0, 2.0, 2.0], [False, True, False, True], 0.5) == [1.5, 1.0, 3.0, 2.0]
    assert monte_carlo_value([1, 0, 1, 1]) == 0.75
    with pytest.raises(ValueError):
        monte_carlo_value([])


def test_puct_selection_expansion_and_commit():
    root = Node(0.0)
    root.visits = 4
    a, b = root.add_child(0.1, prior=0.9), root.add_child(0.3, prior=0.1)
    assert puct(a) == pytest.approx(0.1 + 0.9 * 2 / 1) and puct(b) == pytest.approx(0.3 + 0.1 * 2 / 1)
    assert select_path(root) == [root, a]
    a.visits, b.visits = 3, 3
    assert most_visited(root) is b  # equal visits: the higher Q
    assert sibling_pair(root) == (b, a) and sibling_pair(a) is None
    assert step_prior(-2.0, 4) == pytest.approx(math.exp(-2.0 / 4 ** 1.25))


def test_backup_counts_one_visit_per_node_and_weights_by_visits():
    root = Node(0.0)
    child = root.add_child(0.5)
    leaf = child.add_child(1.0, terminal=True)
    backup(leaf.path())
    backup(leaf.path())
    assert (root.visits, child.visits, leaf.visits) == (2, 2, 2)
    assert child.mean_value == pytest.approx(0.5) and child.q == pytest.approx(1.0) and root.mean_value == pytest.approx(1.0)
    chain = single_child_chain(child)
    assert chain == [child, leaf]


def test_depth_limit_stops_selection():
    root = Node(0.0)
    child = root.add_child(0.0)
    child.add_child(0.0)
    assert select_path(root, depth_limit=1) == [root, child]


@pytest.mark.parametrize("chosen, rejected, expected", [(3, 1, 0.25), (1, 3, 0.5), (0, 0, 0.0), (2, 2, 0.5)])
def test_conservative_epsilon(chosen, rejected, expected):
    assert conservative_epsilon(chosen, rejected) == pytest.approx(expected)


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 4]) == 2
    assert first_difference([1, 2], [1, 2, 3]) == 2
    assert first_difference([5], [6]) == 0
