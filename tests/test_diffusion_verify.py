"""`preftune verify` on the diffusion methods: every identity passes, and broken copies of the losses fail.

Each mutant is a thin wrapper around the real function that is exactly the bug it is named after
(a beta not halved, a clamp that is a PPO min, ties not masked, ...).
"""
from __future__ import annotations

import io
import json

import torch
import torch.nn.functional as F

from mutation import mutation_test
from preftune.diffusion.methods.awm import awm, matching_loss
from preftune.diffusion.methods.cpo import cpo
from preftune.diffusion.methods.d3po import d3po
from preftune.diffusion.methods.ddo import ddo
from preftune.diffusion.methods.ddpo import ddpo
from preftune.diffusion.methods.dense_dpo import dense_dpo
from preftune.diffusion.methods.diffusion_dpo import diffusion_dpo
from preftune.diffusion.methods.diffusion_dro import diffusion_dro
from preftune.diffusion.methods.dso_dro import dso_dro
from preftune.diffusion.methods.flow_grpo import flow_grpo
from preftune.diffusion.methods.rankdpo import rankdpo
from preftune.diffusion.methods.smpo import smpo
from preftune.diffusion.records import Denoise, Steps
from preftune.methods import all_methods
from preftune.records import MethodOutput
from preftune.tabular.verify import run_verify

DIFFUSION = [spec.name for spec in all_methods() if spec.family == "diffusion"]


def test_verify_passes_for_every_diffusion_method():
    out = io.StringIO()
    assert run_verify(DIFFUSION, as_json=True, stream=out) == 0
    report = json.loads(out.getvalue())
    assert {m["name"] for m in report["methods"]} == set(DIFFUSION)
    assert all(m["status"] == "passed" and len(m["checks"]) >= 3 for m in report["methods"])


# --------------------------------------------------------------------------- mutants

def dpo_full_beta(policy, reference, *, beta=5000.0):
    """Diffusion-DPO with beta instead of beta/2 (the paper's prefactor read as the code's)."""
    return diffusion_dpo(policy, reference, beta=2 * beta)


def dpo_linearised(policy, reference, *, beta=5000.0):
    """The first-order expansion log 2 + (beta/4)(Delta_w - Delta_l): right at the reference only."""
    gap = (policy.error - reference.error)
    inside = -0.5 * beta * (gap[:, 0] - gap[:, 1])
    return MethodOutput(torch.log(torch.tensor(2.0, dtype=inside.dtype)) - inside / 2, gap)


def d3po_soft_clip(policy, reference, *, preference, beta=0.1, clip=0.1):
    """D3PO with PPO's min of clipped and unclipped terms instead of the hard trust region."""
    raw = (policy.logp - reference.logp)
    log_ratio = torch.minimum(raw, raw.clamp(torch.log(torch.tensor(1 - clip)), torch.log(torch.tensor(1 + clip))))
    signs = torch.stack([preference, -preference], -1)
    inside = beta * (signs * log_ratio).sum(-1)
    return MethodOutput(-F.logsigmoid(inside), log_ratio)


def d3po_ties_as_wins(policy, reference, *, preference, beta=0.1, clip=0.1):
    """Ties labelled as if sample 0 had won."""
    return d3po(policy, reference, preference=torch.where(preference == 0, torch.ones_like(preference), preference),
                beta=beta, clip=clip)


def dro_no_margin(policy, reference, *, margin=1e-3):
    return diffusion_dro(policy, reference, margin=0.0)


def dro_no_hinge(policy, reference, *, margin=1e-3):
    gap = policy.error - reference.error
    return MethodOutput(gap[:, 0] - gap[:, 1] + margin, -gap)


def smpo_unsmoothed(policy, reference, *, scores, beta=2000.0, **kwargs):
    """SmPO without its kappa: plain Diffusion-DPO."""
    return diffusion_dpo(policy, reference, beta=beta)


