"""Mutation tests for the tabular checks of asft, ld_dpo, tgdpo, madpo, beta_dpo, tpo, fdpo, flex_dpo,
sft_dpo and modpo: each check, pointed at a deliberately broken copy of its loss, must fail, and the
property that fails must be the one that measures what the bug breaks.

Each broken copy is a thin wrapper that is exactly the bug it is named after (a plausible slip
when writing the loss from the paper), so the real implementation stays the only full copy.
"""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from mutation import mutation_test
from preftune.methods import get
from preftune.methods.asft import asft
from preftune.methods.beta_dpo import MarginStatistics, beta_dpo
from preftune.methods.dpo import dpo
from preftune.methods.fdpo import fdpo
from preftune.methods.madpo import DEFAULT_TAU, madpo
from preftune.methods.modpo import modpo
from preftune.methods.three_d_properties import flex_dpo, sft_dpo
from preftune.methods.tgdpo import tgdpo
from preftune.methods.tpo import tpo
from preftune.records import Logps, MethodOutput
from preftune.tabular.verify import verify_methods

METHODS = ["asft", "ld_dpo", "tgdpo", "madpo", "beta_dpo", "tpo", "fdpo", "flex_dpo", "sft_dpo", "modpo"]


def test_every_check_of_this_area_passes():
    reports = verify_methods(METHODS)
    assert [r.status for r in reports] == ["passed"] * len(METHODS), [(r.name, r.reason) for r in reports]
    assert all(r.checks for r in reports)


# -- broken copies ---------------------------------------------------------------------------------

def asft_rejected_term_sign_flipped(policy, *, lam=0.1, beta=1.0, nll_weight=1.0):
    """l(+beta o(y_l)): pushes the rejected response UP, as the chosen one."""
    from preftune.methods.common import log_odds, neg_log_sigmoid

    odds = beta * log_odds(policy.mean[:, :2])
    loss = -nll_weight * policy.mean[:, 0] + lam * (neg_log_sigmoid(odds[:, 0]) + neg_log_sigmoid(odds[:, 1]))
    return MethodOutput(loss, odds)


def asft_on_sequence_sums(policy, *, lam=0.1, beta=1.0, nll_weight=1.0):
    """p(y) = pi(y) instead of the geometric-mean token probability exp(avg)."""
    return asft(replace(policy, length=torch.ones_like(policy.length)), lam=lam, beta=beta, nll_weight=nll_weight)


def ld_dpo_policy_only(policy, reference, *, beta=0.1, alpha=0.5):
    """The length desensitisation applied to the policy but not to the reference."""
    from preftune.methods.ld_dpo import length_desensitised

    public = torch.minimum(policy.length[:, 0], policy.length[:, 1])
    return dpo(length_desensitised(policy, public, alpha), reference, beta=beta)


def ld_dpo_longest_public_length(policy, reference, *, beta=0.1, alpha=0.5):
    """l_p = max(|y_w|, |y_l|): nothing is ever desensitised."""
    from preftune.methods.ld_dpo import length_desensitised

    public = torch.maximum(policy.length[:, 0], policy.length[:, 1])
    return dpo(length_desensitised(policy, public, alpha), length_desensitised(reference, public, alpha), beta=beta)


def ld_dpo_not_desensitised(policy, reference, *, beta=0.1, alpha=0.5):
    """Plain DPO on the full sequences."""
    return dpo(policy, reference, beta=beta)


def tgdpo_same_sign_on_rejected(policy, reference, *, guidance, beta=0.1, alpha=0.5, clip_weight_min=None):
    """1 + alpha beta r on the rejected tokens too (the sign of the rejected weight lost)."""
    mirrored = Logps.from_tokens(2 * reference.tokens - guidance.tokens, guidance.mask)
    tokens = torch.stack([guidance.tokens[:, 0], mirrored.tokens[:, 1]], 1)
    return tgdpo(policy, reference, guidance=Logps.from_tokens(tokens, guidance.mask), beta=beta, alpha=alpha,
                 clip_weight_min=clip_weight_min)


def tgdpo_ignores_clip(policy, reference, *, guidance, beta=0.1, alpha=0.5, clip_weight_min=None):
    return tgdpo(policy, reference, guidance=guidance, beta=beta, alpha=alpha, clip_weight_min=None)


def tgdpo_reward_unscaled(policy, reference, *, guidance, beta=0.1, alpha=0.5, clip_weight_min=None):
    """Weights 1 + alpha r (the beta inside the weight dropped)."""
    return tgdpo(policy, reference, guidance=guidance, beta=beta, alpha=alpha / beta, clip_weight_min=clip_weight_min)


def madpo_weight_everywhere(policy, reference, *, rm_scores, beta=0.1, c_max=2.0, c_min=0.5, lam=1.0,
                            tau=DEFAULT_TAU):
    """w = sigmoid(c m)/sigmoid(m) also for m <= -tau (the RM-contradicted branch forgotten)."""
    return madpo(policy, reference, rm_scores=rm_scores, beta=beta, c_max=c_max, c_min=c_min, lam=lam, tau=math.inf)


