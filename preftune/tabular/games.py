"""The preference game and its equilibria, exactly (online.md §0 and §16).

For a preference matrix P the game J(pi, pi') = P(pi > pi') is symmetric and constant-sum with
value 1/2; its Nash equilibrium (the von Neumann winner) beats or ties every response. The
KL-regularised game J_beta(pi, pi') = P(pi > pi') - beta KL(pi||pi_ref) + beta KL(pi'||pi_ref) has a
unique equilibrium pi*_beta with pi*_beta(y) ~ pi_ref(y) exp(P(y > pi*_beta)/beta). The Nash
methods (SPPO, INPO, EGPO, Nash-MD/MP, MNPO) are checked against these.

Policies are (K,) float64 probability vectors; a preference model is a `PreferenceModel`.
"""
from __future__ import annotations

import torch
from scipy.optimize import linprog
from torch import Tensor

from preftune.tabular.bandit import as_float64
from preftune.tabular.preferences import PreferenceModel


def kl_divergence(p: Tensor, q: Tensor) -> float:
    """KL(p || q) = sum p log(p/q), with 0 log 0 = 0."""
    mask = p > 0
    return float((p[mask] * (p[mask].log() - q[mask].log())).sum())


def nash_equilibrium(preferences: PreferenceModel) -> Tensor:
    """A Nash equilibrium of the unregularised preference game, by linear programming.

    Maximise v subject to sum_i pi_i (P[i, j] - 1/2) >= v for every j, pi in the simplex. The
    game's value is 0 in these units (P - 1/2 is skew-symmetric), so the solution satisfies
    P(pi > y) >= 1/2 for every response y, i.e. zero exploitability. When the equilibrium is not
    unique this returns one of them (a vertex of the LP's optimal face).
    """
    A = (preferences.matrix - 0.5).numpy()
    K = A.shape[0]
    cost = [0.0] * K + [-1.0]  # variables (pi_1..pi_K, v); minimise -v
    upper = [list(-A[:, j]) + [1.0] for j in range(K)]  # v - sum_i pi_i A[i, j] <= 0
    result = linprog(cost, A_ub=upper, b_ub=[0.0] * K, A_eq=[[1.0] * K + [0.0]], b_eq=[1.0],
                     bounds=[(0, None)] * K + [(None, None)], method="highs")
    if not result.success:
        raise RuntimeError(f"the Nash linear program failed: {result.message}")
    pi = as_float64(result.x[:K]).clamp_min(0)
    return pi / pi.sum()


def best_response_value(preferences: PreferenceModel, policy: Tensor, beta: float = 0.0,
                        ref: Tensor | None = None) -> float:
    """max_pi' P(pi' > policy) - beta KL(pi'||pi_ref).

    beta = 0: max_y P(y > policy). beta > 0: the maximiser is pi' ~ pi_ref exp(P(. > policy)/beta),
    with value beta log sum_y pi_ref(y) exp(P(y > policy)/beta).
    """
    wins = preferences.win_rate(policy)
    if beta == 0:
        return float(wins.max())
    if ref is None:
        raise ValueError("the regularised game (beta > 0) needs the reference policy")
    return float(beta * torch.logsumexp(ref.log() + wins / beta, dim=0))


def exploitability(preferences: PreferenceModel, policy: Tensor, beta: float = 0.0,
                   ref: Tensor | None = None) -> float:
    """How much a best response gains against `policy` in the (regularised) game; 0 at equilibrium.

    beta = 0: max_y P(y > pi) - 1/2 (online.md §16). beta > 0: max_pi' J_beta(pi', pi) - J_beta(pi, pi)
    = best_response_value - 1/2 + beta KL(pi||pi_ref), which is 0 exactly at pi*_beta.
    """
    value = best_response_value(preferences, policy, beta, ref) - 0.5
    return value + (beta * kl_divergence(policy, ref) if beta > 0 else 0.0)


def duality_gap(preferences: PreferenceModel, policy: Tensor, beta: float = 0.0, ref: Tensor | None = None) -> float:
    """max_pi' J(pi', pi) - min_pi' J(pi, pi') for the profile (pi, pi). The game is constant-sum with
    J(pi, pi') = 1 - J(pi', pi), so the gap is twice the exploitability."""
    return 2 * exploitability(preferences, policy, beta, ref)


def nash_mp_step(preferences: PreferenceModel, log_policy: Tensor, log_ref: Tensor, beta: float,
                 step: float) -> Tensor:
    """One Nash Mirror Prox iteration (online.md §5b), implicit (proximal) KL-to-reference form:

        log pi_{k+1/2} = [log pi_k + s beta log pi_ref + s P(. > pi_k)] / (1 + s beta) + c
        log pi_{k+1}   = [log pi_k + s beta log pi_ref + s P(. > pi_{k+1/2})] / (1 + s beta) + c

    Returns log pi_{k+1}. KL(pi*_beta || pi_k) contracts at least by 1/(1 + s beta) per step
    for s <= 2 (the l1 -> l_inf Lipschitz constant of P - 1/2 is 1/2).
    """
    def prox(opponent_log: Tensor) -> Tensor:
        wins = preferences.win_rate(opponent_log.exp())
        return torch.log_softmax((log_policy + step * beta * log_ref + step * wins) / (1 + step * beta), dim=0)

    return prox(prox(log_policy))


def regularised_equilibrium(preferences: PreferenceModel, ref, beta: float, step: float = 2.0,
                            tol: float = 1e-12, max_iter: int = 100_000) -> Tensor:
    """pi*_beta, the unique equilibrium of the KL-regularised game, to `tol` in log-probability.

    Iterates Nash-MP from pi_ref until successive log-policies differ by less than tol (max-abs),
    then checks the fixed point pi ~ pi_ref exp(P(. > pi)/beta) holds to the same tolerance.
    """
    if beta <= 0:
        raise ValueError("the regularised equilibrium needs beta > 0; use nash_equilibrium for beta = 0")
    log_ref = as_float64(ref).log()
    log_ref = log_ref - torch.logsumexp(log_ref, 0)
    log_pi = log_ref.clone()
    for _ in range(max_iter):
        new = nash_mp_step(preferences, log_pi, log_ref, beta, step)
        done = (new - log_pi).abs().max() < tol
        log_pi = new
        if done:
            break
    else:
        raise RuntimeError(f"Nash-MP did not reach tol={tol} in {max_iter} iterations")
    # A sanity bound, not the accuracy: the residual is about tol / (step beta^2), far below this.
    fixed_point = torch.log_softmax(log_ref + preferences.win_rate(log_pi.exp()) / beta, dim=0)
    if (fixed_point - log_pi).abs().max() > 1e-6:
        raise RuntimeError("Nash-MP stopped at a point that is not the regularised equilibrium")
    return log_pi.exp()
