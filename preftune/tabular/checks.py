"""Building blocks for the tabular checks that live beside each method (`@tabular_check`).

A check is a function `check(fn=<the method's function>) -> list[CheckResult]`: it runs the
method inside the exact engine and compares what it measures with a closed form derived from
the paper. Taking `fn` as an argument lets the same check be pointed at a deliberately broken
copy of the loss, which must then fail (tests/test_verify.py keeps those mutation tests).

A typical check is a few lines:

    @tabular_check("dpo")
    def dpo_tabular_check(fn=dpo):
        from preftune.tabular.checks import optimum_matches_reward
        return [optimum_matches_reward("dpo", fn, params={"beta": 0.1}, beta=0.1)]

and `get("dpo").check(fn=broken_dpo)` runs the same check against a broken copy.

Measurements never go through the method's own outputs (its `rewards`, its margin metric): they
are recomputed from the optimal policy, so a bug in the loss cannot hide itself.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from preftune.methods.registry import CheckResult
from preftune.records import Logps
from preftune.tabular.bandit import DTYPE, Bandit, as_float64
from preftune.tabular.expected import (Dataset, LossFn, PolicyOptimum, method_loss, optimise_policy,
                                       optimise_two_response_policy, pairwise_dataset, reference_pair_sampling,
                                       single_pair_dataset)
from preftune.tabular.preferences import PreferenceModel

# The standard reward-recovery bandit: four responses with unequal lengths (so a method that
# normalises by length where it should not is caught) and a non-uniform reference.
DEFAULT_REWARDS = (1.0, 0.4, -0.3, -1.1)
DEFAULT_REF = (0.4, 0.3, 0.2, 0.1)
DEFAULT_LENGTHS = (3, 1, 4, 2)
# The standard single pair: unequal lengths and reference, preference probability 0.8 for 0 > 1.
PAIR_REF = (0.7, 0.3)
PAIR_LENGTHS = (3, 7)
PAIR_P = 0.8


# -- comparing --------------------------------------------------------------------------------

def compare(method: str, prop: str, expected: float, measured: float, tolerance: float) -> CheckResult:
    return CheckResult(method, prop, float(expected), float(measured), tolerance)


def compare_vectors(method: str, prop: str, expected: Tensor, measured: Tensor, tolerance: float,
                    labels: Sequence[str] | None = None) -> CheckResult:
    """One CheckResult for a vector property: the entry with the largest error, named in the property."""
    expected, measured = as_float64(expected).flatten(), as_float64(measured).flatten()
    worst = int((measured - expected).abs().argmax())
    where = labels[worst] if labels is not None else str(worst)
    return CheckResult(method, f"{prop} [worst: {where}]", float(expected[worst]), float(measured[worst]), tolerance)


# -- measurements on a policy, independent of any method's code --------------------------------

def log_ratio(bandit: Bandit, logp: Tensor, normalise: bool = False, prompt: int = 0) -> Tensor:
    """(K,) Delta_k = log pi(k) - log pi_ref(k), divided by |y_k| when normalise (per-token log-ratio)."""
    delta = bandit.log_ratios(logp)[prompt]
    return delta / bandit.lengths[prompt] if normalise else delta


def pair_log_ratio_margin(bandit: Bandit, logp: Tensor, normalise: bool = False) -> float:
    """Delta_0 - Delta_1 of a two-response bandit (IPO's Delta, DPO's h/beta)."""
    delta = log_ratio(bandit, logp, normalise)
    return float(delta[0] - delta[1])


def pair_logp_margin(bandit: Bandit, logp: Tensor, normalise: bool = False) -> float:
    """lp(0) - lp(1), or avg(0) - avg(1) when normalise: the reference-free margin (SLiC, SimPO)."""
    lp = logp[0] / bandit.lengths[0] if normalise else logp[0]
    return float(lp[0] - lp[1])


# -- optimising ---------------------------------------------------------------------------------

def pair_optimum(loss: LossFn, p: float = PAIR_P, ref=PAIR_REF, lengths=PAIR_LENGTHS,
                 smooth: bool = True) -> tuple[Bandit, PolicyOptimum]:
    """Optimum of a loss on one pair labelled 0 > 1 with probability p (two responses, one prompt).

    smooth=False uses the scalar search, for piecewise-linear expected losses (hinge).
    """
    bandit = Bandit.create(ref, lengths)
    data = single_pair_dataset(p)
    optimum = optimise_policy(loss, bandit, data) if smooth else optimise_two_response_policy(loss, bandit, data)
    return bandit, optimum


def optimum_matches_reward(method: str, fn: Callable | None = None, *, params: Mapping, beta: float,
                           score: Callable[[Tensor], Tensor] | None = None, rewards=DEFAULT_REWARDS,
                           ref=DEFAULT_REF, lengths=DEFAULT_LENGTHS, flip_rate: float = 0.0,
                           tolerance: float = 1e-9, response_extras: Mapping[str, Tensor] | None = None,
                           target=None) -> CheckResult:
    """The population optimum under Bradley-Terry labels recovers the reward: for every pair
    beta (s(Delta_i) - s(Delta_j)) = r_i - r_j, where beta s(Delta) is the method's implicit reward.

    s is the identity for DPO (offline.md §1: pi* ~ pi_ref exp(r/beta)); f-DPO passes its score
    f'(pi/pi_ref) as `score` (offline.md §10). Labels are Bradley-Terry from `rewards`, each
    flipped with probability flip_rate (a method robust to that noise must still recover the
    clean rewards); pairs are drawn from the reference; lengths are unequal so that a method
    normalising by length where it should not fails.

    response_extras: per-response data columns, name -> (K, ...) values (e.g. reward-model scores);
    each row receives the values of its own responses, (R, ...), as the data extra of that name.
    target: the (K,) rewards the implicit reward must recover when they differ from the labels'
    `rewards` (e.g. MODPO's weighted reward w_k r_k + w_-k r_-k); default `rewards`.
    """
    bandit = Bandit.create(ref, lengths)
    preferences = PreferenceModel.bradley_terry(rewards).with_label_noise(flip_rate)
    data = with_response_extras(pairwise_dataset(preferences, reference_pair_sampling(bandit)), response_extras)
    optimum = optimise_policy(method_loss(method, fn, **params), bandit, data)
    implicit = beta * (log_ratio(bandit, optimum.logp) if score is None else score(log_ratio(bandit, optimum.logp)))
    r = as_float64(rewards if target is None else target)
    i, j = torch.triu_indices(len(r), len(r), offset=1)
    noise = f", labels flipped at {flip_rate:g}" if flip_rate else ""
    lhs = "beta*(D_i-D_j)" if score is None else "beta*(s(D_i)-s(D_j))"
    rhs = "r_i-r_j" if target is None else "t_i-t_j (target t)"
    return compare_vectors(method, f"BT optimum {lhs} = {rhs}{noise}", r[i] - r[j],
                           implicit[i] - implicit[j], tolerance,
                           labels=[f"{a},{b}" for a, b in zip(i.tolist(), j.tolist())])


def with_response_extras(data: Dataset, response_extras: Mapping[str, Tensor] | None) -> Dataset:
    """The dataset whose rows also carry per-response values: extra[name][m] = values[responses[m]]
    (one prompt), e.g. each row's reward-model scores of its chosen and rejected responses."""
    if not response_extras:
        return data
    extras = dict(data.extras)
    extras.update({name: as_float64(values)[data.responses] for name, values in response_extras.items()})
    return replace(data, extras=extras)


def optimum_is_policy(method: str, prop: str, expected_probs: Tensor, optimum: PolicyOptimum,
                      tolerance: float) -> CheckResult:
    """Compare an optimal policy with a closed-form one, response by response (largest error shown)."""
    probs = optimum.probs[0]
    return compare_vectors(method, prop, expected_probs, probs, tolerance,
                           labels=[f"pi(y{k})" for k in range(len(probs))])


# -- evaluating a loss at chosen points ----------------------------------------------------------

def loss_and_gradient(loss: LossFn, policy_sums, reference_sums=None, lengths=(1, 1),
                      extras: Mapping[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Per-example losses of (B, R) records with these policy (and reference, default 0) sums,
    and the gradient of their sum with respect to the policy sums, (B, R)."""
    sums = as_float64(policy_sums).requires_grad_(True)
    length = as_float64(lengths).expand(sums.shape).clone()
    reference = torch.zeros_like(sums) if reference_sums is None else as_float64(reference_sums)
    values = loss(Logps(sum=sums, length=length), Logps(sum=reference, length=length), extras or {})
    grad, = torch.autograd.grad(values.sum(), sums, allow_unused=True)
    return values.detach(), torch.zeros_like(sums) if grad is None else grad


def losses_at_log_ratio_margins(loss: LossFn, margins, lengths=(1, 1),
                                extras: Mapping[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """`loss_and_gradient` on pairs whose log-ratio margin Delta_w - Delta_l is each of `margins`
    (reference log-probs 0, policy log-probs (margin, 0)); for a reference-free method the margin
    is the log-prob gap lp(y_w) - lp(y_l)."""
    margins = as_float64(margins).flatten()
    return loss_and_gradient(loss, torch.stack([margins, torch.zeros_like(margins)], -1), None, lengths, extras)


def grid(low: float, high: float, steps: int) -> Tensor:
    return torch.linspace(low, high, steps, dtype=DTYPE)


def hinge_properties(method: str, loss: LossFn, scale: float, margin: float,
                     reference_free: bool = False) -> list[CheckResult]:
    """The three exact properties of a hinge max(0, margin - scale * (x_w - x_l)) on a margin
    x = log-ratio (or log-prob when reference_free) of a pair (SLiC-HF; offline.md §1):

    1. the gradient is exactly 0 once the margin is met (scale * x >= margin);
    2. below it, d loss / d lp(y_w) = -scale exactly;
    3. on a pair labelled 0 > 1 with probability p > 1/2 the expected loss, piecewise linear in
       the margin with slopes 1 - 2p (below) and 1 - p (above), is minimised exactly at the margin.
    """
    above = (margin + grid(0.0, 5.0, 6)[1:]) / scale
    below = (margin - grid(0.0, 5.0, 6)[1:]) / scale
    _, grad_above = losses_at_log_ratio_margins(loss, above)
    _, grad_below = losses_at_log_ratio_margins(loss, below)
    bandit, optimum = pair_optimum(loss, smooth=False)
    measured = pair_logp_margin(bandit, optimum.logp) if reference_free else \
        pair_log_ratio_margin(bandit, optimum.logp)
    return [
        compare(method, "gradient exactly 0 once the margin is met (5 points above it)",
                0.0, float(grad_above.abs().max()), 0.0),
        compare_vectors(method, f"d loss/d lp(y_w) = -{scale:g} below the margin", torch.full_like(below, -scale),
                        grad_below[:, 0], 1e-12, labels=[f"h={scale * x:.2g}" for x in below.tolist()]),
        compare(method, f"optimum of the expected loss at the margin (p = {PAIR_P})", margin, scale * measured, 1e-6),
    ]


__all__ = [
    "DEFAULT_LENGTHS", "DEFAULT_REF", "DEFAULT_REWARDS", "PAIR_LENGTHS", "PAIR_P", "PAIR_REF",
    "compare", "compare_vectors", "grid", "hinge_properties", "log_ratio", "loss_and_gradient",
    "losses_at_log_ratio_margins",
    "method_loss", "optimum_is_policy", "optimum_matches_reward", "pair_log_ratio_margin", "pair_logp_margin",
    "pair_optimum", "with_response_extras",
]
