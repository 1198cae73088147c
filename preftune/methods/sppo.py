"""SPPO: Self-Play Preference Optimization (Wu et al. 2024, arXiv 2405.00675)."""
from __future__ import annotations

from preftune.methods.common import log_ratios
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


@register(
    name="sppo", seed="sppo", family="online-nash", input_kind="pairwise", needs_reference=True,
    extras=("win_rate",), status="stable",
    paper="Wu et al. 2024, Self-Play Preference Optimization for Language Model Alignment, arXiv 2405.00675",
    taxonomy=taxonomy(["online", "self-play", "win-rate-targets"], ["online", "game-theoretic"],
                      ["previous-iterate-reference", "squared-loss"], []),
)
def sppo(policy: Logps, reference: Logps, *, win_rate, eta: float = 1000.0) -> MethodOutput:
    """Regress each response's log-ratio to pi_t onto eta (P(y > pi_t) - 1/2) (online.md §2).

    L = 1/2 sum_k (log pi(y_k)/pi_t(y_k) - eta (P^(y_k > pi_t) - 1/2))^2, over the responses of the
    row (the paper's y_w = best and y_l = worst of K = 5 samples), the "- 1/2" standing for
    log Z_t ~ eta/2. Its population minimiser approximates the multiplicative-weights update
    pi_{t+1} ~ pi_t exp(eta P(. > pi_t)), whose average iterate converges to the Nash equilibrium.

    reference: pi_t, the policy at the start of the iteration (the online loop refreshes it).
    win_rate:  (B, K) P^(y_k > pi_t), the mean of the judge's P(y_k > y_j) over the K samples of
               the prompt, j = k included (+1/2K, as the official code does).
    eta:       1000 (official scripts: beta = 1/eta = 0.001). Step-size convention (online.md §0):
               eta multiplies the win-rate, a larger eta is a bigger step; internal step s = eta.
    rewards:   the win-rate each response's log-ratio implies, 1/2 + log(pi/pi_t)/eta.
    """
    ratios = log_ratios(policy, reference)
    loss = 0.5 * ((ratios - eta * (win_rate - 0.5)) ** 2).sum(-1)
    rewards = 0.5 + ratios / eta
    return MethodOutput(loss, rewards, pairwise_metrics(rewards[:, 0], rewards[:, 1]))


@tabular_check("sppo")
def sppo_tabular_check(fn=sppo):
    """online.md §2 Test and §16. (i) The population minimiser of the registered loss,
    E_{y~pi_t}(log pi/pi_t - eta(P(y > pi_t) - 1/2))^2, is within 1e-3 of the multiplicative-weights
    target pi_t exp(eta P(. > pi_t))/Z (eta = 1; the eta/2 normaliser is approximate, so not equal),
    at pi_ref and at iterates 100, 200, 300 of the MW path; (ii) on the §16 matrix the exact MW
    iterates (eta = 1, 300 iterations) keep cycling (last-iterate exploitability >= 0.1) while
    their average reaches exploitability <= 0.011."""
    from preftune.methods.registry import CheckResult
    from preftune.tabular import exploitability, method_loss
    from preftune.tabular.checks import compare_vectors
    from preftune.tabular.online import (SECTION16, SECTION16_REF, average_policy, iterate, log_policy,
                                         minimise_round, mw_update, sampled_pairs)

    eta, game = 1.0, SECTION16
    loss = method_loss("sppo", fn, eta=eta)
    path = iterate(lambda log_pi: mw_update(game, log_pi, eta), log_policy(SECTION16_REF), 300)
    results = []
    for t in (0, 100, 200, 300):
        pi_t = path[t].exp()
        data = sampled_pairs(pi_t).with_win_rates(game.win_rate(pi_t))
        fitted = minimise_round(loss, data, path[t], path[t]).exp()
        results.append(compare_vectors("sppo", f"loss minimiser ~ MW target pi_t exp(eta P(. > pi_t))/Z, eta = 1, "
                                               f"pi_t = MW iterate {t}", mw_update(game, path[t], eta).exp(),
                                       fitted, 1e-3, labels=[f"pi(y{k})" for k in range(3)]))
    last, average = exploitability(game, path[-1].exp()), exploitability(game, average_policy(path))
    return results + [
        CheckResult("sppo", "MW last iterate cycles: exploitability after 300 iterations >= 0.1", 0.1, last, 0.0,
                    bound=">="),
        CheckResult("sppo", "MW average iterate: exploitability after 300 iterations <= 0.011", 0.0, average, 0.011),
    ]
