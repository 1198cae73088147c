"""The online methods' tabular checks pass, and fail on deliberately broken copies of their losses.

Each broken copy is a thin wrapper around the real function that is exactly the bug it is named
after; the check that `preftune verify` runs must catch it, which shows the check exercises the
loss and not only the closed forms beside it.
"""
import io
import json

import pytest
import torch
from mutation import mutation_test

from preftune.methods.apo import apo
from preftune.methods.common import neg_log_sigmoid
from preftune.methods.dno import dno
from preftune.methods.dpo import dpo
from preftune.methods.egpo import egpo
from preftune.methods.inpo import inpo
from preftune.methods.mnpo import mnpo
from preftune.methods.nash_mp import nash_mp
from preftune.methods.online_dpo import online_dpo
from preftune.methods.sppo import sppo
from preftune.records import MethodOutput
from preftune.tabular.verify import run_verify

ONLINE = ["apo", "dno", "egpo", "inpo", "mnpo", "nash_mp", "ofs_dpo", "online_dpo", "sppo"]


def test_every_online_method_passes_verify():
    out = io.StringIO()
    assert run_verify(ONLINE, as_json=True, stream=out) == 0
    report = json.loads(out.getvalue())
    assert [m["name"] for m in report["methods"]] == ONLINE
    assert all(m["status"] == "passed" and m["checks"] for m in report["methods"])


def sppo_target_sign_flipped(policy, reference, *, win_rate, eta=1000.0):
    return sppo(policy, reference, win_rate=1 - win_rate, eta=eta)


def dno_label_complemented(policy, reference, *, soft_label, eta=0.1):
    return dno(policy, reference, soft_label=1 - soft_label, eta=eta)


def dno_without_eta(policy, reference, *, soft_label, eta=0.1):
    """The internal reward without its eta: the minimiser becomes pi_t exp(r_t)."""
    return dno(policy, reference, soft_label=soft_label, eta=1.0)


def inpo_reference_and_previous_swapped(policy, reference, *, previous, eta=0.005, tau_ratio=1 / 3):
    return inpo(policy, previous, previous=reference, eta=eta, tau_ratio=tau_ratio)


def inpo_target_halved(policy, reference, *, previous, eta=0.005, tau_ratio=1 / 3):
    """1/(4 eta) instead of 1/(2 eta): the step of the update halves."""
    return inpo(policy, reference, previous=previous, eta=2 * eta, tau_ratio=tau_ratio * 2)


def mnpo_history_reversed(policy, reference, *, history, eta=0.0075, ratio=1 / 3, history_weights=(1.0, 0.0)):
    return mnpo(policy, reference, history=list(reversed(history)), eta=eta, ratio=ratio,
                history_weights=history_weights)


def egpo_target_not_divided_by_beta(policy, reference, *, win_rate, beta=0.1):
    return egpo(policy, reference, win_rate=win_rate * beta * beta, beta=beta)


def egpo_opponent_ignored(policy, reference, *, win_rate, beta=0.1):
    """The online IPO target with the win-rates against pi_t kept at 1/2: a pure KL pull to the reference."""
    return egpo(policy, reference, win_rate=torch.full_like(win_rate, 0.5), beta=beta)


def nash_mp_anchor_sign_flipped(policy, reference, *, previous, win_rate, beta=0.1, eta=1.0):
    return nash_mp(policy, reference, previous=previous, win_rate=win_rate, beta=beta, eta=-eta)


def nash_mp_without_baseline_detach(policy, reference, *, previous, win_rate, beta=0.1, eta=1.0):
    """The advantage left attached: the gradient picks up d A / d theta and is no longer the policy gradient."""
    log_pi = policy.sum
    advantage = win_rate - 0.5 - beta * (log_pi - reference.sum) - (log_pi - previous.sum) / eta
    return MethodOutput(-(advantage * log_pi).mean(-1), advantage)


def apo_pair_swapped(policy, reference, *, beta=0.1):
    return apo(policy.responses([1, 0]), reference.responses([1, 0]), beta=beta)


def online_dpo_pair_swapped(policy, reference, *, beta=0.1):
    return online_dpo(policy.responses([1, 0]), reference.responses([1, 0]), beta=beta)


def ofs_dpo_chasing_backwards(policy, reference, *, slow, beta=0.1, chase_weight=1.0):
    """The regulariser's sign flipped: -log sigmoid(-beta [...]) pulls the fast module back to the slow one."""
    out = dpo(policy, reference, beta=beta)
    fast_over_slow = beta * (policy.sum - slow.sum)
    chase = neg_log_sigmoid(fast_over_slow[:, 1] - fast_over_slow[:, 0])
    return MethodOutput(out.loss + chase_weight * chase, out.rewards)


MUTANTS = [
    ("sppo", sppo_target_sign_flipped, "loss minimiser"),
    ("dno", dno_label_complemented, "loss minimiser"),
    ("dno", dno_without_eta, "eta = 0.5"),
    ("inpo", inpo_reference_and_previous_swapped, "loss minimiser"),
    ("inpo", inpo_target_halved, "loss minimiser"),
    ("mnpo", mnpo_history_reversed, "loss minimiser"),
    ("egpo", egpo_target_not_divided_by_beta, "one gradient step"),
    ("egpo", egpo_opponent_ignored, "extragradient"),
    ("nash_mp", nash_mp_anchor_sign_flipped, "stationary point"),
    ("nash_mp", nash_mp_without_baseline_detach, "stationary point"),
    ("apo", apo_pair_swapped, "loss minimiser"),
    ("online_dpo", online_dpo_pair_swapped, "reach pi_ref"),
    ("ofs_dpo", ofs_dpo_chasing_backwards, "fast module"),
]


test_online_check_fails_on_a_broken_copy_of_the_loss = mutation_test(MUTANTS, solver_may_fail=True)


def test_one_sided_check_results():
    from preftune.methods import CheckResult

    below = CheckResult("m", "rate at most its bound", 0.9, 0.8, 0.0, bound="<=")
    above = CheckResult("m", "rate at most its bound", 0.9, 0.95, 0.0, bound="<=")
    assert below.passed and below.error == 0.0
    assert not above.passed and above.error == pytest.approx(0.05)
    assert CheckResult("m", "keeps cycling", 0.1, 0.18, 0.0, bound=">=").passed
    assert not CheckResult("m", "diverged", 0.1, float("nan"), 0.0, bound=">=").passed
    with pytest.raises(ValueError, match="bound"):
        CheckResult("m", "p", 0.0, 0.0, 0.0, bound="<")
