"""Diffusion-DPO (Wallace et al. 2023, arXiv 2311.12908): the base of the diffusion family (diffusion.md §1)."""
from __future__ import annotations

from preftune.diffusion.methods.common import (FAMILY, diffusion_taxonomy, error_gap, pair_metrics,
                                               require_samples)
from preftune.diffusion.records import Denoise
from preftune.methods.common import neg_log_sigmoid
from preftune.methods.registry import register, tabular_check
from preftune.records import MethodOutput


@register(
    name="diffusion_dpo", seed=None, family=FAMILY, input_kind="image-pairs", needs_reference=True,
    status="stable", paper="Wallace et al. 2023, Diffusion Model Alignment Using Direct Preference Optimization, "
                           "arXiv 2311.12908",
    taxonomy=diffusion_taxonomy(["pairwise"], ["offline"], ["fixed-reference", "reverse-kl"]),
)
def diffusion_dpo(policy: Denoise, reference: Denoise, *, beta: float = 5000.0) -> MethodOutput:
    """DPO on the denoising-error surrogate of the log-likelihood ratio, winner vs loser.

    L = -log sigmoid(-(beta/2) [(E_theta(x_w) - E_ref(x_w)) - (E_theta(x_l) - E_ref(x_l))]), the code
    form of the paper's Eq. 14 (T*omega(lambda_t) folded into beta, mean-reduced errors), with the same
    (t, eps) for winner, loser, policy and reference. The flow-matching form is the same function on
    velocity errors (re-tune beta: DSO uses 500). beta: 5000 (SD1.5, SDXL; 2000-5000 work).
    Shapes: (B, 2) errors in, (B,) loss; rewards are -(beta/2) Delta per sample.
    """
    require_samples(policy, 2, "diffusion_dpo")
    rewards = -0.5 * beta * error_gap(policy, reference)
    inside = rewards[:, 0] - rewards[:, 1]
    return MethodOutput(neg_log_sigmoid(inside), rewards, pair_metrics(inside))


@tabular_check("diffusion_dpo")
def diffusion_dpo_check(fn=diffusion_dpo):
    """diffusion.md §12.1-2: log 2 at theta = ref; grad = (beta/4) grad(E_w - E_l) there; swapping
    winner and loser flips the gradient; the same on a flow-matching (velocity) problem."""
    from preftune.diffusion.methods import checks

    return checks.dpo_identities("diffusion_dpo", fn, {"beta": 5000.0})
