"""SmPO-Diffusion (Lu et al., ICML 2025): smoothed preference labels, with ReNoise inversion (diffusion.md §4)."""
from __future__ import annotations

import torch
from torch import Tensor

from preftune.diffusion.methods.common import FAMILY, diffusion_taxonomy, error_gap, pair_metrics, require_samples
from preftune.diffusion.records import Denoise
from preftune.methods.common import neg_log_sigmoid, score_margin
from preftune.methods.registry import register, tabular_check
from preftune.records import MethodOutput


def smoothing_factor(scores: Tensor, scale: float = 10.0, low: float = 0.11544, high: float = 0.28202,
                     relabel: bool = True) -> Tensor:
    """(B,) the per-pair factor kappa of SmPO's official code, signed for the given sample order.

    s~ = (s - low)/(high - low), p = sigmoid(s~_0 - s~_1), kappa = scale (2p - 1). With relabel
    (the code: winner and loser re-assigned by reward, not by the human label) kappa is negative when
    sample 1 scores higher, which is Diffusion-DPO with the pair swapped; without, |kappa| keeps the
    given order. low/high: PickScore's normalisers in the code (no paper justification; §13.8).
    """
    normalised = score_margin(scores, "scores") / (high - low)
    kappa = scale * (2 * torch.sigmoid(normalised) - 1)
    return kappa if relabel else kappa.abs()


@register(
    name="smpo", seed="smpo-diffusion", family=FAMILY, input_kind="image-pairs", needs_reference=True,
    status="stable", extras=("scores",),
    paper="Lu et al. 2025, Smoothed Preference Optimization via ReNoise Inversion for Aligning Diffusion "
          "Models with Varied Human Preferences, ICML 2025",
    reconstructed="the flow-matching port (Euler ODE inversion) is ours; the constant 10 and the score "
                  "normalisers are code constants (diffusion.md §13.8)",
    taxonomy=diffusion_taxonomy(["pairwise", "scored", "label-smoothing"], ["offline"], ["fixed-reference", "reverse-kl"]),
)
def smpo(policy: Denoise, reference: Denoise, *, scores: Tensor, beta: float = 2000.0, scale: float = 10.0,
         score_low: float = 0.11544, score_high: float = 0.28202, relabel: bool = True) -> MethodOutput:
    """Diffusion-DPO with the smoothed per-pair factor kappa: beta_eff = beta * kappa.

    L = -log sigmoid(-(beta kappa / 2)(Delta_w - Delta_l)), kappa = scale (2 sigmoid(s~_w - s~_l) - 1):
    the paper's (2 alpha - gamma) prefactor, which vanishes on a toss-up pair (p = 0.5). The errors
    should come from ReNoise inversion rather than random noising (inversion.py; the trainer does
    this for smpo by default). scores: (B, 2) reward-model scores of the two samples.
    beta: 2000 (SD1.5) or 5000 (SDXL).
    """
    require_samples(policy, 2, "smpo")
    kappa = smoothing_factor(scores, scale, score_low, score_high, relabel).to(policy.error.dtype)
    gap = error_gap(policy, reference)
    rewards = -0.5 * beta * gap
    inside = kappa * (rewards[:, 0] - rewards[:, 1])
    return MethodOutput(neg_log_sigmoid(inside), rewards, {**pair_metrics(inside), "kappa": kappa.detach()})


@tabular_check("smpo")
def smpo_check(fn=smpo):
    """diffusion.md §12.1-2, §12.5: log 2 at theta = ref; gradient kappa * (beta/4) grad(E_w - E_l) there;
    zero gradient at p_w = 0.5; the inversion's eps_hat rebuilds x_t exactly and, with many steps and the
    exact score of a Gaussian, lands on the probability-flow ODE's image of x0."""
    from preftune.diffusion.methods import checks
    from preftune.diffusion.methods.checks_inversion import inversion_identities

    scores = torch.tensor([[0.25, 0.15], [0.12, 0.27], [0.2, 0.19], [0.3, 0.1], [0.15, 0.16], [0.22, 0.14]],
                          dtype=checks.DTYPE)
    params = {"beta": 2000.0}
    kappa = smoothing_factor(scores)
    results = []
    p = checks.problem()
    theta = p.theta()
    policy, reference = p.denoise(theta), p.reference()
    loss = checks.mean_loss(fn, policy, reference, scores=scores, **params)
    results.append(checks.close("smpo", "loss at theta = ref is log 2", checks.LOG2, loss.item()))
    weighted = (kappa * (policy.error[:, 0] - policy.error[:, 1])).mean()
    results.append(checks.gradient_identity("smpo", "grad at theta = ref equals kappa * beta/4 * grad(E_w - E_l)",
                                            checks.grad(loss, theta), params["beta"] / 4 * checks.grad(weighted, theta)))
    tied = torch.full_like(scores, 0.2)
    moved = p.theta(shift=0.3)
    tie_loss = checks.mean_loss(fn, p.denoise(moved), reference, scores=tied, **params)
    results.append(checks.zero_gradient("smpo", "p_w = 0.5 (equal scores) has zero gradient, away from ref too",
                                        checks.grad(tie_loss, moved)))
    return results + inversion_identities("smpo")
