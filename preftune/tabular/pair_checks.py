"""Single-pair ground truth for the baseline losses (exo_pair, nca_pair, bco_pair, sppo_hard, discopop, rpo)
and two engine helpers their checks share.

`free_pair_optimum`: DPO-like losses depend on the margin Delta_0 - Delta_1 only, so a
two-response bandit (one free logit) pins them down. Losses that target each response's
log-ratio on its own (SPPO's squared targets, NCA, BCO) need both log-ratios free: a third
response that is never sampled absorbs the remaining probability, so (Delta_0, Delta_1) range
over an open set and the optimum is interior.

`expected_loss_gradient`: the gradient of the exact expected loss with respect to the table of
sequence log-probs, i.e. dE/dDelta_y for every response, with no softmax in between, for checks
that compare a population gradient with its closed form (APO, WPO).

The closed forms below are derived from each paper's loss (written out in the docstrings) and
never call the method functions.
"""
from __future__ import annotations

import math

import torch
from scipy.optimize import brentq
from torch import Tensor

from preftune.tabular.bandit import DTYPE, Bandit, as_float64
from preftune.tabular.closed_forms import logit
from preftune.tabular.expected import (Dataset, LossFn, PolicyOptimum, optimise_policy, pairwise_dataset,
                                       single_threaded)
from preftune.tabular.preferences import PreferenceModel

# Reference of the free-pair bandit: responses 0 and 1 form the pair, response 2 is never sampled.
FREE_PAIR_REF = (0.3, 0.3, 0.4)


def free_pair_dataset(p: float) -> Dataset:
    """Only the pair {0, 1} is ever drawn, labelled 0 > 1 with probability p; response 2 never appears."""
    matrix = torch.full((3, 3), 0.5, dtype=DTYPE)
    matrix[0, 1], matrix[1, 0] = p, 1 - p
    sampling = torch.zeros(3, 3, dtype=DTYPE)
    sampling[0, 1] = sampling[1, 0] = 1.0
    return pairwise_dataset(PreferenceModel(matrix), sampling)


def free_pair_optimum(loss: LossFn, p: float, ref=FREE_PAIR_REF, lengths=(1, 1, 1)) -> tuple[Bandit, PolicyOptimum]:
    """Optimum of a loss on the free pair (see the module docstring), starting from the reference."""
    bandit = Bandit.create(ref, lengths)
    return bandit, optimise_policy(loss, bandit, free_pair_dataset(p))


def expected_loss_gradient(loss: LossFn, bandit: Bandit, data: Dataset, logp) -> tuple[float, Tensor]:
    """E[L] and dE/d log pi(y|x) for an (X, K) table of sequence log-probs (not necessarily normalised).

    Since Delta_y = log pi(y) - log pi_ref(y), this is also dE/dDelta_y: the population gradient a
    method applies to each response's log-ratio.
    """
    table = as_float64(logp).requires_grad_(True)
    with single_threaded():
        policy = bandit.records(table, data.prompt, data.responses)
        reference = bandit.reference_records(data.prompt, data.responses)
        value = (data.weight * loss(policy, reference, data.extras)).sum()
        grad, = torch.autograd.grad(value, table)
    return float(value.detach()), grad


def net_win_rates(data: Dataset, bandit: Bandit, prompt: int = 0) -> tuple[Tensor, Tensor]:
    """(c_y, d_y): the probability that a data row has y as its chosen (column 0) or its rejected (column 1) response."""
    chosen = torch.zeros(bandit.num_responses, dtype=DTYPE)
    rejected = torch.zeros(bandit.num_responses, dtype=DTYPE)
    rows = data.prompt == prompt
    chosen.index_add_(0, data.responses[rows, 0], data.weight[rows])
    rejected.index_add_(0, data.responses[rows, 1], data.weight[rows])
    return chosen, rejected


# -- closed forms ------------------------------------------------------------------------------

def exo_pair_optimal_margin(p: float, eps: float) -> float:
    """EXO-pref (Ji et al. 2024, Eq. 16) on one pair labelled 0 > 1 with probability p.

    With q(h) = (sigmoid(h), sigmoid(-h)) and the label distribution (1-e, e),
    L(h) = KL(q(h) || (1-e, e)) = s log(s/(1-e)) + (1-s) log((1-s)/e), s = sigmoid(h), so
    dL/dh = s(1-s) [log(s/(1-s)) - log((1-e)/e)] = s(1-s) (h - c), c = log((1-e)/e). The expected
    loss p L(h) + (1-p) L(-h) has derivative s(1-s) [p (h - c) + (1-p)(h + c)] = s(1-s)(h - (2p-1) c),
    whose only root is h* = (2p - 1) log((1-e)/e). With a hard label (p = 1), sigmoid(h*) = 1 - e:
    the policy's pairwise distribution equals the label distribution.
    """
    return (2 * p - 1) * math.log((1 - eps) / eps)


