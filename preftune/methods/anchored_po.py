"""Anchored Preference Optimization, APO-zero and APO-down (D'Oosterlinck et al. 2024, arXiv 2408.06266).

Not to be confused with the catalogue's `apo` (Accelerated Preference Optimization, He, Yuan, Gu
2024, arXiv 2410.06293), a Nesterov-accelerated iterative method implemented elsewhere. These
two losses anchor each response's likelihood to the reference: they say in which direction the
chosen likelihood must move, where DPO only constrains the difference of the two.
"""
from __future__ import annotations

import math

import torch

from preftune.methods.common import log_ratios
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics

_PAPER = ("D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions: Addressing "
          "Underspecification in Alignment, arXiv 2408.06266 (Anchored PO; not the accelerated APO, seed `apo`)")
_TAXONOMY = taxonomy(["pairwise"], ["offline"], ["fixed-reference", "anchored-po", "not-accelerated-apo"],
                     ["likelihood"])


@register(name="apo_zero", seed=None, family="offline-anchored", input_kind="pairwise",
          needs_reference=True, status="stable", paper=_PAPER, taxonomy=_TAXONOMY)
def apo_zero(policy: Logps, reference: Logps, *, beta: float = 0.1) -> MethodOutput:
    """Anchored PO, zero anchor (APO-zero; not the accelerated `apo`): raise the chosen, lower the rejected likelihood.

    Eq. 7 of the paper, with r = beta * Delta:  L = (1 - sigmoid(r_w)) + sigmoid(r_l).
    Each term is anchored at r = 0 (the reference): the chosen log-ratio is always pushed up and
    the rejected one down, independently of each other. It is KTO with its reference point fixed at
    z0 = 0, applied to y_w as desirable and y_l as undesirable (lambda_D = lambda_U = 1). Use it when
    the chosen outputs are better than the model's own. beta: 0.1. Shapes: (B, 2) in, (B,) loss.
    """
    rewards = beta * log_ratios(policy, reference)
    loss = (1 - torch.sigmoid(rewards[:, 0])) + torch.sigmoid(rewards[:, 1])
    return MethodOutput(loss, rewards, pairwise_metrics(rewards[:, 0], rewards[:, 1]))


@register(name="apo_down", seed=None, family="offline-anchored", input_kind="pairwise",
          needs_reference=True, status="stable", paper=_PAPER, taxonomy=_TAXONOMY)
def apo_down(policy: Logps, reference: Logps, *, beta: float = 0.1) -> MethodOutput:
    """Anchored PO, down anchor (APO-down; not the accelerated `apo`): lower both likelihoods, the rejected more.

    Eq. 8 of the paper, with r = beta * Delta:  L = sigmoid(r_w) + (1 - sigmoid(r_w - r_l)).
    The first term pushes the chosen log-ratio down from the reference, the second widens the
    margin; at pi = pi_ref their pulls on the chosen response cancel exactly, so the chosen
    likelihood starts still while the rejected one falls. Its chosen term is the complement of
    APO-zero's (sigmoid(r_w) = 1 - (1 - sigmoid(r_w))). Use it when the chosen outputs are worse
    than the model's own. beta: 0.1. Shapes: (B, 2) in, (B,) loss.
    """
    rewards = beta * log_ratios(policy, reference)
    loss = torch.sigmoid(rewards[:, 0]) + (1 - torch.sigmoid(rewards[:, 0] - rewards[:, 1]))
    return MethodOutput(loss, rewards, pairwise_metrics(rewards[:, 0], rewards[:, 1]))


