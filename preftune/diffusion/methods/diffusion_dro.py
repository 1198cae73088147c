"""Diffusion-DRO (Wu et al., NeurIPS 2025): expert data above the model's own samples, by a hinge (diffusion.md §3)."""
from __future__ import annotations

import torch

from preftune.diffusion.methods.common import FAMILY, diffusion_taxonomy, error_gap, require_samples
from preftune.diffusion.records import Denoise
from preftune.methods.registry import register, tabular_check
from preftune.records import MethodOutput


@register(
    name="diffusion_dro", seed="diffusion-dro", family=FAMILY, input_kind="expert-online", needs_reference=True,
    status="stable", paper="Wu et al. 2025, Diffusion-DRO: preference optimisation by ranking expert data above "
                           "online policy samples (NeurIPS 2025; code basiclab/DiffusionDRO)",
    taxonomy=diffusion_taxonomy(["unpaired", "expert-data", "online-negatives"], ["online", "inverse-rl"],
                                ["fixed-reference", "margin"]),
)
def diffusion_dro(policy: Denoise, reference: Denoise, *, margin: float = 1e-3) -> MethodOutput:
    """Hinge ranking of an expert image above a policy state under the denoising implicit reward.

    Sample 0 is an expert x0 noised with fresh eps at the policy state's time; sample 1 is a stored
    policy state x_t whose target is the lagging policy's own prediction there (eps_bar). With
    A = E_theta - E_ref at each: L = max(0, A_e - A_pi + margin), exactly the official train.py. The
    hinge stops once the margin holds (zero gradient). margin: 1e-3 (calibrated for mean-reduced errors).
    """
    require_samples(policy, 2, "diffusion_dro")
    gap = error_gap(policy, reference)
    slack = gap[:, 0] - gap[:, 1] + margin
    return MethodOutput(torch.relu(slack), -gap,
                        {"margin": (gap[:, 1] - gap[:, 0]).detach(), "accuracy": (slack < margin).float(),
                         "active": (slack > 0).float()})


@tabular_check("diffusion_dro")
def diffusion_dro_check(fn=diffusion_dro):
    """diffusion.md §12.1-2: the loss is the margin at theta = ref, its gradient there is
    grad(E_e - E_pi), and it has zero gradient once A_e - A_pi + m < 0."""
    from preftune.diffusion.methods import checks

    margin = 1e-3
    p = checks.problem()
    theta = p.theta()
    policy, reference = p.denoise(theta), p.reference()
    loss = checks.mean_loss(fn, policy, reference, margin=margin)
    want = checks.grad((policy.error[:, 0] - policy.error[:, 1]).mean(), theta)
    results = [checks.close("diffusion_dro", "loss at theta = ref is the margin m", margin, loss.item()),
               checks.gradient_identity("diffusion_dro", "grad at theta = ref equals grad(E_expert - E_policy)",
                                        checks.grad(loss, theta), want)]
    # One step down grad(E_e - E_pi) satisfies the margin on some examples: those must pass no gradient.
    step = torch.autograd.grad((policy.error[:, 0] - policy.error[:, 1]).sum(), list(theta.values()))
    moved = {k: (v - 0.5 * g).detach().requires_grad_(True) for (k, v), g in zip(theta.items(), step)}
    moved_policy = p.denoise(moved)
    gap = moved_policy.error - reference.error
    satisfied = gap[:, 0] - gap[:, 1] + margin < 0
    results.append(checks.close("diffusion_dro", "the moved point satisfies the margin on some examples (setup)",
                                1.0, float(satisfied.any()), 0.0))
    held = fn(moved_policy, reference, margin=margin).loss[satisfied].sum()
    results.append(checks.zero_gradient("diffusion_dro", "zero gradient on examples with A_e - A_pi + m < 0",
                                        checks.grad(held, moved)))
    return results