def smpo_kappa_without_centering(policy, reference, *, scores, beta=2000.0, scale=10.0, score_low=0.11544,
                                 score_high=0.28202, relabel=True):
    """kappa = scale * p_w (not scale (2 p_w - 1)): a toss-up still pulls."""
    p = torch.sigmoid((scores[:, 0] - scores[:, 1]) / (score_high - score_low))
    gap = policy.error - reference.error
    inside = -0.5 * beta * scale * p * (gap[:, 0] - gap[:, 1])
    return MethodOutput(-F.logsigmoid(inside), gap)


def rank_gain_only(policy, reference, *, scores, beta=5000.0, discount="ln", rank_by="model"):
    """DCG weights without the discount difference."""
    implicit = -0.5 * beta * (policy.error - reference.error)
    gain = 2 ** scores - 1
    better = (scores[:, :, None] > scores[:, None, :]).to(implicit.dtype)
    weights = (gain[:, :, None] - gain[:, None, :]).abs()
    pair_losses = -F.logsigmoid(implicit[:, :, None] - implicit[:, None, :])
    return MethodOutput((better * weights * pair_losses).sum((1, 2)), implicit)


def rank_log2(policy, reference, *, scores, beta=5000.0, discount="ln", rank_by="model"):
    return rankdpo(policy, reference, scores=scores, beta=beta, discount="log2", rank_by=rank_by)


def dso_flipped(policy, *, floor=None):
    return dso_dro(Denoise(policy.error.flip(1)))


def dso_squared(policy, *, floor=None):
    gap = policy.error[:, 0] - policy.error[:, 1]
    return MethodOutput(gap.abs() * gap, -policy.error)


def ddo_alpha_on_real(policy, reference, *, alpha=1.0, beta=0.05):
    log_ratio = -(policy.error - reference.error)
    loss = alpha * F.softplus(-beta * log_ratio[:, 0]) + F.softplus(beta * log_ratio[:, 1])
    return MethodOutput(loss, log_ratio)


def ddo_sign_flipped(policy, reference, *, alpha=1.0, beta=0.05):
    return ddo(Denoise(2 * reference.error - policy.error), reference, alpha=alpha, beta=beta)


def awm_ratio_without_gradient(policy, reference, *, advantages, beta=1e-3, clip=1.0, loss_shape="uniform",
                               ghuber_p=0.25, ghuber_delta=1e-3):
    """rho computed from detached log-probs: always 1, so the policy term passes no gradient."""
    detached = Denoise(policy.error.detach(), prediction=policy.prediction, time=policy.time)
    return awm(detached, reference, advantages=advantages, beta=beta, clip=clip, loss_shape=loss_shape)


def awm_ghuber_without_time(policy, reference, *, advantages, beta=1e-3, clip=1.0, loss_shape="uniform",
                            ghuber_p=0.25, ghuber_delta=1e-3):
    untimed = Denoise(policy.error, prediction=policy.prediction,
                      time=None if policy.time is None else torch.ones_like(policy.time))
    return awm(untimed, reference, advantages=advantages, beta=beta, clip=clip, loss_shape=loss_shape)


def awm_drift_not_squared(policy, reference, *, advantages, beta=1e-3, clip=1.0, loss_shape="uniform",
                          ghuber_p=0.25, ghuber_delta=1e-3):
    out = awm(policy, reference, advantages=advantages, beta=0.0, clip=clip, loss_shape=loss_shape)
    drift = (policy.prediction - reference.prediction).abs().flatten(2).mean(-1).mean(-1)
    return MethodOutput(out.loss + beta * drift, out.rewards)


def ddpo_min_instead_of_max(policy, *, advantages, old_logp, clip=1e-4, estimator="is"):
    ratio = torch.exp(policy.logp[:, 0] - old_logp)
    loss = torch.minimum(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip))
    return MethodOutput(loss, policy.logp.detach())


def grpo_kl_without_variance(policy, reference, *, advantages, old_logp, clip=1e-4, beta=0.04):
    out = flow_grpo(policy, reference, advantages=advantages, old_logp=old_logp, clip=clip, beta=0.0)
    kl = ((policy.mean[:, 0] - reference.mean[:, 0]) ** 2).flatten(1).mean(-1) / 2
    return MethodOutput(out.loss + beta * kl, out.rewards)


