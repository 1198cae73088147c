"""Exact tabular ground truth for preference objectives (ARCHITECTURE.md, "Ground truth, level 1").

A policy is a softmax over a finite response set, so every expectation is a finite sum and
each method's population optimum can be compared with the closed form of its paper:

- bandit.py       `Bandit`: prompts x K responses, lengths, reference; builds `Logps` records.
- preferences.py  `PreferenceModel`: Bradley-Terry, general / intransitive P, rock-paper-scissors,
                  majority vote and mixtures of annotators, label-flip noise.
- expected.py     `Dataset` of weighted rows, exact `expected_loss`, `optimise_policy` / `minimise`
                  (trust-region Newton with exact Hessians, float64).
- closed_forms.py optima of DPO, IPO, cDPO/SimPO label smoothing and margins, KTO, ORPO; BT MLE fit.
- games.py        Nash equilibrium (LP), KL-regularised equilibrium (Nash-MP), exploitability, duality gap.
- tokens.py       `TokenLM`: a toy per-position LM with exact sequence probabilities and per-token Logps.
- checks.py       helpers for the `@tabular_check` functions beside each method.
- verify.py       `run_verify`, behind `preftune verify`.
"""
from preftune.tabular.bandit import DTYPE, Bandit
from preftune.tabular.closed_forms import (bradley_terry_fit, dpo_optimal_policy, ipo_optimal_margin,
                                           kto_optimal_policy, margin_logistic_optimal_margin,
                                           orpo_optimal_pair_policy, smoothed_logistic_optimal_margin)
from preftune.tabular.expected import (Dataset, Minimum, PolicyOptimum, expected_loss, independent_pair_sampling,
                                       method_loss, minimise, objective_loss, optimise_policy,
                                       optimise_two_response_policy, pairwise_dataset, plackett_luce_dataset,
                                       pointwise_dataset, reference_pair_sampling, single_pair_dataset,
                                       single_threaded, uniform_pair_sampling)
from preftune.tabular.games import (best_response_value, duality_gap, exploitability, kl_divergence,
                                    nash_equilibrium, nash_mp_step, regularised_equilibrium)
from preftune.tabular.preferences import PreferenceModel
from preftune.tabular.tokens import TokenLM, repeat_response_tokens

__all__ = [
    "Bandit", "DTYPE", "Dataset", "Minimum", "PolicyOptimum", "PreferenceModel", "TokenLM",
    "best_response_value", "bradley_terry_fit", "dpo_optimal_policy", "duality_gap", "expected_loss",
    "exploitability", "independent_pair_sampling", "ipo_optimal_margin", "kl_divergence",
    "kto_optimal_policy", "margin_logistic_optimal_margin", "method_loss", "minimise", "nash_equilibrium",
    "nash_mp_step", "objective_loss", "optimise_policy", "optimise_two_response_policy",
    "orpo_optimal_pair_policy", "pairwise_dataset", "plackett_luce_dataset", "pointwise_dataset", "reference_pair_sampling",
    "regularised_equilibrium", "repeat_response_tokens", "single_pair_dataset", "single_threaded",
    "smoothed_logistic_optimal_margin", "uniform_pair_sampling",
]
