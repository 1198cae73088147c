"""ORPO: monolithic preference optimisation without a reference model (Hong, Lee, Thorne, EMNLP 2024, arXiv 2403.07691)."""
from __future__ import annotations

from preftune.methods.common import log_odds, neg_log_sigmoid, response_nll
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


@register(
    name="orpo", seed=None, family="offline-pairwise", input_kind="pairwise", needs_reference=False,
    status="stable", paper="Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference "
                           "Model, arXiv 2403.07691",
    taxonomy=taxonomy(["pairwise"], ["offline", "single-stage"], ["reference-free", "odds-ratio"],
                      ["likelihood"]),
)
def orpo(policy: Logps, *, beta: float = 0.1) -> MethodOutput:
    """NLL of the chosen response plus an odds-ratio term: L = NLL(y_w) + lambda * l(o(y_w) - o(y_l)).

    o(y) = log p/(1-p) with p = exp(mean token log-prob) (Eq. 4-6 of the paper). beta is the
    paper's lambda (0.1 in trl and the paper's main runs). Rewards logged: beta * mean log-prob.
    """
    odds_margin = log_odds(policy.chosen_mean) - log_odds(policy.rejected_mean)
    loss = response_nll(policy, 0) + beta * neg_log_sigmoid(odds_margin)
    rewards = beta * policy.mean
    metrics = pairwise_metrics(rewards[:, 0], rewards[:, 1])
    metrics["log_odds_ratio"] = odds_margin
    return MethodOutput(loss, rewards, metrics)


@tabular_check("orpo")
def orpo_tabular_check(fn=orpo):
    """On a two-response bandit whose pair is labelled 0 > 1 with probability p, the expected ORPO
    loss has a unique interior optimum; closed_forms.orpo_optimal_pair_policy finds it as the root
    of the derivative written from the paper's Eq. 4-6 alone (lengths 3 and 7, so the per-token
    means of the NLL and of the odds matter). With lambda = 0 it is the SFT optimum pi_k ~ p_k/|y_k|."""
    from preftune.tabular.checks import PAIR_LENGTHS, PAIR_P, compare, method_loss, pair_optimum
    from preftune.tabular.closed_forms import orpo_optimal_pair_policy

    odds_weight = 0.1
    bandit, optimum = pair_optimum(method_loss("orpo", fn, beta=odds_weight))
    return [compare("orpo", f"pair optimum pi(y_0), lambda = {odds_weight}, p = {PAIR_P}, |y| = {PAIR_LENGTHS}",
                    orpo_optimal_pair_policy(PAIR_P, PAIR_LENGTHS, odds_weight), float(optimum.probs[0, 0]), 1e-10)]
