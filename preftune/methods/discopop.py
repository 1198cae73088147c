"""DiscoPOP: the log-ratio modulated loss discovered by LLM-driven search (Chris Lu et al., NeurIPS 2024, arXiv 2406.08414)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from preftune.methods.common import log_ratios, neg_log_sigmoid
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


@register(
    name="discopop", seed=None, family="offline-pairwise", input_kind="pairwise", needs_reference=True,
    status="stable", paper="Lu et al. 2024, Discovering Preference Optimization Algorithms with and for Large "
                           "Language Models, arXiv 2406.08414",
    taxonomy=taxonomy(["pairwise"], ["offline", "discovered-objective"], ["fixed-reference", "reverse-kl"]),
)
def discopop(policy: Logps, reference: Logps, *, beta: float = 0.05, tau: float = 0.05) -> MethodOutput:
    """Log-ratio modulated loss (LRML): a sigmoid gate mixes DPO's logistic loss and the exponential loss.

    Eq. 5 of the paper, with rho = (lp(y_w) - lp(y_l)) - (lpr(y_w) - lpr(y_l)) and h = beta * rho:
        L = (1 - g) * log(1 + exp(-h)) + g * exp(-h),   g = sigmoid(h / tau).
    At h = 0 the two losses weigh equally; for h >> tau it is the exponential loss, for h << -tau
    the logistic one. The loss is not convex: around h = 0 it rises from log 2 towards 1, so the
    expected loss of a pair has a spurious local minimum at a small negative margin (§6.1, §6.2).
    tau: 0.05 (Eq. 5); beta: 0.05, the value the loss was discovered with (§6.2 reports failures
    for beta <= 0.01 and beta >= 2.5). Metrics: gate g besides margin/accuracy. Shapes: (B, 2) in, (B,) loss.
    """
    rewards = beta * log_ratios(policy, reference)
    h = rewards[:, 0] - rewards[:, 1]
    gate = torch.sigmoid(h / tau)
    # g * exp(-h) as exp(log g - h): for a very negative margin exp(-h) overflows while g underflows,
    # and their product (about exp(h (1/tau - 1)) -> 0) would come out as 0 * inf = nan.
    loss = torch.sigmoid(-h / tau) * neg_log_sigmoid(h) + torch.exp(F.logsigmoid(h / tau) - h)
    metrics = pairwise_metrics(rewards[:, 0], rewards[:, 1])
    metrics["gate"] = gate
    return MethodOutput(loss, rewards, metrics)


@tabular_check("discopop")
def discopop_tabular_check(fn=discopop):
    """On one pair labelled 0 > 1 with probability p = 0.8 the expected loss p f(h) + (1-p) f(-h) has two
    local minima (pair_checks.discopop_pair_stationary_points, roots of its derivative written from
    Eq. 5): a spurious one at a negative margin and the global one at a positive margin. The engine,
    started inside each basin, must land on each. A third row checks which one is global."""
    from preftune.tabular.bandit import Bandit
    from preftune.tabular.checks import PAIR_P, PAIR_REF, compare, method_loss, pair_log_ratio_margin
    from preftune.tabular.expected import optimise_policy, single_pair_dataset
    from preftune.tabular.pair_checks import discopop_pair_stationary_points

    beta, tau = 0.05, 0.05
    points = discopop_pair_stationary_points(PAIR_P, tau)
    minima = [h for h, kind in points if kind == "min"]
    maxima = [h for h, kind in points if kind == "max"]
    bandit = Bandit.create(PAIR_REF)
    data = single_pair_dataset(PAIR_P)
    loss = method_loss("discopop", fn, beta=beta, tau=tau)
    results, values = [], []
    for name, h_star, start_h in (("spurious (negative margin)", minima[0], minima[0] - 0.1),
                                  ("global (positive margin)", minima[-1], maxima[0] + 0.2)):
        # Logits whose margin beta (Delta_0 - Delta_1) is start_h: the reference plus start_h / beta on response 0.
        start = bandit.reference_logits() + torch.tensor([[start_h / beta, 0.0]], dtype=torch.float64)
        optimum = optimise_policy(loss, bandit, data, init_logits=start)
        values.append(optimum.loss)
        results.append(compare("discopop", f"{name} local minimum h* of the pair's expected loss, p = {PAIR_P}, "
                                           f"tau = {tau}", h_star, beta * pair_log_ratio_margin(bandit, optimum.logp), 1e-9))
    results.append(compare("discopop", "the positive-margin minimum has the lower expected loss (1 = yes)",
                           1.0, float(values[1] < values[0]), 0.0))
    return results