def grpo_no_clip(policy, reference, *, advantages, old_logp, clip=1e-4, beta=0.04):
    return flow_grpo(policy, reference, advantages=advantages, old_logp=old_logp, clip=1e9, beta=beta)


def dense_ties_counted(policy, reference, *, segment_labels, beta=5000.0, normalise="mean"):
    """Ties left in the mean's denominator."""
    out = dense_dpo(policy, reference, segment_labels=segment_labels, beta=beta, normalise="sum")
    return MethodOutput(out.loss / segment_labels.shape[1], out.rewards)


def dense_whole_video(policy, reference, *, segment_labels, beta=5000.0, normalise="mean"):
    """Every segment judged on the whole-video error."""
    whole = lambda r: Denoise(r.error, segments=r.error[..., None].expand_as(r.segments))
    return dense_dpo(whole(policy), whole(reference), segment_labels=segment_labels, beta=beta, normalise=normalise)


def cpo_weight_with_gradient(policy, reference, *, beta=5000.0, form="hinge", margin=2e-3, sft_weight=0.05,
                             positive_weight=0.9):
    """g+ left attached to the graph (no stop-gradient)."""
    if form == "sigmoid":
        return cpo(policy, reference, beta=beta, form=form, margin=margin, sft_weight=sft_weight)
    d_theta = policy.error[:, 0] - policy.error[:, 1]
    d_ref = reference.error[:, 0] - reference.error[:, 1]
    g = torch.sigmoid(0.5 * beta * (d_theta - d_ref))
    loss = 0.9 * g * torch.relu(d_theta + margin) + 0.1 * (1 - g) * torch.relu(-d_theta + margin)
    return MethodOutput(loss + sft_weight * policy.error[:, 0], policy.error)


def cpo_weights_swapped(policy, reference, *, beta=5000.0, form="hinge", margin=2e-3, sft_weight=0.05,
                        positive_weight=0.9):
    return cpo(policy, reference, beta=beta, form=form, margin=margin, sft_weight=sft_weight, positive_weight=0.1)


MUTANTS = [
    ("diffusion_dpo", dpo_full_beta, "grad at theta = ref equals"),
    ("diffusion_dpo", dpo_linearised, "not odd"),
    ("d3po", d3po_soft_clip, "outside [1 - clip, 1 + clip] have zero gradient"),
    ("d3po", d3po_ties_as_wins, "a tie (0, 0) has zero gradient"),
    ("diffusion_dro", dro_no_margin, "loss at theta = ref is the margin"),
    ("diffusion_dro", dro_no_hinge, "zero gradient on examples"),
    ("smpo", smpo_unsmoothed, "kappa * beta/4"),
    ("smpo", smpo_kappa_without_centering, "p_w = 0.5"),
    ("rankdpo", rank_gain_only, "k = 2: loss at theta = ref"),
    ("rankdpo", rank_log2, "k = 4"),
    ("dso_dro", dso_flipped, "grad Diffusion-DPO at theta = ref"),
    ("dso_dro", dso_squared, "grad Diffusion-DPO at theta = ref"),
    ("ddo", ddo_alpha_on_real, "grad at theta = ref equals beta/2"),
    ("ddo", ddo_sign_flipped, "TV(p_theta, p_data)"),
    ("awm", awm_ratio_without_gradient, "on-policy grad"),
    ("awm", awm_ghuber_without_time, "ghuber"),
    ("awm", awm_drift_not_squared, "drift term equals"),
    ("ddpo", ddpo_min_instead_of_max, "clipped ratios have zero gradient"),
    ("flow_grpo", grpo_kl_without_variance, "KL term equals"),
    ("flow_grpo", grpo_no_clip, "clipped ratios have zero gradient"),
    ("dense_dpo", dense_ties_counted, "mean over labelled segments of"),
    ("dense_dpo", dense_whole_video, "mean over labelled segments of"),
    ("cpo", cpo_weight_with_gradient, "hinge form"),
    ("cpo", cpo_weights_swapped, "hinge form"),
]

test_diffusion_check_fails_on_a_broken_copy_of_the_loss = mutation_test(MUTANTS)


def test_every_diffusion_method_has_a_mutant():
    assert {m[0] for m in MUTANTS} == set(DIFFUSION)
