"""DSO's DRO loss (Li, Zheng, Rupprecht, Vedaldi 2025, arXiv 2503.22677): no pairs, no reference (diffusion.md §6)."""
from __future__ import annotations

import torch

from preftune.diffusion.methods.common import FAMILY, diffusion_taxonomy, require_samples
from preftune.diffusion.records import Denoise
from preftune.methods.registry import register, tabular_check
from preftune.records import MethodOutput


@register(
    name="dso_dro", seed="dso-dro", family=FAMILY, input_kind="unpaired", needs_reference=False,
    status="stable", paper="Li, Zheng, Rupprecht, Vedaldi 2025, DSO: Aligning 3D Generators with Simulation "
                           "Feedback for Physical Soundness, arXiv 2503.22677 (code RuiningLi/dso)",
    reconstructed="the optional floor (a guard against the unbounded -E term) is ours, off by default",
    taxonomy=diffusion_taxonomy(["unpaired", "binary-labels", "simulator-feedback"], ["offline", "self-improvement"],
                                ["reference-free"]),
)
def dso_dro(policy: Denoise, *, floor: float | None = None) -> MethodOutput:
    """L = E_theta(x+) - E_theta(x-): lower the denoising error of positive samples, raise it on negatives.

    Exactly the official forward_dro_loss: no reference, no sigmoid, no beta; x+ (sample 0) and x-
    (sample 1) are drawn independently from the positive and negative sets of the same condition,
    with the same t and independent eps, t ~ sigmoid(1 + N(0,1)) (logit-normal). The objective is
    separable, E_{D+}[E] - E_{D-}[E], and unbounded below; the paper relies on LoRA, a small lr and few
    steps. floor [R]: when set, L = max(E+ - E-, -floor), so pushing E- up stops once it exceeds E+
    by `floor` (off by default, for parity). At theta = ref its gradient is (4/beta) times Diffusion-DPO's.
    """
    require_samples(policy, 2, "dso_dro")
    gap = policy.error[:, 0] - policy.error[:, 1]
    loss = gap if floor is None else torch.clamp(gap, min=-floor)
    return MethodOutput(loss, -policy.error, {"margin": -gap.detach(), "accuracy": (gap < 0).float()})


@tabular_check("dso_dro")
def dso_dro_check(fn=dso_dro):
    """diffusion.md §12.2: grad Diffusion-DPO at theta = ref equals (beta/4) grad DSO-DRO (same t and eps),
    on eps- and flow-matching problems; the loss is separable (pairing + with other - leaves it unchanged)."""
    from preftune.diffusion.methods import checks
    from preftune.diffusion.methods.diffusion_dpo import diffusion_dpo

    results = []
    beta = 500.0
    for kind in ("ddpm", "flow"):
        p = checks.problem(kind)
        theta = p.theta()
        policy, reference = p.denoise(theta), p.reference()
        dro = checks.grad(checks.mean_loss(fn, policy), theta)
        dpo = checks.grad(diffusion_dpo(policy, reference, beta=beta).loss.mean(), theta)
        results.append(checks.gradient_identity("dso_dro", f"grad Diffusion-DPO at theta = ref equals beta/4 * grad "
                                                f"DSO-DRO ({kind})", dpo, beta / 4 * dro))
    p = checks.problem(share_noise=False, seed=2)
    theta = p.theta(shift=0.3)
    record = p.denoise(theta)
    shuffled = torch.stack([record.error[:, 0], record.error[:, 1].roll(1)], dim=-1)
    results.append(checks.close("dso_dro", "separable: re-pairing positives with other negatives keeps the mean loss",
                                checks.mean_loss(fn, record).item(), checks.mean_loss(fn, Denoise(shuffled)).item()))
    return results
