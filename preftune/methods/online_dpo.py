"""Online DPO / OAIF: Direct Language Model Alignment from Online AI Feedback (Guo et al. 2024, arXiv 2402.04792)."""
from __future__ import annotations

from preftune.methods.dpo import dpo
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput


@register(
    name="online_dpo", seed=None, family="online-iterative", input_kind="pairwise", needs_reference=True,
    status="stable",
    paper="Guo et al. 2024, Direct Language Model Alignment from Online AI Feedback, arXiv 2402.04792",
    taxonomy=taxonomy(["online", "on-policy-pairs", "ai-feedback"], ["online"], ["fixed-reference", "reverse-kl"],
                      []),
)
def online_dpo(policy: Logps, reference: Logps, *, beta: float = 0.1) -> MethodOutput:
    """DPO on fresh pairs from the current policy, against the fixed SFT reference (online.md §15).

    L = -log sigmoid(beta [log pi(y_w)/pi_ref(y_w) - log pi(y_l)/pi_ref(y_l)]) with y_w, y_l two samples
    of the current policy labelled by the judge; one gradient step per fresh batch, the reference
    never refreshed (that is iterative DPO / DNO-Prct / APO with alpha = 0). Under Bradley-Terry
    labels it converges to pi_ref exp(r/beta)/Z; under an intransitive preference it has no reason
    to reach the Nash equilibrium, which is what the Nash methods (dno, sppo, inpo, egpo, nash_mp,
    mnpo) are for.

    beta: 0.1 (OAIF; TRL OnlineDPOTrainer's default too). Step-size convention (online.md §0): the
          KL-to-reference strength of the implied target pi_ref exp(r/beta).
    """
    return dpo(policy, reference, beta=beta)


@tabular_check("online_dpo")
def online_dpo_tabular_check(fn=online_dpo):
    """online.md §15 Test, with the registered loss: (i) on a Bradley-Terry bandit (rewards
    (1, .4, -.3, -1.1), pi_ref = (.4, .3, .2, .1), beta = 1) 200 on-policy steps (pairs from the current
    policy, one full-batch gradient step each) reach pi_ref exp(r/beta)/Z; (ii) on the intransitive
    §16 matrix (beta = 0.1) online DPO rounds, each fitting pairs of the current policy to the
    optimum, never approach pi*_beta: the regularised exploitability stays >= 0.03 over rounds
    6-12 (it cycles among near-vertices), where pi*_beta has 0."""
    from preftune.methods.registry import CheckResult
    from preftune.tabular import PreferenceModel, dpo_optimal_policy, exploitability, method_loss
    from preftune.tabular.checks import DEFAULT_REF, DEFAULT_REWARDS, compare_vectors
    from preftune.tabular.online import (SECTION16, SECTION16_REF, gradient_step, labelled_pairs, log_policy,
                                         minimise_round)

    bt, log_ref = PreferenceModel.bradley_terry(DEFAULT_REWARDS), log_policy(DEFAULT_REF)
    loss = method_loss("online_dpo", fn, beta=1.0)
    log_pi = log_ref
    for _ in range(200):
        log_pi = gradient_step(loss, labelled_pairs(bt, log_pi.exp()), log_ref, log_pi, lr=5.0)
    results = [compare_vectors("online_dpo", "200 on-policy gradient steps reach pi_ref exp(r/beta)/Z, beta = 1",
                               dpo_optimal_policy(DEFAULT_REF, DEFAULT_REWARDS, 1.0), log_pi.exp(), 1e-7,
                               labels=[f"pi(y{k})" for k in range(4)])]

    game, log_ref, beta = SECTION16, log_policy(SECTION16_REF), 0.1
    loss = method_loss("online_dpo", fn, beta=beta)
    log_pi, gaps = log_ref, []
    for _ in range(12):
        log_pi = minimise_round(loss, labelled_pairs(game, log_pi.exp()), log_ref, log_pi)
        gaps.append(exploitability(game, log_pi.exp(), beta, log_ref.exp()))
    lowest = min(gaps[5:])
    results.append(CheckResult("online_dpo", "intransitive §16: regularised exploitability of rounds 6-12 stays "
                                             ">= 0.03 (pi*_beta: 0)", 0.03, lowest, 0.0, bound=">="))
    return results