def madpo_schedule_reversed(policy, reference, *, rm_scores, beta=0.1, c_max=2.0, c_min=0.5, lam=1.0,
                            tau=DEFAULT_TAU):
    """c rising with |m| instead of falling (the sign of lam flipped)."""
    return madpo(policy, reference, rm_scores=rm_scores, beta=beta, c_max=c_max, c_min=c_min, lam=-lam, tau=tau)


def beta_dpo_ignores_alpha(policy, reference, *, beta=0.1, alpha=0.6, filter_ratio=0.2, momentum=0.9, state=None):
    return beta_dpo(policy, reference, beta=beta, alpha=0.0, filter_ratio=filter_ratio, momentum=momentum,
                    state=state)


def beta_dpo_statistics_after_the_loss(policy, reference, *, beta=0.1, alpha=0.6, filter_ratio=0.2, momentum=0.9,
                                       state=None):
    """The EMA updated after beta_batch is computed: the current batch is not in M0."""
    state = MarginStatistics(seed=0) if state is None else state
    previous_mean = state.mean
    out = beta_dpo(policy, reference, beta=beta, alpha=alpha, filter_ratio=filter_ratio, momentum=momentum,
                   state=state)
    if state.frozen:
        return out
    frozen = MarginStatistics(seed=0)
    frozen.mean, frozen.std, frozen.frozen = previous_mean, state.std, True
    return beta_dpo(policy, reference, beta=beta, alpha=alpha, filter_ratio=filter_ratio, momentum=momentum,
                    state=frozen)


def beta_dpo_scaled_margins(policy, reference, *, beta=0.1, alpha=0.6, filter_ratio=0.2, momentum=0.9, state=None):
    """Statistics (EMA and batch mean) of the scaled margins beta * Delta instead of the unscaled Delta;
    no filtering (the check runs with filter_ratio 0)."""
    from preftune.methods.common import log_ratios, neg_log_sigmoid

    ratios = log_ratios(policy, reference)
    margins = ratios[:, 0] - ratios[:, 1]
    state = MarginStatistics(seed=0) if state is None else state
    state.update(beta * margins, momentum)
    kept = torch.ones_like(margins, dtype=torch.bool)
    batch_beta = beta * (1 + alpha * (state.kept_mean(beta * margins, kept) - state.mean))
    return MethodOutput(neg_log_sigmoid(batch_beta * margins), batch_beta * ratios)


def tpo_per_example_nll(policy, *, beta=0.01, alpha=1.0, length_normalize=False, gamma=0.5, loss_type="sigmoid",
                        label_smoothing=0.0):
    """Each example's own token mean -avg(gold), not the token mean over the batch's gold tokens."""
    out = tpo(policy, beta=beta, alpha=0.0, length_normalize=length_normalize, gamma=gamma, loss_type=loss_type,
              label_smoothing=label_smoothing)
    return MethodOutput(out.loss - alpha * policy.mean[:, 2], out.rewards)


def tpo_summed_nll(policy, *, beta=0.01, alpha=1.0, length_normalize=False, gamma=0.5, loss_type="sigmoid",
                   label_smoothing=0.0):
    """The gold NLL summed over its tokens (a sequence NLL)."""
    out = tpo(policy, beta=beta, alpha=0.0, length_normalize=length_normalize, gamma=gamma, loss_type=loss_type,
              label_smoothing=label_smoothing)
    return MethodOutput(out.loss - alpha * policy.sum[:, 2], out.rewards)


def tpo_l_without_gamma(policy, *, beta=0.01, alpha=1.0, length_normalize=False, gamma=0.5, loss_type="sigmoid",
                        label_smoothing=0.0):
    return tpo(policy, beta=beta, alpha=alpha, length_normalize=length_normalize, gamma=0.0, loss_type=loss_type,
               label_smoothing=label_smoothing)


def tpo_ipo_on_sums(policy, *, beta=0.01, alpha=1.0, length_normalize=False, gamma=0.5, loss_type="sigmoid",
                    label_smoothing=0.0):
    """ipo regressing the summed log-prob gap (chosen and rejected lengths set to 1) instead of the
    length-averaged one."""
    if loss_type == "ipo":
        lengths = policy.length.clone()
        lengths[:, :2] = 1.0
        policy = Logps(sum=policy.sum, length=lengths)
    return tpo(policy, beta=beta, alpha=alpha, length_normalize=length_normalize, gamma=gamma, loss_type=loss_type,
               label_smoothing=label_smoothing)


def fdpo_forward_kl_sign_slip(policy, reference, *, beta=0.1, divergence="reverse_kl", alpha=0.5, max_exponent=80.0):
    """forward KL scored +exp(-Delta) (f'(u) = 1/u instead of -1/u)."""
    if divergence != "forward_kl":
        return fdpo(policy, reference, beta=beta, divergence=divergence, alpha=alpha, max_exponent=max_exponent)
    from preftune.methods.common import log_ratios, neg_log_sigmoid

    scores = beta * torch.exp(-log_ratios(policy, reference))
    return MethodOutput(neg_log_sigmoid(scores[:, 0] - scores[:, 1]), scores)


