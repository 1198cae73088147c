"""SLiC-HF: sequence likelihood calibration with human feedback (Zhao et al. 2023, arXiv 2305.10425).

Two forms: `hinge`, the DPO-library form on the implicit reward, and `slic`, the paper's
reference-free calibration loss with its regulariser.
"""
from __future__ import annotations

import torch

from preftune.methods.common import log_ratios
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics

_PAPER = "Zhao et al. 2023, SLiC-HF: Sequence Likelihood Calibration with Human Feedback, arXiv 2305.10425"


@register(
    name="hinge", seed=None, family="offline-pairwise", input_kind="pairwise", needs_reference=True,
    status="stable", paper=_PAPER,
    taxonomy=taxonomy(["pairwise"], ["offline"], ["fixed-reference", "margin"]),
)
def hinge(policy: Logps, reference: Logps, *, beta: float = 0.1, margin: float = 1.0) -> MethodOutput:
    """Hinge loss on the implicit-reward margin: L = max(0, margin - h), h = beta*(Delta_w - Delta_l).

    The gradient is exactly zero once the margin is met (h >= margin). margin = 1 is the
    usual DPO-library form.
    """
    rewards = beta * log_ratios(policy, reference)
    h = rewards[:, 0] - rewards[:, 1]
    return MethodOutput(torch.relu(margin - h), rewards, pairwise_metrics(rewards[:, 0], rewards[:, 1]))


@register(
    name="slic", seed=None, family="offline-pairwise", input_kind="pairwise", needs_reference=False,
    status="stable", paper=_PAPER,
    taxonomy=taxonomy(["pairwise"], ["offline"], ["reference-free", "margin"]),
)
def slic(policy: Logps, *, margin: float = 1.0, reg_weight: float = 0.0) -> MethodOutput:
    """The paper's reference-free calibration loss: max(0, delta - [lp(y_w) - lp(y_l)]) - lambda * lp(y_w).

    margin (delta): about 1 in the paper. reg_weight (lambda): weight of the sequence NLL
    -log pi(y_w|x) of the chosen response, the paper's regulariser towards the SFT target
    (offline.md §1; 0 disables it). Both terms use sequence sums, as in the paper.
    """
    gap = policy.chosen - policy.rejected
    loss = torch.relu(margin - gap) - reg_weight * policy.chosen
    rewards = policy.sum
    return MethodOutput(loss, rewards, pairwise_metrics(rewards[:, 0], rewards[:, 1]))


@tabular_check("hinge")
def hinge_tabular_check(fn=hinge):
    """offline.md §1 Test: zero gradient once h >= margin, slope -beta below it, and the expected
    loss of a soft-labelled pair minimised exactly at h = margin."""
    from preftune.tabular.checks import hinge_properties, method_loss

    beta, margin = 0.1, 1.0
    return hinge_properties("hinge", method_loss("hinge", fn, beta=beta, margin=margin), scale=beta, margin=margin)


@tabular_check("slic")
def slic_tabular_check(fn=slic):
    """The reference-free hinge on lp(y_w) - lp(y_l): the same three hinge properties with scale 1
    (the optimum is a log-prob gap of exactly delta, whatever the reference), and with the
    regulariser on, the gradient once the margin is met is the sequence NLL's alone:
    d/d lp(y_w) = -lambda, d/d lp(y_l) = 0 (with |y_w| = 3, so a token-mean NLL would show)."""
    from preftune.tabular.checks import compare_vectors, hinge_properties, losses_at_log_ratio_margins, \
        method_loss

    delta, lam, lengths = 1.0, 0.5, (3.0, 7.0)
    results = hinge_properties("slic", method_loss("slic", fn, margin=delta), scale=1.0, margin=delta,
                               reference_free=True)
    _, grads = losses_at_log_ratio_margins(method_loss("slic", fn, margin=delta, reg_weight=lam),
                                           [delta + 0.5, delta + 3.0], lengths)
    expected = torch.tensor([[-lam, 0.0]] * 2, dtype=grads.dtype)
    results.append(compare_vectors("slic", f"margin met, reg_weight {lam}: gradient = NLL's (-lambda, 0)",
                                   expected, grads, 1e-12, labels=["w", "l", "w", "l"]))
    return results
