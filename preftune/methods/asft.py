"""ASFT: aligned SFT through absolute likelihood (Wang, Sun, Hua, Fang 2024, arXiv 2409.10571)."""
from __future__ import annotations

import math

import torch

from preftune.methods.common import log_odds, neg_log_sigmoid, response_nll
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


@register(
    name="asft", seed="asft", family="offline-pointwise", input_kind="pairwise", needs_reference=False,
    status="stable", paper="Wang, Sun, Hua, Fang 2024, ASFT: Aligned Supervised Fine-Tuning through Absolute "
                           "Likelihood, arXiv 2409.10571 (beta-tempered form: 'The Differences Between Direct "
                           "Alignment Algorithms are a Blur', arXiv 2502.01237)",
    taxonomy=taxonomy(["pairwise", "pointwise-terms"], ["offline", "single-stage"],
                      ["reference-free", "odds"], ["likelihood"]),
    reconstructed="the paper's default lambda could not be read (offline.md §20.1); 0.1 is the low end of "
                  "the Blur paper's grid {0.1, 0.2, 0.5, 1.0}",
)
def asft(policy: Logps, *, lam: float = 0.1, beta: float = 1.0, nll_weight: float = 1.0) -> MethodOutput:
    """NLL of y_w plus an absolute (pointwise) likelihood term for each response; no comparison term.

    offline.md §3: with p(y) = exp(avg(y)) the geometric-mean token probability and the log-odds
    o(y) = log p(y) - log(1 - p(y)),

        L = -nll_weight * avg(y_w) + lam * [ l(beta * o(y_w)) + l(-beta * o(y_l)) ],   l(z) = -log sigmoid(z).

    With beta = 1, sigmoid(o) = p, so L = -(1 + lam) avg(y_w) - lam log(1 - p(y_l)): NLL plus
    unlikelihood, each response pushed on its own (d L / d avg(y_l) does not depend on y_w).
    lam: weight of the alignment term (0.1 here; see `reconstructed`). beta: 1 in the original
    ASFT; the Blur paper's tempered variant tunes it. nll_weight: turbo-alignment's `ce_coef`, 1.
    Shapes: (B, 2) in (response 0 chosen, 1 rejected), (B,) loss. Rewards logged: beta * o(y).
    """
    odds = beta * log_odds(policy.mean[:, :2])
    loss = nll_weight * response_nll(policy, 0) + lam * (neg_log_sigmoid(odds[:, 0]) + neg_log_sigmoid(-odds[:, 1]))
    metrics = pairwise_metrics(odds[:, 0], odds[:, 1])
    metrics["prob/chosen"], metrics["prob/rejected"] = policy.mean[:, 0].exp(), policy.mean[:, 1].exp()
    return MethodOutput(loss, odds, metrics)


def asft_pair_optimum(p: float, lengths: tuple[float, float], lam: float, beta: float, nll_weight: float) -> float:
    """pi(y_0) at the optimum of ASFT's expected loss on a two-response bandit, pair labelled 0 > 1 w.p. p.

    Written from offline.md §3 alone. Let a_k = log pi_k / |y_k|, P_k = exp(a_k), o_k = a_k - log(1 - P_k),
    so do_k/da_k = 1/(1 - P_k). Response k's expected loss as chosen (probability c_k) and as
    rejected (d_k) is  c_k [-nll a_k + lam l(beta o_k)] + d_k lam l(-beta o_k), with derivative in a_k

        g_k = -c_k nll + lam beta [ -c_k sigmoid(-beta o_k) + d_k sigmoid(beta o_k) ] / (1 - P_k).

    With d = theta_0 - theta_1, d a_0/dd = pi_1/|y_0| and d a_1/dd = -pi_0/|y_1|, so
    dE/dd = g_0 pi_1/|y_0| - g_1 pi_0/|y_1| (c_0 = d_1 = p, c_1 = d_0 = 1 - p). It is negative as
    pi_0 -> 0 and positive as pi_0 -> 1 (the unlikelihood terms blow up), and Brent's method finds the root.
    """
    from scipy.optimize import brentq

    L0, L1 = lengths
    chosen, rejected = (p, 1 - p), (1 - p, p)

    def sigmoid(z: float) -> float:
        return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))

    def slope(k: int, pi: float, length: float) -> float:
        a = math.log(pi) / length
        P = math.exp(a)
        o = a - math.log1p(-P)
        return -chosen[k] * nll_weight + lam * beta * (-chosen[k] * sigmoid(-beta * o)
                                                       + rejected[k] * sigmoid(beta * o)) / (1 - P)

    def derivative(pi0: float) -> float:
        pi1 = 1 - pi0
        return slope(0, pi0, L0) * pi1 / L0 - slope(1, pi1, L1) * pi0 / L1

    return brentq(derivative, 1e-9, 1 - 1e-9, xtol=1e-15, rtol=1e-15)


