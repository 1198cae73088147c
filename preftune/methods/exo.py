"""EXO: efficient exact optimisation of language-model alignment (Ji et al., ICML 2024, arXiv 2402.00856)."""
from __future__ import annotations

import math

import torch.nn.functional as F

from preftune.methods.common import log_ratios
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


@register(
    name="exo_pair", seed=None, family="offline-pairwise", input_kind="pairwise", needs_reference=True,
    status="stable", paper="Ji et al. 2024, Towards Efficient Exact Optimization of Language Model Alignment, "
                           "arXiv 2402.00856",
    taxonomy=taxonomy(["pairwise"], ["offline"], ["fixed-reference", "reverse-kl", "probability-matching"]),
)
def exo_pair(policy: Logps, reference: Logps, *, beta: float = 0.5, label_smoothing: float = 1e-3) -> MethodOutput:
    """Reverse KL from the policy's pairwise distribution to the smoothed label distribution (EXO-pref).

    Eq. 16 of the paper with K = 2 responses: the policy's distribution over the pair is
    q = softmax(beta * (Delta_w, Delta_l)) = (sigmoid(h), sigmoid(-h)), h = beta (Delta_w - Delta_l),
    the label distribution is (1 - e, e), and
        L = KL(q || (1-e, e)) = s (log s - log(1-e)) + (1-s) (log(1-s) - log e),   s = sigmoid(h).
    This is the reverse-KL counterpart of cDPO, whose loss (1-e) l(h) + e l(-h) is the forward
    KL(label || q) plus the label entropy. Its gradient is DPO's times sigmoid(h) (log((1-e)/e) - h):
    the same direction, a weight that vanishes at h = log((1-e)/e) (where DPO keeps pushing).
    beta: the paper's beta_pi, 0.5 in the authors' HH and TL;DR scripts. label_smoothing (e): 1e-3,
    the default of public implementations of Eq. 16 (the authors' code puts log-label -10 on the
    loser, e ~ 4.5e-5); must lie in (0, 1/2]. Shapes: (B, 2) in, (B,) loss.
    """
    if not 0 < label_smoothing <= 0.5:
        raise ValueError(f"exo_pair: label_smoothing must lie in (0, 0.5], got {label_smoothing}")
    rewards = beta * log_ratios(policy, reference)
    margin = rewards[:, 0] - rewards[:, 1]
    log_s, log_not_s = F.logsigmoid(margin), F.logsigmoid(-margin)
    loss = (log_s.exp() * (log_s - math.log1p(-label_smoothing))
            + log_not_s.exp() * (log_not_s - math.log(label_smoothing)))
    metrics = pairwise_metrics(rewards[:, 0], rewards[:, 1])
    metrics["policy_pair_prob"] = log_s.exp()  # the policy's probability of the chosen response within the pair
    return MethodOutput(loss, rewards, metrics)


@tabular_check("exo_pair")
def exo_pair_tabular_check(fn=exo_pair):
    """On one pair labelled 0 > 1 with probability p the expected loss has the single minimiser
    h* = (2p - 1) log((1-e)/e) (derivation in pair_checks.exo_pair_optimal_margin); with a hard
    label sigmoid(h*) = 1 - e, i.e. the minimiser matches the policy's pairwise distribution to the
    label distribution. Measured on the paper's e = 1e-3 and on e = 0.1."""
    from preftune.tabular.checks import compare, method_loss, pair_log_ratio_margin, pair_optimum
    from preftune.tabular.pair_checks import exo_pair_optimal_margin

    beta = 0.5
    results = []
    for eps, p in ((1e-3, 1.0), (0.1, 1.0), (0.1, 0.8)):
        bandit, optimum = pair_optimum(method_loss("exo_pair", fn, beta=beta, label_smoothing=eps), p=p)
        h = beta * pair_log_ratio_margin(bandit, optimum.logp)
        results.append(compare("exo_pair", f"pair optimum h* = (2p-1) log((1-e)/e), e = {eps:g}, p = {p:g}",
                               exo_pair_optimal_margin(p, eps), h, 1e-9))
        if p == 1.0:
            results.append(compare("exo_pair", f"hard label, e = {eps:g}: policy pair distribution sigmoid(h*) = 1-e",
                                   1 - eps, 1 / (1 + math.exp(-h)), 1e-10))
    return results
