"""CPO: Condition Preference Optimization (Lyu et al., NeurIPS 2025) for controllable generation (diffusion.md §10)."""
from __future__ import annotations

import torch
from torch import Tensor

from preftune.diffusion.methods.common import FAMILY, diffusion_taxonomy, error_gap, require_samples
from preftune.diffusion.records import Denoise
from preftune.methods.common import neg_log_sigmoid
from preftune.methods.registry import register, tabular_check
from preftune.records import MethodOutput

FORMS = ("hinge", "sigmoid")


def dpo_weight(d_theta: Tensor, d_ref: Tensor, beta: float) -> Tensor:
    """g+ = sigmoid((beta/2)(D_theta - D_ref)), no gradient: the weight DPO's gradient puts on a pair."""
    return torch.sigmoid(0.5 * beta * (d_theta - d_ref)).detach()


@register(
    name="cpo", seed="cpo-condition", family=FAMILY, input_kind="condition-pairs", needs_reference=True,
    status="stable", paper="Lyu et al. 2025, Condition Preference Optimization for controllable image generation, "
                           "NeurIPS 2025 (code ZonglinL/CPO)",
    reconstructed="how the worse control c_l is built per control type is not pinned (diffusion.md §13.5)",
    taxonomy=diffusion_taxonomy(["pairwise", "condition-pairs"], ["offline"], ["fixed-reference", "margin", "sft-anchor"]),
)
def cpo(policy: Denoise, reference: Denoise, *, beta: float = 5000.0, form: str = "hinge", margin: float = 2e-3,
        sft_weight: float = 0.05, positive_weight: float = 0.9) -> MethodOutput:
    """Contrast two control conditions on the same image: the clean control c_w against a worse c_l.

    Sample 0 is the error with c_w, sample 1 with c_l, at the same x0, t and eps (the image-side terms
    cancel). D_theta = E_theta(c_w) - E_theta(c_l), D_ref likewise.
    form "sigmoid" (the paper): L = -log sigmoid(-(beta/2)(D_theta - D_ref)).
    form "hinge" (the trained code): g+ = sg sigmoid((beta/2)(D_theta - D_ref)), g- = 1 - g+,
    L = 0.9 g+ max(0, D_theta + m) + 0.1 g- max(0, -D_theta + m), masked at t = 0.
    Both add sft_weight * E_theta(c_w) (the SFT anchor, grad_scale in the code). Defaults: beta 5000,
    margin 2e-3 (5e-3 canny, 1e-2 pose), sft_weight 0.05 (canny; 0.1 pose).
    """
    require_samples(policy, 2, "cpo")
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    d_theta = policy.error[:, 0] - policy.error[:, 1]
    d_ref = reference.error[:, 0] - reference.error[:, 1]
    if form == "sigmoid":
        preference = neg_log_sigmoid(-0.5 * beta * (d_theta - d_ref))
    else:
        g_plus = dpo_weight(d_theta, d_ref, beta)
        preference = (positive_weight * g_plus * torch.relu(d_theta + margin)
                      + (1 - positive_weight) * (1 - g_plus) * torch.relu(-d_theta + margin))
        if policy.time is not None:  # the code masks pairs drawn at t = 0
            preference = preference * (policy.time[:, 0] > 0).to(preference.dtype)
    loss = preference + sft_weight * policy.error[:, 0]
    inside = -0.5 * beta * (d_theta - d_ref).detach()
    return MethodOutput(loss, -0.5 * beta * error_gap(policy, reference),
                        {"margin": inside, "accuracy": (inside > 0).float(), "preference_loss": preference.detach()})


@tabular_check("cpo")
def cpo_check(fn=cpo):
    """diffusion.md §12.2: g+ equals the weight autograd finds in the DPO (sigmoid) loss's gradient;
    the sigmoid form is log 2 at theta = ref with Diffusion-DPO's gradient on the two conditions; the
    hinge form's gradient is 0.9 g+ grad D_theta + 0.1 g- (-grad D_theta) on its active sides."""
    from preftune.diffusion.methods import checks

    results = []
    beta = 5000.0
    p = checks.problem(same_condition=False)  # CPO: one x0, t and eps per example, two conditions
    p = checks.Problem(p.schedule, p.x0[:, :1].expand_as(p.x0).clone(), p.cond, p.t, p.eps, p.theta_ref)
    theta = p.theta()
    policy, reference = p.denoise(theta), p.reference()
    sigmoid_loss = checks.mean_loss(fn, policy, reference, beta=beta, form="sigmoid", sft_weight=0.0)
    results.append(checks.close("cpo", "sigmoid form: loss at theta = ref is log 2", checks.LOG2, sigmoid_loss.item()))
    d = (policy.error[:, 0] - policy.error[:, 1]).mean()
    results.append(checks.gradient_identity("cpo", "sigmoid form: grad at theta = ref equals beta/4 * grad(E(c_w) - E(c_l))",
                                            checks.grad(sigmoid_loss, theta), beta / 4 * checks.grad(d, theta)))
    moved = p.theta(shift=2e-4)  # near the reference, where (beta/2)(D_theta - D_ref) is O(1)
    moved_policy = p.denoise(moved)
    d_theta = moved_policy.error[:, 0] - moved_policy.error[:, 1]
    d_ref = reference.error[:, 0] - reference.error[:, 1]
    # Autograd's weight: dL/dD_theta of the sigmoid loss is (beta/2) g+.
    d_leaf = d_theta.detach().clone().requires_grad_(True)
    autograd_weight = torch.autograd.grad(neg_log_sigmoid(-0.5 * beta * (d_leaf - d_ref)).sum(), d_leaf)[0] / (0.5 * beta)
    results.append(checks.close("cpo", "g+ equals the autograd DPO weight", 0.0,
                                float((dpo_weight(d_theta, d_ref, beta) - autograd_weight).abs().max())))
    hinge = checks.mean_loss(fn, moved_policy, reference, beta=beta, form="hinge", sft_weight=0.0, margin=2e-3)
    g_plus = dpo_weight(d_theta, d_ref, beta)
    active_pos = (d_theta + 2e-3 > 0).to(checks.DTYPE)
    active_neg = (-d_theta + 2e-3 > 0).to(checks.DTYPE)
    surrogate = ((0.9 * g_plus * active_pos - 0.1 * (1 - g_plus) * active_neg) * d_theta).mean()
    results.append(checks.gradient_identity("cpo", "hinge form: grad equals 0.9 g+ grad D - 0.1 g- grad D on active sides",
                                            checks.grad(hinge, moved), checks.grad(surrogate, moved)))
    return results