@tabular_check("asft")
def asft_tabular_check(fn=asft):
    """offline.md §3 Tests. (1) Optimum: on a pair labelled 0 > 1 w.p. p with lengths 3 and 7, the
    expected loss is minimised at the root of the derivative written in `asft_pair_optimum`, for
    the original beta = 1 and a tempered beta = 2. (2) Decoupling: d L/d lp(y_l) is the same for
    every lp(y_w) (5 values) and equals lam beta sigmoid(beta o_l) / ((1 - p_l) |y_l|) there.
    (3) Identity, beta = 1: L = -(1 + lam) avg_w - lam log(1 - exp(avg_l))."""
    from preftune.tabular.checks import (PAIR_LENGTHS, PAIR_P, compare, compare_vectors, grid, loss_and_gradient,
                                         method_loss, pair_optimum)

    lam, nll = 0.5, 1.0
    results = []
    for beta in (1.0, 2.0):
        bandit, optimum = pair_optimum(method_loss("asft", fn, lam=lam, beta=beta, nll_weight=nll))
        results.append(compare("asft", f"pair optimum pi(y_0), lam = {lam}, beta = {beta:g}, p = {PAIR_P}, "
                                       f"|y| = {PAIR_LENGTHS}",
                               asft_pair_optimum(PAIR_P, PAIR_LENGTHS, lam, beta, nll), float(optimum.probs[0, 0]),
                               1e-10))

    beta, lengths = 2.0, (3.0, 4.0)
    chosen_sums = grid(-9.0, -0.5, 5)
    rejected_sum = -2.0
    _, grads = loss_and_gradient(method_loss("asft", fn, lam=lam, beta=beta),
                                 torch.stack([chosen_sums, torch.full_like(chosen_sums, rejected_sum)], -1),
                                 lengths=lengths)
    p_l = math.exp(rejected_sum / lengths[1])
    o_l = math.log(p_l / (1 - p_l))
    expected = lam * beta / (1 + math.exp(-beta * o_l)) / ((1 - p_l) * lengths[1])
    results.append(compare_vectors("asft", "decoupling: d L/d lp(y_l) independent of lp(y_w)",
                                   torch.full_like(chosen_sums, expected), grads[:, 1], 1e-13,
                                   labels=[f"lp_w={x:.3g}" for x in chosen_sums.tolist()]))

    sums = torch.tensor([[-1.2, -0.7], [-6.0, -0.1], [-0.05, -9.0]], dtype=torch.float64)
    values, _ = loss_and_gradient(method_loss("asft", fn, lam=lam, beta=1.0), sums, lengths=lengths)
    avg = sums / torch.tensor(lengths, dtype=torch.float64)
    identity = -(1 + lam) * avg[:, 0] - lam * torch.log1p(-avg[:, 1].exp())
    results.append(compare_vectors("asft", "identity beta = 1: L = -(1+lam) avg_w - lam log(1 - p_l)",
                                   identity, values, 1e-12))
    return results
