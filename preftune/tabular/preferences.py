"""Preference models over a finite response set: P[i, j] = P(y_i > y_j), exact.

Every model here is a K x K matrix with P + P^T = 1 (so the diagonal is 1/2), which is the
general preference oracle of online.md §0. Bradley-Terry matrices are transitive; matrices from
rock-paper-scissors or from a majority vote of annotators with different rankings need not be,
which is what the Nash methods are for (online.md §16).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from preftune.tabular.bandit import as_float64

# Skew-symmetry P + P^T = 1 is checked to this absolute tolerance.
_SYMMETRY_TOL = 1e-12


@dataclass(frozen=True)
class PreferenceModel:
    """A general preference matrix P[i, j] = P(y_i preferred to y_j), with P + P^T = 1."""

    matrix: Tensor
    name: str = "P"

    def __post_init__(self) -> None:
        P = self.matrix
        if P.dim() != 2 or P.shape[0] != P.shape[1]:
            raise ValueError(f"a preference matrix must be square, got shape {tuple(P.shape)}")
        if ((P < 0) | (P > 1)).any():
            raise ValueError("preference probabilities must lie in [0, 1]")
        if (P + P.T - 1).abs().max() > _SYMMETRY_TOL:
            raise ValueError("a preference matrix needs P[i, j] + P[j, i] = 1 (diagonal 1/2)")

    # -- constructors ---------------------------------------------------------------------------

    @staticmethod
    def from_matrix(matrix, name: str = "P") -> "PreferenceModel":
        return PreferenceModel(as_float64(matrix), name)

    @staticmethod
    def bradley_terry(rewards, name: str = "BT") -> "PreferenceModel":
        """P[i, j] = sigmoid(r_i - r_j) (Bradley & Terry 1952; DPO's preference model, offline.md §0)."""
        r = as_float64(rewards)
        return PreferenceModel(torch.sigmoid(r[:, None] - r[None, :]), name)

    @staticmethod
    def from_ranking(ranking: Sequence[int], name: str = "ranking") -> "PreferenceModel":
        """A deterministic annotator: ranking lists responses best first; P is 1 above, 0 below."""
        K = len(ranking)
        if sorted(ranking) != list(range(K)):
            raise ValueError(f"a ranking must be a permutation of 0..{K - 1}, got {list(ranking)}")
        position = torch.empty(K, dtype=torch.long)
        position[torch.as_tensor(ranking)] = torch.arange(K)
        above = (position[:, None] < position[None, :]).double()
        return PreferenceModel(above + 0.5 * torch.eye(K, dtype=above.dtype), name)

    @staticmethod
    def rock_paper_scissors(win: float = 0.9) -> "PreferenceModel":
        """Symmetric cyclic game 0 > 1 > 2 > 0, each with probability `win`; its Nash equilibrium is uniform."""
        lose = 1 - win
        return PreferenceModel.from_matrix([[0.5, win, lose], [lose, 0.5, win], [win, lose, 0.5]],
                                           name=f"RPS({win:g})")

    @staticmethod
    def mixture(models: Sequence["PreferenceModel"], weights: Sequence[float] | None = None,
                name: str = "mixture") -> "PreferenceModel":
        """Several annotators, one drawn at random per label (with `weights`): P = sum_a w_a P_a."""
        stacked = torch.stack([m.matrix for m in models])
        w = torch.full((len(models),), 1 / len(models), dtype=stacked.dtype) if weights is None \
            else as_float64(weights) / sum(weights)
        return PreferenceModel(torch.einsum("a,aij->ij", w, stacked), name)

    @staticmethod
    def majority_vote(models: Sequence["PreferenceModel"], name: str = "majority") -> "PreferenceModel":
        """Several annotators label every pair independently; the label is their majority vote.

        P[i, j] = P(more than half vote i > j) + 1/2 P(exact tie), the tie broken by a fair coin.
        The vote count is Poisson-binomial, computed exactly by dynamic programming. With
        deterministic annotators of cyclic rankings this gives Condorcet's paradox: an
        intransitive P although every annotator is transitive.
        """
        n = len(models)
        p = torch.stack([m.matrix for m in models])  # (n, K, K) per-annotator vote probabilities
        # count[c] = P(exactly c of the annotators seen so far vote i > j), for every pair at once.
        count = torch.zeros((n + 1,) + p.shape[1:], dtype=p.dtype)
        count[0] = 1
        for vote in p:
            count = torch.cat([count[:1] * (1 - vote), count[1:] * (1 - vote) + count[:-1] * vote])
        votes = torch.arange(n + 1, dtype=p.dtype)[:, None, None]
        weight = (votes > n / 2).to(p.dtype) + 0.5 * (votes == n / 2).to(p.dtype)
        return PreferenceModel((weight * count).sum(0), name)

    # -- transformations and queries -------------------------------------------------------------

    @property
    def num_responses(self) -> int:
        return self.matrix.shape[0]

    def with_label_noise(self, flip_rate: float) -> "PreferenceModel":
        """Each label flipped with probability eps: p -> (1 - eps) p + eps (1 - p)."""
        if not 0 <= flip_rate <= 1:
            raise ValueError(f"flip rate must lie in [0, 1], got {flip_rate}")
        P = (1 - flip_rate) * self.matrix + flip_rate * self.matrix.T
        return PreferenceModel(P, f"{self.name}+flip({flip_rate:g})")

    def win_rate(self, policy: Tensor) -> Tensor:
        """(K,) P(y > pi) = sum_y' pi(y') P[y, y'] (online.md §0)."""
        return self.matrix @ policy

    def preference(self, policy: Tensor, opponent: Tensor) -> Tensor:
        """P(pi > pi') = sum_{y, y'} pi(y) pi'(y') P[y, y']."""
        return policy @ self.matrix @ opponent

    def strict_relation(self) -> Tensor:
        """(K, K) bool: i is strictly preferred to j by more than half (P[i, j] > 1/2)."""
        return self.matrix > 0.5

    def is_transitive(self) -> bool:
        """True when the strict majority relation has no cycle (e.g. always for Bradley-Terry)."""
        reach = self.strict_relation().clone()
        for k in range(self.num_responses):  # Warshall's transitive closure
            reach |= reach[:, k:k + 1] & reach[k:k + 1, :]
        return not bool(reach.diagonal().any())

    def condorcet_winner(self) -> int | None:
        """The response preferred to every other one by more than half, if any."""
        beats = self.strict_relation()
        K = self.num_responses
        for i in range(K):
            if int(beats[i].sum()) == K - 1:
                return i
        return None