def _population_gradient_check(name: str, fn, closed_form) -> list:
    """The exact expected-loss gradient dE/dDelta_y on the standard four-response bandit (Bradley-Terry
    labels, pairs drawn from the reference, unequal lengths) against its closed form, at pi = pi_ref and at a
    random policy. closed_form(beta, rows, delta) -> (K,) with rows = (chosen, rejected, weight) triples.

    Neither anchored loss has an interior population optimum: each is a sum of sigmoids of the
    log-ratios, so the expected loss is minimised on the boundary of the simplex (losers' probability
    -> 0); the exact statement is the direction in which each response is pushed."""
    from preftune.tabular.bandit import Bandit
    from preftune.tabular.checks import DEFAULT_LENGTHS, DEFAULT_REF, DEFAULT_REWARDS, compare_vectors, method_loss
    from preftune.tabular.expected import pairwise_dataset, reference_pair_sampling
    from preftune.tabular.pair_checks import expected_loss_gradient
    from preftune.tabular.preferences import PreferenceModel

    beta = 0.5
    bandit = Bandit.create(DEFAULT_REF, DEFAULT_LENGTHS)
    data = pairwise_dataset(PreferenceModel.bradley_terry(DEFAULT_REWARDS), reference_pair_sampling(bandit))
    rows = list(zip(data.responses[:, 0].tolist(), data.responses[:, 1].tolist(), data.weight.tolist()))
    random_policy = torch.log_softmax(torch.randn(1, 4, generator=torch.Generator().manual_seed(0),
                                                  dtype=torch.float64), -1)
    results = []
    for where, logp in (("pi = pi_ref", bandit.ref_logp), ("a random policy", random_policy)):
        _, grad = expected_loss_gradient(method_loss(name, fn, beta=beta), bandit, data, logp)
        expected = closed_form(beta, rows, bandit.log_ratios(logp)[0])
        results.append(compare_vectors(name, f"population gradient dE/dDelta_y at {where}", expected, grad[0],
                                       1e-14, labels=[f"y{k}" for k in range(4)]))
    return results


def _sigmoid_slope(z: float) -> float:
    """sigmoid'(z) = sigmoid(z) sigmoid(-z), for the moderate z of the checks."""
    return 1 / ((1 + math.exp(-z)) * (1 + math.exp(z)))


@tabular_check("apo_zero")
def apo_zero_tabular_check(fn=apo_zero):
    """Eq. 7 summed over the data: E = const - sum_y (c_y - d_y) sigmoid(beta Delta_y), with c_y (d_y) the
    probability that y is the chosen (rejected) response of a row. So dE/dDelta_y = -beta (c_y - d_y)
    sigmoid'(beta Delta_y): a response is pushed up exactly when it wins more often than it loses,
    whatever the other responses do; at pi = pi_ref, where sigmoid' = 1/4, it is -beta (c_y - d_y)/4."""

    def closed_form(beta, rows, delta):
        grad = torch.zeros(len(delta), dtype=torch.float64)
        for chosen, rejected, weight in rows:
            grad[chosen] -= weight * beta * _sigmoid_slope(beta * float(delta[chosen]))
            grad[rejected] += weight * beta * _sigmoid_slope(beta * float(delta[rejected]))
        return grad

    return _population_gradient_check("apo_zero", fn, closed_form)


@tabular_check("apo_down")
def apo_down_tabular_check(fn=apo_down):
    """Eq. 8 summed over the data: a row (i chosen, j rejected, weight w) adds
    w beta [sigmoid'(beta Delta_i) - sigmoid'(beta (Delta_i - Delta_j))] to dE/dDelta_i and
    w beta sigmoid'(beta (Delta_i - Delta_j)) to dE/dDelta_j. At pi = pi_ref both slopes are 1/4, so
    dE/dDelta_y = beta d_y / 4 >= 0: every likelihood goes down, each in proportion to how often it is
    rejected, and the chosen role alone moves nothing."""

    def closed_form(beta, rows, delta):
        grad = torch.zeros(len(delta), dtype=torch.float64)
        for chosen, rejected, weight in rows:
            margin_slope = _sigmoid_slope(beta * float(delta[chosen] - delta[rejected]))
            grad[chosen] += weight * beta * (_sigmoid_slope(beta * float(delta[chosen])) - margin_slope)
            grad[rejected] += weight * beta * margin_slope
        return grad

    return _population_gradient_check("apo_down", fn, closed_form)
