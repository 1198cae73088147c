"""The regularisers of "3D-Properties" (Yan et al., ICLR 2025, arXiv 2406.07327): Flex-DPO and SFT-augmented DPO.

The paper diagnoses a Drastic drop of the rejected likelihood, Degradation into response
suppression and Dispersion of mass onto unseen responses, from |dL/d pi_l| / |dL/d pi_w| = pi_w/pi_l
(offline.md §11), and proposes the two losses below to slow the push-down on the rejected response.
"""
from __future__ import annotations

import math

import torch

from preftune.methods.common import log_ratios, neg_log_sigmoid
from preftune.methods.dpo import dpo
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics

_PAPER = ("Yan et al. 2025, 3D-Properties: Identifying Challenges in DPO and Charting a Path Forward, ICLR 2025, "
          "arXiv 2406.07327")


@register(
    name="flex_dpo", seed="3d-properties", family="offline-pairwise", input_kind="pairwise", needs_reference=True,
    status="stable", paper=_PAPER,
    taxonomy=taxonomy(["pairwise"], ["offline"], ["fixed-reference", "reverse-kl"], ["likelihood"]),
    reconstructed="the beta+/beta- used in the paper's LLM experiments are not known (offline.md §20.6); the "
                  "default beta_rejected = beta_chosen - 0.02 follows its reported best gap",
)
def flex_dpo(policy: Logps, reference: Logps, *, beta_chosen: float = 0.1, beta_rejected: float = 0.08) -> MethodOutput:
    """DPO with separate temperatures for the chosen and the rejected log-ratio: L = l(beta+ Delta_w - beta- Delta_l).

    offline.md §11: beta_rejected < beta_chosen slows the push-down on the rejected response; in
    probability space |dL/d pi_l| / |dL/d pi_w| = (beta-/beta+) pi_w/pi_l. beta_chosen = beta_rejected
    is DPO. Defaults: beta+ = 0.1 and beta- = 0.08 (the reported best setting has beta- about 0.02
    below beta+; see `reconstructed`). Shapes: (B, 2) in, (B,) loss. Rewards: (beta+ Delta_w, beta- Delta_l).
    """
    ratios = log_ratios(policy, reference)
    rewards = torch.stack([beta_chosen * ratios[:, 0], beta_rejected * ratios[:, 1]], -1)
    margin = rewards[:, 0] - rewards[:, 1]
    return MethodOutput(neg_log_sigmoid(margin), rewards, pairwise_metrics(rewards[:, 0], rewards[:, 1]))


@register(
    name="sft_dpo", seed="3d-properties", family="offline-pairwise", input_kind="pairwise", needs_reference=True,
    status="stable", paper=_PAPER,
    taxonomy=taxonomy(["pairwise"], ["offline"], ["fixed-reference", "reverse-kl"], ["likelihood"]),
    reconstructed="the paper does not pin the NLL normalisation or lambda (offline.md §11, §20.6): token-mean "
                  "is the default, 'sum' is the option; lambda = 1 is our choice",
)
def sft_dpo(policy: Logps, reference: Logps, *, beta: float = 0.1, sft_weight: float = 1.0,
            nll_normalization: str = "token_mean") -> MethodOutput:
    """DPO plus an SFT term on the chosen response: L = l(h) + lambda * NLL(y_w).

    offline.md §11: h = beta (Delta_w - Delta_l); NLL(y_w) = -lp(y_w)/|y_w| (nll_normalization
    "token_mean", default) or -lp(y_w) ("sum"). sft_weight (lambda) = 0 is DPO.
    Shapes: (B, 2) in, (B,) loss. Rewards: beta * log-ratios, as DPO.
    """
    if nll_normalization not in ("token_mean", "sum"):
        raise ValueError(f"sft_dpo: nll_normalization must be 'token_mean' or 'sum', got {nll_normalization!r}")
    out = dpo(policy, reference, beta=beta)
    nll = -(policy.mean[:, 0] if nll_normalization == "token_mean" else policy.sum[:, 0])
    out.metrics["nll/chosen"] = nll.detach()
    return MethodOutput(out.loss + sft_weight * nll, out.rewards, out.metrics)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def _pair_root(derivative) -> float:
    """pi(y_0) where the derivative of a two-response expected loss in theta_0 - theta_1 vanishes."""
    from scipy.optimize import brentq

    return brentq(derivative, 1e-12, 1 - 1e-12, xtol=1e-15, rtol=1e-15)


def flex_dpo_pair_optimum(p: float, ref: tuple[float, float], beta_chosen: float, beta_rejected: float) -> float:
    """pi(y_0) at the optimum of p l(b+ D_0 - b- D_1) + (1-p) l(b+ D_1 - b- D_0) on two responses.

    With d = theta_0 - theta_1: dD_0/dd = pi_1, dD_1/dd = -pi_0, so
    dE/dd = -p s(-z_1) (b+ pi_1 + b- pi_0) + (1-p) s(-z_2) (b+ pi_0 + b- pi_1), z_1, z_2 the two arguments.
    """
    def derivative(pi0: float) -> float:
        pi1 = 1 - pi0
        d0, d1 = math.log(pi0 / ref[0]), math.log(pi1 / ref[1])
        z1, z2 = beta_chosen * d0 - beta_rejected * d1, beta_chosen * d1 - beta_rejected * d0
        return (-p * _sigmoid(-z1) * (beta_chosen * pi1 + beta_rejected * pi0)
                + (1 - p) * _sigmoid(-z2) * (beta_chosen * pi0 + beta_rejected * pi1))

    return _pair_root(derivative)


