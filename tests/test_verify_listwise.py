"""Mutation tests for the checks of curry_dpo, adpo, adpo_listwise, brain and dpo_token_credit: each
check, pointed at a deliberately broken copy of its loss, must fail on the property named.

The broken copies are thin wrappers around the real functions, so each is exactly the bug it is
named after (a plausible slip when writing the loss from the paper).
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mutation import mutation_test
from preftune.methods import get
from preftune.methods.adpo import adpo, adpo_listwise
from preftune.methods.brain import brain
from preftune.methods.curry_dpo import curry_dpo
from preftune.methods.r2q import dpo_token_credit
from preftune.records import Logps, MethodOutput


def flat(logps: Logps) -> Logps:
    return replace(logps, sum=torch.zeros_like(logps.sum),
                   tokens=None if logps.tokens is None else torch.zeros_like(logps.tokens))


# -- curry_dpo -----------------------------------------------------------------------------------

def curry_dpo_reference_free(policy, reference, *, beta=0.1):
    """The reference dropped: beta (lp_w - lp_l) instead of beta (Delta_w - Delta_l)."""
    return curry_dpo(policy, flat(reference), beta=beta)


def curry_dpo_pair_reversed(policy, reference, *, beta=0.1):
    """Pairs fed rejected-first (the ranking read upside down)."""
    return curry_dpo(policy.responses([1, 0]), reference.responses([1, 0]), beta=beta)


# -- adpo ----------------------------------------------------------------------------------------

def adpo_label_on_wrong_side(policy, reference, *, tau=10.0, q=1.0, length_normalize=False):
    """q l(-u) + (1 - q) l(u): the soft label's weights exchanged."""
    return adpo(policy, reference, tau=tau, q=1 - q, length_normalize=length_normalize)


def adpo_tau_multiplies(policy, reference, *, tau=10.0, q=1.0, length_normalize=False):
    """u = (s - a) * tau instead of (s - a) / tau."""
    return adpo(policy, reference, tau=1 / tau, q=q, length_normalize=length_normalize)


def adpo_ignores_length_normalize(policy, reference, *, tau=10.0, q=1.0, length_normalize=False):
    return adpo(policy, reference, tau=tau, q=q, length_normalize=False)


# -- adpo_listwise -------------------------------------------------------------------------------

def adpo_listwise_reward_temperature_ignored(policy, reference, *, scores, reward_temperature=1.0, **params):
    return adpo_listwise(policy, reference, scores=scores, reward_temperature=1.0, **params)


def adpo_listwise_ranks_worst_first(policy, reference, *, scores, **params):
    """ListMLE over the items sorted ascending: the ranking read upside down."""
    return adpo_listwise(policy, reference, scores=-scores, **params)


def adpo_listwise_kde_unsmoothed(policy, reference, *, scores, target="softmax", **params):
    """The KDE target without its kernel smoothing (plain standardised softmax)."""
    if target == "kde":
        return adpo_listwise(policy, reference, scores=scores, target="softmax", standardize=True,
                             **{k: v for k, v in params.items() if k != "standardize"})
    return adpo_listwise(policy, reference, scores=scores, target=target, **params)


def adpo_listwise_anchor_dropped(policy, reference, *, scores, **params):
    return adpo_listwise(policy, flat(reference), scores=scores, **params)


# -- brain ---------------------------------------------------------------------------------------

def brain_target_without_proposal_correction(policy, reference, *, scores, proposal_logps, beta_post=1.0,
                                             posterior="softmax", beta=1.0):
    """alpha = softmax(log p_SFT + r/beta_post), forgetting the -log q' importance correction: the
    target is only right when q' is uniform."""
    proposal = proposal_logps.sum if isinstance(proposal_logps, Logps) else proposal_logps
    shifted = Logps(sum=reference.sum + proposal, length=reference.length)
    return brain(policy, shifted, scores=scores, proposal_logps=proposal_logps, beta_post=beta_post,
                 posterior=posterior, beta=beta)


