"""Closed-form optima of the offline objectives on the bandit (offline.md §1-2 "Test" lines).

Each function states the population optimum a method should reach, derived from the paper's
loss and not from our implementation of it; the checks beside each method compare the two.
"""
from __future__ import annotations

import math

import torch
from scipy.optimize import brentq
from torch import Tensor

from preftune.tabular.bandit import as_float64
from preftune.tabular.preferences import PreferenceModel


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def dpo_optimal_policy(ref_probs, rewards, beta: float) -> Tensor:
    """pi*(y) = pi_ref(y) exp(r(y)/beta) / Z: the KL-regularised reward maximiser that DPO's
    expected loss under Bradley-Terry labels recovers (DPO paper Eq. 4; offline.md §1)."""
    logits = as_float64(ref_probs).log() + as_float64(rewards) / beta
    return torch.softmax(logits, dim=-1)


def ipo_optimal_margin(p: float, tau: float) -> float:
    """Delta* = (2p - 1)/(2 tau): minimiser of p (D - 1/(2 tau))^2 + (1 - p)(-D - 1/(2 tau))^2
    over the log-ratio margin D of a pair with preference probability p (IPO paper Eq. 17; offline.md §1)."""
    return (2 * p - 1) / (2 * tau)


def smoothed_logistic_optimal_margin(flip_rate: float, p: float = 1.0) -> float:
    """Minimiser over z of the label-smoothed logistic loss of one pair with preference probability p:

        p [(1-e) l(z) + e l(-z)] + (1-p) [(1-e) l(-z) + e l(z)],  l(z) = -log sigmoid(z),

    i.e. the logistic loss with soft label q = (1-e) p + e (1-p), minimised at z* = logit(q).
    With a hard label (p = 1) this is cDPO's h* = log((1-e)/e) and SimPO's z* (offline.md §1-2).
    """
    q = (1 - flip_rate) * p + flip_rate * (1 - p)
    return logit(q)


def margin_logistic_optimal_margin(p: float, gamma: float) -> float:
    """Minimiser u* of p l(u - gamma) + (1 - p) l(-u - gamma): a logistic loss with target margin gamma
    on a pair whose two orders are labelled with probabilities p and 1 - p (SimPO, offline.md §2,
    where u = beta (avg_0 - avg_1)). Setting the derivative to 0 with a = e^u, g = e^gamma gives
    p / (1 + a/g) = (1-p) a g / (1 + a g), i.e. (1-p) a^2 + (1-2p) g a - p = 0, whose positive root is
        a = [(2p - 1) g + sqrt((1 - 2p)^2 g^2 + 4 p (1 - p))] / (2 (1 - p)).
    gamma = 0 gives u* = logit(p); gamma > 0 pushes u* beyond it."""
    g = math.exp(gamma)
    a = ((2 * p - 1) * g + math.sqrt((1 - 2 * p) ** 2 * g * g + 4 * p * (1 - p))) / (2 * (1 - p))
    return math.log(a)


def bradley_terry_fit(preferences: PreferenceModel, sampling: Tensor | None = None, tol: float = 1e-12) -> Tensor:
    """Maximum-likelihood Bradley-Terry rewards for a general P (centred to mean 0).

    Minimises sum_{i != j} mu_ij P_ij l(r_i - r_j) by Newton's method (the objective is convex
    in r; a ridge of 1e-12 fixes the additive gauge). For a BT matrix it returns the generating
    rewards; for an intransitive P it is the wrong model that offline DPO implicitly fits
    (online.md §16: BT MLE of the §16 matrix is about (.41, -.28, -.14)).
    """
    P = preferences.matrix
    K = P.shape[0]
    mu = (1 - torch.eye(K, dtype=P.dtype)) if sampling is None else as_float64(sampling)
    r = torch.zeros(K, dtype=P.dtype)
    for _ in range(100):
        s = torch.sigmoid(r[:, None] - r[None, :])
        # d/dr_i of sum mu_ij P_ij l(r_i - r_j), both where i is the winner and where it is the loser.
        g = mu * (s - P)
        grad = g.sum(1) - g.sum(0)
        w = mu * s * (1 - s)
        hess = torch.diag(w.sum(1) + w.sum(0)) - w - w.T + 1e-12 * torch.eye(K, dtype=P.dtype)
        step = torch.linalg.solve(hess, grad)
        r = r - step
        if step.abs().max() < tol:
            break
    return r - r.mean()


