"""Exact online and self-play dynamics on a finite response set (online.md §0-8, §15-16).

An online method alternates "sample from pi_t, ask the oracle, fit pi_{t+1}". With one prompt
and K responses every step of that loop is exact:

- the data of an iteration is a finite distribution of rows (`Round`): which responses are
  drawn (from pi_t, from pi_ref, uniformly), with which label or target, and which frozen
  policies (pi_t, the history of MNPO) the loss sees besides the policy and the reference;
- fitting pi_{t+1} is minimising the method's exact expected loss on that round
  (`minimise_round`), or taking a gradient step on it (`round_gradient`) for the methods whose
  paper analyses gradient steps (EGPO) or policy-gradient solves (Nash-MP);
- the closed-form updates of online.md §0's table (multiplicative weights, mirror descent,
  extragradient, MNPO's geometric history) are written here from the papers' formulas,
  independently of any loss, together with the equilibria of games.py.

The checks beside each method (`@tabular_check`) run the registered loss through this loop and
compare it with the closed forms, so the loss itself is what `preftune verify` checks: a sign
error moves the minimiser away from the closed-form update.

Policies are (K,) float64 log-probability vectors; every response has length 1 (the online
methods use summed sequence log-probs). Step sizes follow online.md §0's internal convention:
`step` s multiplies the win-rate P(y > pi), `beta` is the KL-to-reference strength.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch
from torch import Tensor

from preftune.records import Logps
from preftune.tabular.bandit import as_float64
from preftune.tabular.expected import LossFn, single_threaded
from preftune.tabular.games import kl_divergence
from preftune.tabular.preferences import PreferenceModel

# The shared test bed of online.md §16: intransitive (0 > 1 > 2 > 0) and asymmetric, so the
# unregularised Nash equilibrium (2/7, 1/7, 4/7) is neither uniform nor a vertex.
SECTION16 = PreferenceModel.from_matrix([[0.5, 0.9, 0.4], [0.1, 0.5, 0.7], [0.6, 0.3, 0.5]], name="online.md §16")
SECTION16_REF = (0.6, 0.3, 0.1)


def log_policy(probs) -> Tensor:
    """Normalised (K,) float64 log-probabilities of a probability vector."""
    return torch.log_softmax(as_float64(probs).log(), dim=-1)


# -- closed-form updates (online.md §0 table, internal parametrisation) ------------------------

def mw_update(preferences: PreferenceModel, log_pi: Tensor, step: float) -> Tensor:
    """Multiplicative weights: pi_{t+1} ~ pi_t exp(s P(. > pi_t)).

    SPPO's update with s = eta (online.md §2) and conceptual DNO's soft policy iteration with
    s = 1/eta (§1a, Alg. 1 step 2).
    """
    return torch.log_softmax(log_pi + step * preferences.win_rate(log_pi.exp()), dim=-1)


def mirror_descent_update(preferences: PreferenceModel, log_pi: Tensor, log_ref: Tensor, step: float,
                          beta: float, opponent: Tensor | None = None) -> Tensor:
    """Explicit mirror descent on the KL-regularised game (online.md §0, §3, §4):

        pi_{t+1} ~ pi_t^(1 - s beta) pi_ref^(s beta) exp(s P(. > opponent)),  opponent = pi_t by default.

    INPO's OMD update with s = 1/eta_INPO and beta = tau; EGPO's half step.
    """
    opponent = log_pi if opponent is None else opponent
    wins = preferences.win_rate(opponent.exp())
    return torch.log_softmax((1 - step * beta) * log_pi + step * beta * log_ref + step * wins, dim=-1)


def extragradient_update(preferences: PreferenceModel, log_pi: Tensor, log_ref: Tensor, step: float,
                         beta: float) -> Tensor:
    """EGPO's extragradient step (online.md §4): a half step against pi_t, then a step from pi_t
    (the anchor) against the half-step policy."""
    half = mirror_descent_update(preferences, log_pi, log_ref, step, beta)
    return mirror_descent_update(preferences, log_pi, log_ref, step, beta, opponent=half)


def mnpo_update(preferences: PreferenceModel, log_history: Sequence[Tensor], history_weights: Sequence[float],
                log_ref: Tensor, ratio: float, step: float) -> Tensor:
    """TD-MNPO's population update (online.md §6 Test):

        log pi_{t+1} = rho log pi_ref + (1 - rho) sum_j lambda_j log pi_{t-j} + s P(. > pi_t) + c,

    log_history[0] = pi_t (the policy that generated the data), lambda normalised to sum 1.
    Its fixed point is pi*_beta with beta = rho / s; one history player is INPO's update.
    """
    weights = normalised_weights(history_weights)
    mixture = sum(w * h for w, h in zip(weights, log_history))
    wins = preferences.win_rate(log_history[0].exp())
    return torch.log_softmax(ratio * log_ref + (1 - ratio) * mixture + step * wins, dim=-1)


def normalised_weights(weights: Sequence[float]) -> list[float]:
    """lambda_j / sum lambda, uniform when every weight is 0 (MNPO's convention, online.md §6)."""
    weights = [float(w) for w in weights]
    if any(w < 0 for w in weights) or not weights:
        raise ValueError(f"history weights must be non-negative and not empty, got {weights}")
    total = sum(weights)
    return [w / total for w in weights] if total > 0 else [1 / len(weights)] * len(weights)


def iterate(update: Callable[[Tensor], Tensor], start: Tensor, iterations: int) -> list[Tensor]:
    """[pi_0, pi_1, ..., pi_T] from pi_{t+1} = update(pi_t) (log-probabilities)."""
    path = [start]
    for _ in range(iterations):
        path.append(update(path[-1]))
    return path


def average_policy(path: Sequence[Tensor]) -> Tensor:
    """The uniform mixture of the iterates pi_1..pi_T (probabilities): the average iterate that
    SPPO and DNO's guarantees are about (online.md §1a, §2)."""
    return torch.stack([lp.exp() for lp in path[1:]]).mean(0)


def kl_path(target: Tensor, path: Sequence[Tensor]) -> list[float]:
    """KL(target || pi_t) along a path of log-policies (target in probabilities)."""
    return [kl_divergence(target, lp.exp()) for lp in path]


def contraction_rate(values: Sequence[float], start: int, end: int) -> float:
    """Geometric-mean ratio (v_end / v_start)^(1 / (end - start)): the per-iteration factor of a
    linearly converging sequence."""
    return (values[end] / values[start]) ** (1 / (end - start))


# -- the exact data of one iteration --------------------------------------------------------------

@dataclass(frozen=True)
class Round:
    """One iteration's data distribution: row m shows the method responses[m] with probability weight[m].

    responses: (M, R) response indices, R = 2 for pairs (chosen first) and 1 for single samples.
    extras:    per-row data columns, (M, ...) tensors (win_rate, soft_label, ...).
    policies:  frozen policies the method takes as `Logps` extras of the same name: a (K,) log-policy
               (e.g. "previous" = pi_t) or a list of them (MNPO's "history").
    """

    responses: Tensor
    weight: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)
    policies: dict[str, Tensor | list[Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if abs(float(self.weight.sum()) - 1) > 1e-12:
            raise ValueError("round weights are probabilities and must sum to 1")

    def with_win_rates(self, wins: Tensor) -> "Round":
        """Add `win_rate` (M, R) = P(y > opponent) of each shown response, and for pairs
        `soft_label` (M,) = sigmoid(r(y_0) - r(y_1)) with r = those win-rates (DNO Alg. 1)."""
        win_rate = wins[self.responses]
        extras = {**self.extras, "win_rate": win_rate}
        if self.responses.shape[1] == 2:
            extras["soft_label"] = torch.sigmoid(win_rate[:, 0] - win_rate[:, 1])
        return replace(self, extras=extras)

    def seeing(self, **policies: Tensor | list[Tensor]) -> "Round":
        """The same rows, with frozen policies the loss takes as extras (e.g. previous=log_pi_t)."""
        return replace(self, policies={**self.policies, **policies})

    def records(self, log_pi: Tensor) -> Logps:
        """The `Logps` a trainer would build for these rows under a policy with log-probs log_pi."""
        return Logps(sum=log_pi[self.responses], length=torch.ones(self.responses.shape, dtype=log_pi.dtype))

    def method_extras(self) -> dict:
        extras: dict = dict(self.extras)
        for name, value in self.policies.items():
            extras[name] = [self.records(v) for v in value] if isinstance(value, list) else self.records(value)
        return extras


def labelled_pairs(preferences: PreferenceModel, probs: Tensor) -> Round:
    """Two independent samples from `probs`, kept when distinct, labelled by a Bernoulli draw from P:
    row (i chosen, j rejected) has weight pi_i pi_j P[i, j] (binary winners, online.md §3 step 2)."""
    p = as_float64(probs)
    K = len(p)
    chosen, rejected = torch.nonzero(~torch.eye(K, dtype=torch.bool), as_tuple=True)
    weight = p[chosen] * p[rejected] * preferences.matrix[chosen, rejected]
    keep = weight > 0
    return Round(torch.stack([chosen[keep], rejected[keep]], -1), weight[keep] / weight[keep].sum())


def sampled_pairs(probs: Tensor, include_identical: bool = True) -> Round:
    """Ordered pairs (y_0, y_1) drawn independently from `probs`, unlabelled (for soft targets:
    win-rates, soft labels). include_identical keeps y_0 = y_1, so each slot is exactly pi-distributed."""
    p = as_float64(probs)
    K = len(p)
    first, second = torch.meshgrid(torch.arange(K), torch.arange(K), indexing="ij")
    first, second = first.flatten(), second.flatten()
    weight = p[first] * p[second]
    keep = (weight > 0) & (include_identical | (first != second))
    return Round(torch.stack([first[keep], second[keep]], -1), weight[keep] / weight[keep].sum())


def single_samples(probs: Tensor) -> Round:
    """One response per row, drawn from `probs` (the on-policy samples of a policy-gradient step)."""
    p = as_float64(probs)
    keep = p > 0
    return Round(torch.arange(len(p))[keep].unsqueeze(-1), p[keep] / p[keep].sum())


# -- fitting pi_{t+1}: the registered loss, exactly -------------------------------------------------

def round_loss(loss: LossFn, data: Round, log_ref: Tensor, logits: Tensor) -> Tensor:
    """E[L](theta) = sum_m weight_m loss_m for the softmax policy with these (K,) logits."""
    log_pi = torch.log_softmax(logits, dim=-1)
    return (data.weight * loss(data.records(log_pi), data.records(log_ref), data.method_extras())).sum()


def round_gradient(loss: LossFn, data: Round, log_ref: Tensor, log_pi: Tensor) -> Tensor:
    """d E[L] / d logits at the policy log_pi: what one full-batch gradient step uses."""
    logits = log_pi.detach().clone().requires_grad_(True)
    with single_threaded():
        grad, = torch.autograd.grad(round_loss(loss, data, log_ref, logits), logits)
    return grad


def gradient_step(loss: LossFn, data: Round, log_ref: Tensor, log_pi: Tensor, lr: float) -> Tensor:
    """One full-batch gradient-descent step on the softmax logits, from logits = log_pi."""
    return torch.log_softmax(log_pi - lr * round_gradient(loss, data, log_ref, log_pi), dim=-1)


def minimise_round(loss: LossFn, data: Round, log_ref: Tensor, start: Tensor, grad_tol: float = 1e-13,
                   max_iter: int = 100) -> Tensor:
    """The policy minimising the round's expected loss (log-probabilities), by damped Newton steps.

    The online checks solve hundreds of these in sequence, each warm-started at pi_t, a few
    logits each: plain Newton with the exact Hessian (pseudo-inverse, since adding a constant to
    every logit changes nothing) and a backtracking line search reaches a gradient of 1e-13 in a
    handful of steps, several times faster than a general trust-region solver. Raises if the
    gradient does not reach grad_tol, so a check never reads an unconverged "optimum".
    """
    def objective(logits: Tensor) -> Tensor:
        return round_loss(loss, data, log_ref, logits)

    x = start.detach().clone()
    with single_threaded():
        for _ in range(max_iter):
            xg = x.clone().requires_grad_(True)
            value = objective(xg)
            grad, = torch.autograd.grad(value, xg)
            if grad.abs().max() <= grad_tol:
                return torch.log_softmax(x, dim=-1)
            hessian = torch.autograd.functional.hessian(objective, x)
            direction = -torch.linalg.pinv(hessian, hermitian=True, rtol=1e-12) @ grad
            if float(direction @ grad) >= 0:  # not a descent direction (a non-convex region): use the gradient
                direction = -grad
            # Armijo backtracking; the slack accepts the full step once the decrease it promises is
            # below what float64 resolves in the loss (the last, quadratically converging steps).
            rate, current, slope = 1.0, float(value.detach()), float(direction @ grad)
            slack = 1e-14 * (1 + abs(current))
            with torch.no_grad():
                while rate > 1e-8 and float(objective(x + rate * direction)) > current + 1e-4 * rate * slope + slack:
                    rate /= 2
            x = x + rate * direction
    raise RuntimeError(f"minimise_round: gradient {float(grad.abs().max()):.2e} above {grad_tol:.0e} "
                       f"after {max_iter} Newton steps")


def stationary_point(gradient: Callable[[Tensor], Tensor], start: Tensor, grad_tol: float = 1e-12,
                     max_iter: int = 50, fd_step: float = 1e-6) -> Tensor:
    """Logits where a gradient field vanishes, by Newton's method with a central-difference Jacobian.

    For surrogate losses whose gradient is right but whose value is not an objective: a
    REINFORCE surrogate -sg(A) log pi(y) on samples y ~ pi has the policy gradient of the true
    objective, yet its own minimum means nothing. Solving gradient = 0 with the surrogate is what
    running its optimiser to convergence would do (Nash-MP's proximal steps, online.md §5b).
    The Jacobian is singular along the all-ones direction (softmax gauge): a pseudo-inverse.
    Returns normalised log-probabilities; raises if the gradient does not reach grad_tol.
    """
    x = start.detach().clone()
    K = len(x)
    for _ in range(max_iter):
        g = gradient(x)
        if g.abs().max() <= grad_tol:
            return torch.log_softmax(x, dim=-1)
        columns = []
        for k in range(K):
            e = torch.zeros(K, dtype=x.dtype)
            e[k] = fd_step
            columns.append((gradient(x + e) - gradient(x - e)) / (2 * fd_step))
        jacobian = torch.stack(columns, dim=1)
        jacobian = (jacobian + jacobian.T) / 2
        x = x - torch.linalg.pinv(jacobian, hermitian=True, rtol=1e-10) @ g
    raise RuntimeError(f"stationary_point: gradient {float(g.abs().max()):.2e} above {grad_tol:.0e} "
                       f"after {max_iter} Newton steps")


def loss_driven_path(step: Callable[[Tensor, int], Tensor], start: Tensor, iterations: int) -> list[Tensor]:
    """[pi_0, ..., pi_T] from pi_{t+1} = step(pi_t, t): the online loop with the loss in it."""
    path = [start]
    for t in range(iterations):
        path.append(step(path[-1], t))
    return path


__all__ = [
    "Round", "SECTION16", "SECTION16_REF", "average_policy", "contraction_rate", "extragradient_update",
    "gradient_step", "iterate", "kl_path", "labelled_pairs", "log_policy", "loss_driven_path",
    "minimise_round", "mirror_descent_update", "mnpo_update", "mw_update", "normalised_weights",
    "round_gradient", "round_loss", "sampled_pairs", "single_samples", "stationary_point",
]
