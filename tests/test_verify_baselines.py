"""Mutation tests for the baseline methods' tabular checks: each check, pointed at a deliberately broken
copy of its loss, must fail on the property named; and the real losses pass.

The broken copies are thin wrappers around the real functions (or the paper's formula with one
thing changed), so each is exactly the bug it is named after.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mutation import mutation_test
import preftune.methods  # noqa: F401  (registers the methods)
from preftune.methods import get
from preftune.methods.anchored_po import apo_zero
from preftune.methods.bco import bco_pair
from preftune.methods.cdpo import cdpo
from preftune.methods.common import log_ratios, neg_log_sigmoid
from preftune.methods.discopop import discopop
from preftune.methods.dpo import dpo
from preftune.methods.exo import exo_pair
from preftune.methods.sppo_hard import sppo_hard
from preftune.records import MethodOutput
from preftune.tabular.verify import verify_methods

BASELINES = ["exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "apo_zero", "apo_down", "discopop", "wpo", "rpo"]


def test_every_baseline_check_passes():
    reports = verify_methods(BASELINES)
    for report in reports:
        assert report.status == "passed", (report.name, report.reason, [(c.property, c.error) for c in report.checks])


# -- broken copies ---------------------------------------------------------------------------------

def exo_forward_kl(policy, reference, *, beta=0.5, label_smoothing=1e-3):
    """KL(label || q) instead of KL(q || label): cDPO, the forward KL EXO is contrasted with."""
    return cdpo(policy, reference, beta=beta, label_smoothing=label_smoothing)


def exo_labels_swapped(policy, reference, *, beta=0.5, label_smoothing=1e-3):
    """The label distribution (e, 1-e): log e and log(1-e) on the wrong terms."""
    rewards = beta * log_ratios(policy, reference)
    log_s, log_not_s = F.logsigmoid(rewards[:, 0] - rewards[:, 1]), F.logsigmoid(rewards[:, 1] - rewards[:, 0])
    loss = (log_s.exp() * (log_s - math.log(label_smoothing))
            + log_not_s.exp() * (log_not_s - math.log1p(-label_smoothing)))
    return MethodOutput(loss, rewards)


def exo_margin_unscaled(policy, reference, *, beta=0.5, label_smoothing=1e-3):
    """beta forgotten: q = sigmoid(Delta_w - Delta_l)."""
    return exo_pair(policy, reference, beta=1.0, label_smoothing=label_smoothing)


def nca_full_weight_negatives(policy, reference, *, beta=0.01):
    """l(r_w) + l(-r_l) (the 'biased' variant): the 1/K weight of the noise terms dropped."""
    rewards = beta * log_ratios(policy, reference)
    return MethodOutput(neg_log_sigmoid(rewards[:, 0]) + neg_log_sigmoid(-rewards[:, 1]), rewards)


def bco_shift_sign_flipped(policy, reference, *, beta=0.1, reward_shift=None, state=None):
    flipped = None if reward_shift is None else -reward_shift
    return bco_pair(policy, reference, beta=beta, reward_shift=flipped, state=state)


def bco_without_shift(policy, reference, *, beta=0.1, reward_shift=None, state=None):
    """The batch statistic ignored: delta = 0 unless fixed by hand."""
    return bco_pair(policy, reference, beta=beta, reward_shift=0.0 if reward_shift is None else reward_shift)


def sppo_targets_not_halved(policy, reference, *, beta=0.001):
    """Targets +-1/beta instead of +-1/(2 beta)."""
    return sppo_hard(policy, reference, beta=beta / 2)


def sppo_margin_only(policy, reference, *, beta=0.001):
    """Only the margin regressed (IPO-like): the absolute targets lost."""
    ratios = log_ratios(policy, reference)
    return MethodOutput(0.5 * (ratios[:, 0] - ratios[:, 1] - 1 / beta) ** 2, beta * ratios)


def aot_without_sorting(policy, reference, *, beta=0.1, label_smoothing=0.0, paired=True):
    """Each pair against its own reference: plain cDPO, no transport."""
    if paired:
        return cdpo(policy, reference, beta=beta, label_smoothing=label_smoothing)
    ratios = log_ratios(policy, reference)
    z = beta * (ratios[:, 0] - ratios[:, 1])
    return MethodOutput((1 - label_smoothing) * neg_log_sigmoid(z) + label_smoothing * neg_log_sigmoid(-z), beta * ratios)


def apo_zero_anchors_swapped(policy, reference, *, beta=0.1):
    """sigmoid(r_w) + 1 - sigmoid(r_l): chosen pushed down, rejected up."""
    return apo_zero(policy.responses([1, 0]), reference.responses([1, 0]), beta=beta)


def apo_down_as_zero(policy, reference, *, beta=0.1):
    """The zero anchor where the down anchor is asked for."""
    return apo_zero(policy, reference, beta=beta)


def apo_down_without_margin_term(policy, reference, *, beta=0.1):
    """sigmoid(r_w) + sigmoid(r_l): the 1 - sigmoid(r_w - r_l) of Eq. 8 replaced by an anchor on y_l."""
    rewards = beta * log_ratios(policy, reference)
    return MethodOutput(torch.sigmoid(rewards[:, 0]) + torch.sigmoid(rewards[:, 1]), rewards)


def discopop_gate_on_wrong_terms(policy, reference, *, beta=0.05, tau=0.05):
    """g l(h) + (1 - g) e^-h: the gate opens the logistic loss for positive margins."""
    h = beta * (log_ratios(policy, reference) @ torch.tensor([1.0, -1.0], dtype=policy.sum.dtype))
    gate = torch.sigmoid(h / tau)
    return MethodOutput(gate * neg_log_sigmoid(h) + (1 - gate) * torch.exp(-h), beta * log_ratios(policy, reference))


def discopop_without_temperature(policy, reference, *, beta=0.05, tau=0.05):
    """g = sigmoid(h): tau dropped."""
    return discopop(policy, reference, beta=beta, tau=1.0)


def wpo_weight_not_detached(policy, reference, *, beta=0.01, label_smoothing=0.0):
    weight = (policy.chosen_mean + policy.rejected_mean).exp()
    base = cdpo(policy, reference, beta=beta, label_smoothing=label_smoothing)
    return MethodOutput(weight * base.loss, base.rewards)


def wpo_weight_on_sums(policy, reference, *, beta=0.01, label_smoothing=0.0):
    """exp(lp(y_w) + lp(y_l)): the sequence probability, not length-normalised."""
    weight = (policy.chosen + policy.rejected).detach().exp()
    base = cdpo(policy, reference, beta=beta, label_smoothing=label_smoothing)
    return MethodOutput(weight * base.loss, base.rewards)


def rpo_with_sequence_nll(policy, reference, *, beta=0.1, alpha=1.0):
    """alpha * (-lp(y_w)): the NLL not divided by |y_w|."""
    base = dpo(policy, reference, beta=beta)
    return MethodOutput(base.loss - alpha * policy.chosen, base.rewards)


def rpo_nll_on_rejected(policy, reference, *, beta=0.1, alpha=1.0):
    """The NLL term on y_l instead of y_w."""
    base = dpo(policy, reference, beta=beta)
    return MethodOutput(base.loss - alpha * policy.rejected_mean, base.rewards)


MUTANTS = [
    # (method, broken function, a property that must fail)
    ("exo_pair", exo_forward_kl, "p = 0.8"),
    ("exo_pair", exo_labels_swapped, "pair optimum"),
    ("exo_pair", exo_margin_unscaled, "pair optimum"),
    ("nca_pair", nca_full_weight_negatives, "free-pair optimum"),
    ("bco_pair", bco_shift_sign_flipped, "free-pair optimum"),
    ("bco_pair", bco_without_shift, "batch-mean shift"),
    ("sppo_hard", sppo_targets_not_halved, "p = 1"),
    ("sppo_hard", sppo_margin_only, "p = 0.8"),
    ("aot", aot_without_sorting, "paired: batch loss unchanged"),
    ("aot", aot_without_sorting, "unpaired: batch loss unchanged"),
    ("apo_zero", apo_zero_anchors_swapped, "pi = pi_ref"),
    ("apo_down", apo_down_as_zero, "pi = pi_ref"),
    ("apo_down", apo_down_without_margin_term, "random policy"),
    ("discopop", discopop_gate_on_wrong_terms, "local minimum"),
    ("discopop", discopop_without_temperature, "local minimum"),
    ("wpo", wpo_weight_not_detached, "zero expected gradient"),
    ("wpo", wpo_weight_on_sums, "random policy"),
    ("rpo", rpo_with_sequence_nll, "alpha = 1"),
    ("rpo", rpo_nll_on_rejected, "alpha = 1"),
]


test_check_fails_on_a_broken_copy_of_the_loss = mutation_test(MUTANTS)


def test_rpo_nll_mutant_is_caught_only_where_the_nll_acts():
    """The alpha = 0 row is plain DPO, which the NLL mutants leave intact: the check localises the bug."""
    assert [r.passed for r in get("rpo").check(fn=rpo_with_sequence_nll)] == [False, True]