def kto_optimal_policy(ref_probs, desirability, beta: float, sampling=None, desirable_weight: float = 1.0,
                       undesirable_weight: float = 1.0) -> Tensor:
    """Population optimum of KTO on a one-prompt bandit with reference point z0 = 0.

    Response y is drawn with probability mu_y and labelled desirable with probability q_y. With
    r_y = log pi(y)/pi_ref(y) and s(r) = sigmoid(beta r), KTO's expected loss (paper Eq. 8, with
    lambda_D, lambda_U) is  sum_y mu_y [lambda_D q_y (1 - s(r_y)) + lambda_U (1 - q_y) s(r_y)]
    = const - sum_y mu_y w_y s(r_y),  with net desirability w_y = lambda_D q_y - lambda_U (1 - q_y).
    For w_y > 0 and beta < 1, s(log(pi/pi_ref)) = x^beta/(1 + x^beta) is strictly concave in
    x = pi/pi_ref, so the optimum over the simplex is unique and interior, given by the
    Lagrange condition  mu_y w_y beta s'(r_y) / pi_y = nu  for every y, with s' = s(1 - s).
    Each pi_y(nu) is decreasing in nu; nu is found by Brent's method so that sum_y pi_y = 1.
    For small beta, s is nearly linear and pi_y -> mu_y w_y / sum(mu w): a weighted MLE.
    """
    ref = as_float64(ref_probs)
    q = as_float64(desirability)
    mu = torch.full_like(q, 1 / len(q)) if sampling is None else as_float64(sampling) / sum(sampling)
    w = desirable_weight * q - undesirable_weight * (1 - q)
    if (w <= 0).any() or not 0 < beta < 1:
        raise ValueError("this closed form needs every response net-desirable (w > 0) and 0 < beta < 1")

    log_ref, log_gain = ref.log().tolist(), (mu * w * beta).log().tolist()

    def log_marginal_gain(y: int, log_pi: float) -> float:
        """log(mu_y w_y beta s'(r_y) / pi_y), decreasing in log pi_y; s' = s(1-s), computed in logs."""
        x = beta * (log_pi - log_ref[y])
        return log_gain[y] - _softplus(-x) - _softplus(x) - log_pi

    def pi_of(log_nu: float) -> list[float]:
        # pi_y solves log_marginal_gain = log nu; it is capped at 1 (only matters while bracketing).
        return [1.0 if log_marginal_gain(y, 0.0) >= log_nu else
                math.exp(brentq(lambda t: log_marginal_gain(y, t) - log_nu, -1e4, 0.0, xtol=1e-14))
                for y in range(len(q))]

    # At the lower end every pi_y is 1 (sum K > 1); at the upper end every pi_y <= 1/K (sum <= 1).
    low = min(log_marginal_gain(y, 0.0) for y in range(len(q)))
    high = max(log_marginal_gain(y, -math.log(len(q))) for y in range(len(q)))
    log_nu = brentq(lambda t: sum(pi_of(t)) - 1, low, high, xtol=1e-14)
    return as_float64(pi_of(log_nu))


def _softplus(x: float) -> float:
    """log(1 + e^x), without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def orpo_optimal_pair_policy(p: float, lengths: tuple[float, float], odds_weight: float) -> float:
    """pi(y_0) at the population optimum of ORPO on a two-response bandit, pair labelled 0 > 1 w.p. p.

    ORPO (Hong et al. 2024, Eq. 4-6): L = -avg(y_w) + lambda l(o(y_w) - o(y_l)), avg(y) = log pi(y)/|y|,
    o(y) = log P/(1 - P) with P = exp(avg(y)). Write d = theta_0 - theta_1, so d log pi_0/dd = pi_1
    and d log pi_1/dd = -pi_0. Then with P_k = pi_k^(1/|y_k|), do_k/d avg_k = 1/(1 - P_k), and

      D    = d(o_0 - o_1)/dd = pi_1 / (|y_0| (1 - P_0)) + pi_0 / (|y_1| (1 - P_1)),
      dE/dd = -p pi_1/|y_0| + (1-p) pi_0/|y_1| + lambda D [(1-p) sigmoid(o_0 - o_1) - p sigmoid(o_1 - o_0)].

    dE/dd < 0 as pi_0 -> 0 and > 0 as pi_0 -> 1, so a stationary point exists; it is found by
    Brent's method on this derivative, written from the paper's formula alone.
    """
    L0, L1 = lengths

    def log_odds(avg: float) -> float:
        return avg - math.log1p(-math.exp(avg))

    def derivative(pi0: float) -> float:
        pi1 = 1 - pi0
        P0, P1 = pi0 ** (1 / L0), pi1 ** (1 / L1)
        gap = log_odds(math.log(pi0) / L0) - log_odds(math.log(pi1) / L1)
        D = pi1 / (L0 * (1 - P0)) + pi0 / (L1 * (1 - P1))
        sig = 1 / (1 + math.exp(-gap))
        return -p * pi1 / L0 + (1 - p) * pi0 / L1 + odds_weight * D * ((1 - p) * sig - p * (1 - sig))

    return brentq(derivative, 1e-9, 1 - 1e-9, xtol=1e-15, rtol=1e-15)