def brain_policy_weights_without_proposal(policy, reference, *, scores, proposal_logps, beta_post=1.0,
                                          posterior="softmax", beta=1.0):
    """b = softmax(log pi) instead of softmax(log pi - log q') (alpha still importance-corrected)."""
    proposal = proposal_logps.sum if isinstance(proposal_logps, Logps) else proposal_logps
    shifted = Logps(sum=policy.sum + proposal, length=policy.length)
    return brain(shifted, reference, scores=scores, proposal_logps=proposal_logps, beta_post=beta_post,
                 posterior=posterior, beta=beta)


def brain_tempered_proposal(policy, reference, *, scores, proposal_logps, beta_post=1.0, posterior="softmax",
                            beta=1.0):
    """b = softmax(beta (log pi - log q')): the proposal tempered with the policy, so that the optimum
    moves with q' when beta != 1 (the form before issue 12)."""
    out = brain(policy, reference, scores=scores, proposal_logps=proposal_logps, beta_post=beta_post,
                posterior=posterior, beta=beta)
    if posterior != "softmax":
        return out
    proposal = (proposal_logps.sum if isinstance(proposal_logps, Logps) else proposal_logps).to(policy.sum.dtype)
    alpha = torch.softmax(reference.sum + scores.to(policy.sum.dtype) / beta_post - proposal, -1)
    log_b = torch.log_softmax(beta * (policy.sum - proposal), -1)
    return MethodOutput(-(alpha * log_b).sum(-1), out.rewards, out.metrics)


def brain_temperature_multiplies(policy, reference, *, scores, proposal_logps, beta_post=1.0, posterior="softmax",
                                 beta=1.0):
    """r * beta_post instead of r / beta_post."""
    return brain(policy, reference, scores=scores, proposal_logps=proposal_logps, beta_post=1 / beta_post,
                 posterior=posterior, beta=beta)


# -- dpo_token_credit ----------------------------------------------------------------------------

def token_credit_without_reference(policy, reference, *, beta=0.1):
    """c_t = beta log pi(y_t|s_t): the per-token reference log-probs forgotten."""
    return dpo_token_credit(policy, flat(reference), beta=beta)


def token_credit_averaged(policy, reference, *, beta=0.1):
    """Credits averaged over the response's tokens instead of summed (a length-normalised margin)."""
    scale = policy.length.unsqueeze(-1)
    return dpo_token_credit(replace(policy, tokens=policy.tokens / scale), replace(reference, tokens=reference.tokens / scale),
                            beta=beta)


MUTANTS = [
    ("curry_dpo", curry_dpo_reference_free, "pairs identify r"),
    ("curry_dpo", curry_dpo_pair_reversed, "stage optimum"),
    ("adpo", adpo_label_on_wrong_side, "q = 0.8, p = 1, summed"),
    ("adpo", adpo_tau_multiplies, "BT optimum"),
    ("adpo", adpo_ignores_length_normalize, "per-token"),
    ("adpo_listwise", adpo_listwise_reward_temperature_ignored, "softmax target"),
    ("adpo_listwise", adpo_listwise_ranks_worst_first, "Plackett-Luce"),
    ("adpo_listwise", adpo_listwise_kde_unsmoothed, "kde target"),
    ("adpo_listwise", adpo_listwise_anchor_dropped, "softmax target"),
    ("brain", brain_target_without_proposal_correction, "non-uniform proposal"),
    ("brain", brain_policy_weights_without_proposal, "non-uniform proposal"),
    ("brain", brain_temperature_multiplies, "uniform proposal"),
    ("brain", brain_tempered_proposal, "beta = 0.5, non-uniform proposal"),
    ("dpo_token_credit", token_credit_without_reference, "pi_ref exp(r/beta)"),
    ("dpo_token_credit", token_credit_averaged, "Q*(s,a) - V*(s)"),
]


test_check_fails_on_a_broken_copy_of_the_loss = mutation_test(MUTANTS)


@pytest.mark.parametrize("method", ["curry_dpo", "adpo", "adpo_listwise", "brain", "dpo_token_credit"])
def test_the_real_loss_passes_its_check(method):
    results = get(method).check()
    assert results and all(r.passed for r in results), [r for r in results if not r.passed]
