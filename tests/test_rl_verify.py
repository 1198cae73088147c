"""The RL losses' exact checks pass in `preftune verify`, and fail on deliberately broken copies.

Each mutant is a thin wrapper around the real function (or a copy with one line changed) that is
exactly the bug it is named after; the check must catch it, which shows it exercises the loss.
"""
import io
import json

import pytest
import torch
from mutation import mutation_test

from preftune.records import Logps
from preftune.rl.methods.dapo_step import dapo_step
from preftune.rl.methods.grpo import grpo
from preftune.rl.methods.mcts_dpo import mcts_dpo
from preftune.rl.methods.mo_grpo import mo_grpo
from preftune.rl.methods.oreo import oreo
from preftune.rl.methods.pdppo import pdppo
from preftune.rl.methods.ppo import ppo
from preftune.rl.methods.rto import rto
from preftune.tabular.expected import single_threaded
from preftune.tabular.verify import run_verify

@pytest.fixture(autouse=True)
def _one_thread():
    """The checks' tensors are tiny: one thread, as `preftune verify` runs them, is many times faster."""
    with single_threaded():
        yield


RL = ["dapo_step", "entropy_bonus", "grpo", "mcts_dpo", "mo_grpo", "oreo", "pdppo", "ppo", "rto"]
CATALOGUE = {"dapo_step": "dapo-step", "mcts_dpo": "mcts-dpo", "mo_grpo": "mo-grpo", "oreo": "oreo", "pdppo": "pdppo",
             "rto": "rto"}


def test_every_rl_method_passes_verify():
    out = io.StringIO()
    assert run_verify(RL, as_json=True, stream=out) == 0
    report = {m["name"]: m for m in json.loads(out.getvalue())["methods"]}
    assert all(report[name]["status"] == "passed" and report[name]["checks"] for name in CATALOGUE)
    assert report["entropy_bonus"]["status"] == "no_check"


def test_the_six_catalogue_rows_are_registered_stable_with_their_seeds():
    from preftune.methods import get

    for name, seed in CATALOGUE.items():
        spec = get(name)
        assert (spec.seed, spec.family, spec.status, spec.input_kind) == (seed, "rl", "stable", "rollout")


# ------------------------------------------------------------------------------------------ mutants

def grpo_on_raw_rewards(policy, reference, *, old, score, group, clip_eps=0.2, kl_coef=0.04, std_eps=1e-4,
                        scale_advantages=True):
    from preftune.rl.methods.common import clipped_surrogate, k3, token_mean
    from preftune.records import MethodOutput

    per_token = clipped_surrogate(policy.tokens, old.tokens, score.reshape(-1, 1, 1), clip_eps)
    loss = token_mean(per_token + kl_coef * k3(policy.tokens, reference.tokens), policy.mask)
    return MethodOutput(loss, score.reshape(-1, 1))


def grpo_sign_flipped(policy, reference, *, old, score, group, **kw):
    return grpo(policy, reference, old=old, score=-score, group=group, **kw)


def mo_grpo_ignores_weights(policy, reference, *, old, aspects, group, weights=None, **kw):
    return mo_grpo(policy, reference, old=old, aspects=aspects, group=group, weights=None, **kw)


def ppo_ignores_lambda(policy, reference, *, old, values, old_values, score, lam=0.95, **kw):
    return ppo(policy, reference, old=old, values=values, old_values=old_values, score=score, lam=1.0, **kw)


def ppo_without_kl_penalty(policy, reference, *, old, values, old_values, score, kl_coef=0.01, **kw):
    return ppo(policy, reference, old=old, values=values, old_values=old_values, score=score, kl_coef=0.0, **kw)


def rto_dpo_reward_sign_flipped(policy, reference, *, old, dpo, **kw):
    flipped = Logps.from_tokens(2 * reference.tokens - dpo.tokens, dpo.mask)
    return rto(policy, reference, old=old, dpo=flipped, **kw)


def rto_dpo_reward_unclipped(policy, reference, *, old, dpo, dpo_reward_clip=0.05, **kw):
    return rto(policy, reference, old=old, dpo=dpo, dpo_reward_clip=None, **kw)


def dapo_advantage_not_scaled_by_beta(policy, reference, *, advantages, beta=0.2, centre="advantage"):
    return dapo_step(policy, reference, advantages=advantages * beta, beta=beta, centre=centre)


def oreo_counts_the_current_action_twice(policy, reference, *, values, outcome, token_kl, step_ids, beta=0.03,
                                         kl_coef=0.01, level="token"):
    # Uses acc_t (which already holds Delta_t) where the policy residual needs acc_{t+1}.
    doubled = Logps.from_tokens(2 * policy.tokens - reference.tokens.detach(), policy.mask)
    return oreo(doubled, reference, values=values, outcome=outcome, token_kl=token_kl, step_ids=step_ids, beta=beta,
                kl_coef=kl_coef, level=level)


def mcts_dpo_on_the_whole_response(policy, reference, *, visits, diverge_at, **kw):
    return mcts_dpo(policy, reference, visits=visits, diverge_at=torch.zeros_like(diverge_at), **kw)


def mcts_dpo_without_label_smoothing(policy, reference, *, visits, diverge_at, conservative=True, **kw):
    return mcts_dpo(policy, reference, visits=visits, diverge_at=diverge_at, conservative=False, **kw)


def pdppo_max_of_the_critics(policy, *, old, returns, values, post_values, old_values, old_post_values, entropy,
                             critic="min", **kw):
    # The larger critic as baseline and value, where the official code takes the smaller.
    high, old_high = torch.maximum(values, post_values), torch.maximum(old_values, old_post_values)
    return pdppo(policy, old=old, returns=returns, values=high, post_values=high, old_values=old_high,
                 old_post_values=old_high, entropy=entropy, critic=critic, **kw)


test_mutants_fail_their_checks = mutation_test([
    ("grpo", grpo_on_raw_rewards, "unchanged by R -> 3R - 2"),
    ("grpo", grpo_sign_flipped, "best arm"),
    ("mo_grpo", mo_grpo_ignores_weights, "w = (1.0, 0.0)"),
    ("ppo", ppo_ignores_lambda, "lam = 0.95"),
    ("ppo", ppo_without_kl_penalty, "lam = 1.0"),
    ("rto", rto_dpo_reward_sign_flipped, "first-token advantage"),
    ("rto", rto_dpo_reward_unclipped, "default clip"),
    ("dapo_step", dapo_advantage_not_scaled_by_beta, "centre 'both'"),
    ("oreo", oreo_counts_the_current_action_twice, "vanish at the soft-optimal"),
    ("mcts_dpo", mcts_dpo_on_the_whole_response, "before diverge_at"),
    ("mcts_dpo", mcts_dpo_without_label_smoothing, "minimiser"),
    ("pdppo", pdppo_max_of_the_critics, "advantage through the loss"),
])
