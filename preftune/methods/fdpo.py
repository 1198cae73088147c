"""f-DPO: DPO under f-divergence regularisation (Wang, Jiang, Yang, Liu, Chen 2023, "Beyond Reverse KL",
arXiv 2309.16240)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from preftune.methods.common import log_ratios, neg_log_sigmoid
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics

DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")


def divergence_score(delta: Tensor, divergence: str, alpha: float, max_exponent: float) -> Tensor:
    """f'(u) of the policy/reference ratio u = exp(Delta), up to an additive constant (offline.md §10 table).

    reverse_kl: Delta;  forward_kl: -exp(-Delta);  js: log sigmoid(Delta) = log(2u/(1+u)) - log 2;
    alpha (paper parameterisation, 0 < alpha < 1): (1 - exp(-alpha Delta)) / alpha.
    The exponents are clamped at max_exponent so that a very unlikely response gives a large,
    finite score instead of inf (trl clamps at 80 in fp32/bf16, 11 in fp16).
    """
    if divergence == "reverse_kl":
        return delta
    if divergence == "forward_kl":
        return -torch.exp((-delta).clamp(max=max_exponent))
    if divergence == "js":
        return F.logsigmoid(delta)
    if divergence == "alpha":
        if not 0 < alpha < 1:
            raise ValueError(f"fdpo: the alpha-divergence needs 0 < alpha < 1, got {alpha}")
        return (1 - torch.exp((-alpha * delta).clamp(max=max_exponent))) / alpha
    raise ValueError(f"fdpo: divergence must be one of {DIVERGENCES}, got {divergence!r}")


@register(
    name="fdpo", seed="f-dpo", family="offline-pairwise", input_kind="pairwise", needs_reference=True,
    status="stable",
    paper="Wang, Jiang, Yang, Liu, Chen 2023, Beyond Reverse KL: Generalizing Direct Preference Optimization "
          "with Diverse Divergence Constraints, arXiv 2309.16240",
    taxonomy=taxonomy(["pairwise"], ["offline"], ["fixed-reference", "f-divergence"], ["diversity", "calibration"]),
)
def fdpo(policy: Logps, reference: Logps, *, beta: float = 0.1, divergence: str = "reverse_kl", alpha: float = 0.5,
         max_exponent: float = 80.0) -> MethodOutput:
    """DPO with each log-ratio replaced by f'(pi/pi_ref) of an f-divergence: L = l(beta [f'(u_w) - f'(u_l)]).

    offline.md §10: u_y = pi(y|x)/pi_ref(y|x) = exp(Delta_y), and by divergence
      reverse_kl  f'(u) = log u + 1            score Delta                (this is DPO exactly)
      forward_kl  f'(u) = -1/u                 score -exp(-Delta)         (bounded above by 0)
      js          f'(u) = log(2u/(1+u))        score log sigmoid(Delta)
      alpha       f'(u) = (1 - u^-alpha)/alpha score (1 - exp(-alpha Delta))/alpha, 0 < alpha < 1
    (additive constants cancel in the difference). alpha -> 0 tends to reverse KL, alpha -> 1 to
    forward KL (trl's alpha' = 1 - alpha; 0.5 is the same either way). The population optimum
    under Bradley-Terry labels satisfies beta f'(pi_i/pi_ref_i) = r_i + C.
    beta: ~0.1. alpha: 0.5 (the paper swept 0.3, 0.5, 0.7; unverified). max_exponent: 80 (fp32).
    Shapes: (B, 2) in, (B,) loss. Rewards: beta * score (the implicit reward beta f'(u)).
    """
    rewards = beta * divergence_score(log_ratios(policy, reference), divergence, alpha, max_exponent)
    margin = rewards[:, 0] - rewards[:, 1]
    return MethodOutput(neg_log_sigmoid(margin), rewards, pairwise_metrics(rewards[:, 0], rewards[:, 1]))


@tabular_check("fdpo")
def fdpo_tabular_check(fn=fdpo):
    """offline.md §10 Test: under Bradley-Terry labels on the standard bandit (unequal lengths,
    non-uniform reference) the optimum satisfies beta (f'(u_i) - f'(u_j)) = r_i - r_j for every pair,
    for each divergence, with f' written here from the paper's table (as a function of u = pi/pi_ref):
    log u, -1/u, log(2u/(1+u)) and (1 - u^-alpha)/alpha."""
    from dataclasses import replace

    from preftune.tabular.checks import optimum_matches_reward

    beta, alpha = 0.5, 0.3
    f_prime = {
        "reverse_kl": lambda d: d,
        "forward_kl": lambda d: -1 / d.exp(),
        "js": lambda d: torch.log(2 * d.exp() / (1 + d.exp())),
        "alpha": lambda d: (1 - d.exp() ** (-alpha)) / alpha,
    }
    results = []
    for name, score in f_prime.items():
        result = optimum_matches_reward("fdpo", fn, params=dict(beta=beta, divergence=name, alpha=alpha), beta=beta,
                                        score=score)
        results.append(replace(result, property=f"{name}: {result.property}"))
    return results