def fdpo_trl_alpha_unconverted(policy, reference, *, beta=0.1, divergence="reverse_kl", alpha=0.5, max_exponent=80.0):
    """trl's alpha' = 1 - alpha used as the paper's alpha."""
    return fdpo(policy, reference, beta=beta, divergence=divergence, alpha=1 - alpha, max_exponent=max_exponent)


def flex_dpo_temperatures_swapped(policy, reference, *, beta_chosen=0.1, beta_rejected=0.08):
    return flex_dpo(policy, reference, beta_chosen=beta_rejected, beta_rejected=beta_chosen)


def sft_dpo_nll_on_rejected(policy, reference, *, beta=0.1, sft_weight=1.0, nll_normalization="token_mean"):
    out = sft_dpo(policy, reference, beta=beta, sft_weight=0.0)
    nll = -(policy.mean[:, 1] if nll_normalization == "token_mean" else policy.sum[:, 1])
    return MethodOutput(out.loss + sft_weight * nll, out.rewards)


def sft_dpo_always_summed(policy, reference, *, beta=0.1, sft_weight=1.0, nll_normalization="token_mean"):
    return sft_dpo(policy, reference, beta=beta, sft_weight=sft_weight, nll_normalization="sum")


def modpo_margin_added(policy, reference, *, margin_scores, beta=0.1, objective_weight=0.5, margin_weights=None,
                       loss_type="sigmoid"):
    """+ w_-k (r_-k(y_w) - r_-k(y_l)) instead of minus."""
    return modpo(policy, reference, margin_scores=margin_scores.flip(1), beta=beta, objective_weight=objective_weight,
                 margin_weights=margin_weights, loss_type=loss_type)


def modpo_without_one_over_w_k(policy, reference, *, margin_scores, beta=0.1, objective_weight=0.5,
                               margin_weights=None, loss_type="sigmoid"):
    """z without the 1/w_k factor (w_k only sets the default margin weight)."""
    weights = [1 - objective_weight] if margin_weights is None else margin_weights
    return modpo(policy, reference, margin_scores=margin_scores, beta=beta, objective_weight=1.0,
                 margin_weights=weights, loss_type=loss_type)


MUTANTS = [
    # (method, broken function, a property that must fail)
    ("asft", asft_rejected_term_sign_flipped, "pair optimum"),
    ("asft", asft_rejected_term_sign_flipped, "decoupling"),
    ("asft", asft_on_sequence_sums, "pair optimum"),
    ("ld_dpo", ld_dpo_policy_only, "alpha = 0.5"),
    ("ld_dpo", ld_dpo_longest_public_length, "alpha = 0:"),
    ("ld_dpo", ld_dpo_not_desensitised, "alpha = 0.5"),
    ("tgdpo", tgdpo_same_sign_on_rejected, "clip_weight_min = None"),
    ("tgdpo", tgdpo_ignores_clip, "clip_weight_min = 0.9"),
    ("tgdpo", tgdpo_reward_unscaled, "clip_weight_min = None"),
    ("madpo", madpo_weight_everywhere, "m > tau"),
    ("madpo", madpo_schedule_reversed, "m = 1.5"),
    ("beta_dpo", beta_dpo_ignores_alpha, "frozen M0"),
    ("beta_dpo", beta_dpo_statistics_after_the_loss, "one EMA update"),
    ("beta_dpo", beta_dpo_scaled_margins, "frozen M0"),
    ("tpo", tpo_per_example_nll, "batch token mean"),
    ("tpo", tpo_ipo_on_sums, "ipo"),
    ("tpo", tpo_summed_nll, "TPO, gold"),
    ("tpo", tpo_l_without_gamma, "TPO-L, gold"),
    ("fdpo", fdpo_forward_kl_sign_slip, "forward_kl"),
    ("fdpo", fdpo_trl_alpha_unconverted, "alpha:"),
    ("flex_dpo", flex_dpo_temperatures_swapped, "(beta-/beta+)"),
    ("flex_dpo", flex_dpo_temperatures_swapped, "pair optimum"),
    ("sft_dpo", sft_dpo_nll_on_rejected, "token_mean"),
    ("sft_dpo", sft_dpo_always_summed, "token_mean"),
    ("modpo", modpo_margin_added, "one margin model"),
    ("modpo", modpo_without_one_over_w_k, "hinge"),
]


test_check_fails_on_a_broken_copy_of_the_loss = mutation_test(MUTANTS)


@pytest.mark.parametrize("method", METHODS)
def test_check_passes_on_the_registered_function(method):
    # The control: the same checks, pointed at the real function, pass.
    results = get(method).check(fn=get(method).fn)
    assert results and all(r.passed for r in results), [r for r in results if not r.passed]