def sft_dpo_pair_optimum(p: float, ref: tuple[float, float], lengths: tuple[float, float], beta: float,
                         sft_weight: float) -> float:
    """pi(y_0) at the optimum of p [l(beta D) - lam u_0/n_0] + (1-p) [l(-beta D) - lam u_1/n_1], D = Delta_0 - Delta_1,
    u = log pi, n = |y| (token mean) or 1 (sum). dD/dd = 1, du_0/dd = pi_1, du_1/dd = -pi_0, so
    dE/dd = beta [-p s(-beta D) + (1-p) s(beta D)] + lam [-p pi_1/n_0 + (1-p) pi_0/n_1]."""
    def derivative(pi0: float) -> float:
        pi1 = 1 - pi0
        D = math.log(pi0 / ref[0]) - math.log(pi1 / ref[1])
        return (beta * (-p * _sigmoid(-beta * D) + (1 - p) * _sigmoid(beta * D))
                + sft_weight * (-p * pi1 / lengths[0] + (1 - p) * pi0 / lengths[1]))

    return _pair_root(derivative)


@tabular_check("flex_dpo")
def flex_dpo_tabular_check(fn=flex_dpo):
    """offline.md §11 Tests. (1) The generalised gradient ratio, with autograd on probabilities as
    leaves (lp = log pi): |dL/d pi_l| / |dL/d pi_w| = (beta-/beta+) pi_w/pi_l at five (pi_w, pi_l).
    (2) Pair optimum (p = 0.8): the root of the derivative in `flex_dpo_pair_optimum`; beta+ != beta-
    makes the loss depend on Delta_0 and Delta_1 separately, not on their difference alone."""
    from preftune.tabular.bandit import DTYPE
    from preftune.tabular.checks import PAIR_P, PAIR_REF, compare, compare_vectors, method_loss, pair_optimum

    beta_chosen, beta_rejected = 0.5, 0.2
    probs = torch.tensor([[0.3, 0.2], [0.05, 0.6], [0.9, 0.01], [0.4, 0.4], [0.01, 0.001]], dtype=DTYPE,
                         requires_grad=True)
    reference = Logps(sum=torch.log(torch.tensor([[0.2, 0.3]] * 5, dtype=DTYPE)), length=torch.ones(5, 2, dtype=DTYPE))
    loss = fn(Logps(sum=probs.log(), length=torch.ones(5, 2, dtype=DTYPE)), reference,
              beta_chosen=beta_chosen, beta_rejected=beta_rejected).loss
    grad, = torch.autograd.grad(loss.sum(), probs)
    p = probs.detach()
    results = [compare_vectors("flex_dpo", "|dL/d pi_l| / |dL/d pi_w| = (beta-/beta+) pi_w/pi_l (autograd on pi)",
                               beta_rejected / beta_chosen * p[:, 0] / p[:, 1], grad[:, 1].abs() / grad[:, 0].abs(),
                               1e-12, labels=[f"pi=({a:g},{b:g})" for a, b in p.tolist()])]
    bandit, optimum = pair_optimum(method_loss("flex_dpo", fn, beta_chosen=beta_chosen, beta_rejected=beta_rejected))
    results.append(compare("flex_dpo", f"pair optimum pi(y_0), beta+ = {beta_chosen}, beta- = {beta_rejected}, "
                                       f"p = {PAIR_P}", flex_dpo_pair_optimum(PAIR_P, PAIR_REF, beta_chosen, beta_rejected),
                           float(optimum.probs[0, 0]), 1e-10))
    return results


@tabular_check("sft_dpo")
def sft_dpo_tabular_check(fn=sft_dpo):
    """offline.md §11: on a pair labelled 0 > 1 with probability p, lengths 3 and 7, the expected loss
    (the NLL of whichever response is chosen in the row) is minimised at the root of the derivative in
    `sft_dpo_pair_optimum`, for the token-mean NLL (n = |y|) and the summed one (n = 1)."""
    from preftune.tabular.checks import PAIR_LENGTHS, PAIR_P, PAIR_REF, compare, method_loss, pair_optimum

    beta, lam = 0.5, 0.3
    results = []
    for normalization, lengths in (("token_mean", PAIR_LENGTHS), ("sum", (1, 1))):
        bandit, optimum = pair_optimum(method_loss("sft_dpo", fn, beta=beta, sft_weight=lam,
                                                   nll_normalization=normalization))
        results.append(compare("sft_dpo", f"pair optimum pi(y_0), {normalization} NLL, lambda = {lam}, p = {PAIR_P}, "
                                          f"|y| = {PAIR_LENGTHS}",
                               sft_dpo_pair_optimum(PAIR_P, PAIR_REF, lengths, beta, lam), float(optimum.probs[0, 0]),
                               1e-10))
    return results