def nca_pair_optimal_rewards(p: float) -> tuple[float, float]:
    """NCA pairwise (Chen et al. 2024) on the free pair: L = l(r_w) + l(-r_w)/2 + l(-r_l)/2, r = beta Delta.

    The expected loss separates: p l(r_0) + l(-r_0)/2 + (1-p) l(r_1) + l(-r_1)/2 (each response is
    rejected with the complementary probability and always contributes l(-r)/2). For a l(r) + l(-r)/2
    the derivative -a sigmoid(-r) + sigmoid(r)/2 vanishes at e^r = 2a, so r_0* = log(2p) and
    r_1* = log(2(1-p)): absolute targets, with sigmoid(r*) = K q/(1 + K q) for K = 2 responses.
    """
    return math.log(2 * p), math.log(2 * (1 - p))


def bco_pair_optimal_rewards(p: float, shift: float) -> tuple[float, float]:
    """BCO (Jung et al. 2024) with a fixed reward shift delta on the free pair:
    L = l(r_w - delta) + l(-(r_l - delta)). The expected loss separates into
    p l(r_0 - delta) + (1-p) l(delta - r_0) (and the mirror image for r_1), a logistic loss with soft
    label p, minimised at r_0 - delta = logit(p); likewise r_1 - delta = -logit(p)."""
    return shift + logit(p), shift - logit(p)


def sppo_hard_optimal_log_ratios(p: float, beta: float) -> tuple[float, float]:
    """SPPO with hard labels (Wu et al. 2024, Eq. 4.7 with P = 1 for the winner, 0 for the loser) on the
    free pair: L = (Delta_w - 1/(2 beta))^2 + (Delta_l + 1/(2 beta))^2. The expected loss separates;
    for Delta_0 it is p (D - 1/(2b))^2 + (1-p)(D + 1/(2b))^2, minimised at D = (2p-1)/(2 beta), i.e.
    (1/beta)(P(y_0 > y_1) - 1/2): exactly SPPO's soft target eta (P - 1/2) with eta = 1/beta."""
    target = (2 * p - 1) / (2 * beta)
    return target, -target


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def discopop_pair_stationary_points(p: float, tau: float, low: float = -6.0, high: float = 6.0,
                                    steps: int = 12001) -> list[tuple[float, str]]:
    """Every stationary point h of the expected DiscoPOP loss of one pair labelled 0 > 1 with probability p.

    DiscoPOP / LRML (Lu et al. 2024, Eq. 5), with h = beta rho:
        f(h) = (1 - g(h)) log(1 + e^-h) + g(h) e^-h,   g(h) = sigmoid(h / tau),
        f'(h) = g'(h) (e^-h - log(1 + e^-h)) - (1 - g(h)) sigmoid(-h) - g(h) e^-h,   g' = g (1 - g) / tau,
    and E(h) = p f(h) + (1 - p) f(-h), E'(h) = p f'(h) - (1 - p) f'(-h). The roots of E' on [low, high]
    are bracketed by sign changes on a grid and refined by Brent's method; each is labelled "min" or
    "max" by the sign change. The loss is not convex (paper §6.1): for p = 0.8, tau = 0.05 there is a
    local minimum at a negative margin as well as the global one at a positive margin.
    """
    def f_prime(h: float) -> float:
        g = _sigmoid(h / tau)
        return g * (1 - g) / tau * (math.exp(-h) - _softplus(-h)) - (1 - g) * _sigmoid(-h) - g * math.exp(-h)

    def expected_derivative(h: float) -> float:
        return p * f_prime(h) - (1 - p) * f_prime(-h)

    grid = [low + (high - low) * i / (steps - 1) for i in range(steps)]
    values = [expected_derivative(h) for h in grid]
    points = []
    for a, b, fa, fb in zip(grid, grid[1:], values, values[1:]):
        if (fa < 0) != (fb < 0):
            points.append((brentq(expected_derivative, a, b, xtol=1e-15, rtol=1e-15), "min" if fa < 0 else "max"))
    return points


def rpo_optimal_pair_policy(p: float, beta: float, alpha: float, ref=(0.7, 0.3), lengths=(3.0, 7.0)) -> float:
    """pi(y_0) at the optimum of RPO (Pang et al. 2024): DPO + alpha * NLL(y_w)/|y_w|, on a two-response
    bandit whose pair is labelled 0 > 1 with probability p.

    With d = theta_0 - theta_1, pi_0 = sigmoid(d), d lp_0/dd = pi_1, d lp_1/dd = -pi_0 and
    h = beta (d - log(ref_0/ref_1)), the expected loss
        p [l(h) - alpha lp_0/|y_0|] + (1-p) [l(-h) - alpha lp_1/|y_1|]
    has derivative  beta [(1-p) sigmoid(h) - p sigmoid(-h)] - alpha p pi_1/|y_0| + alpha (1-p) pi_0/|y_1|,
    strictly increasing in d (both parts are), so its single root is found by Brent's method.
    alpha = 0 gives DPO's h* = logit(p).
    """
    log_ref_ratio = math.log(ref[0] / ref[1])

    def derivative(d: float) -> float:
        pi0, pi1 = _sigmoid(d), _sigmoid(-d)
        h = beta * (d - log_ref_ratio)
        return (beta * ((1 - p) * _sigmoid(h) - p * _sigmoid(-h))
                - alpha * p * pi1 / lengths[0] + alpha * (1 - p) * pi0 / lengths[1])

    return _sigmoid(brentq(derivative, -200.0, 200.0, xtol=1e-15, rtol=1e-15))
