"""DNO: Direct Nash Optimization (Rosset et al. 2024, arXiv 2404.03715), conceptual and practical (DNO-Prct)."""
from __future__ import annotations

from preftune.methods.common import log_ratios, neg_log_sigmoid
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


@register(
    name="dno", seed="dno", family="online-nash", input_kind="pairwise", needs_reference=True,
    extras=("soft_label",), status="stable",
    paper="Rosset et al. 2024, Direct Nash Optimization: Teaching Language Models to Self-Improve with "
          "General Preferences, arXiv 2404.03715",
    taxonomy=taxonomy(["online", "self-play", "soft-labels", "large-margin-pairs"], ["online", "game-theoretic"],
                      ["previous-iterate-reference"], []),
)
def dno(policy: Logps, reference: Logps, *, soft_label, eta: float = 0.1) -> MethodOutput:
    """Soft-label logistic regression of the internal reward eta log pi/pi_t onto P(y_0 > y_1) (online.md §1).

    L = -[q log sigmoid(h) + (1 - q) log sigmoid(-h)],  h = eta [log pi(y_0)/pi_t(y_0) - log pi(y_1)/pi_t(y_1)].

    Conceptual DNO (Alg. 1): q = sigmoid(r_t(y_0) - r_t(y_1)) with r_t(y) = P(y > pi_t); the exact
    minimiser is the soft policy iteration pi_{t+1} ~ pi_t exp(r_t/eta), whose average iterate
    approaches the Nash equilibrium. DNO-Prct (Alg. 2): q = 1 on large-margin pairs (the online
    loop's `dno_margin` pair builder), i.e. the DPO loss with pi_t as the reference.

    reference:  pi_t, the policy at the start of the iteration (the online loop refreshes it).
    soft_label: (B,) probability that response 0 beats response 1 (1.0 for a hard label).
    eta:        0.1 (DNO-Prct: "beta" in {0.1, 0.05}). Step-size convention (online.md §0): eta
                divides the reward, a larger eta is a smaller step; internal step s = 1/eta.
    rewards:    eta log pi/pi_t, DNO's internal reward r_{pi,t}.
    """
    rewards = eta * log_ratios(policy, reference)
    margin = rewards[:, 0] - rewards[:, 1]
    loss = soft_label * neg_log_sigmoid(margin) + (1 - soft_label) * neg_log_sigmoid(-margin)
    return MethodOutput(loss, rewards, pairwise_metrics(rewards[:, 0], rewards[:, 1]))


@tabular_check("dno")
def dno_tabular_check(fn=dno):
    """online.md §1 Test, with the registered loss. (i) With pairs drawn from pi_t and soft labels
    sigmoid(r_t(y) - r_t(y')), r_t = P(. > pi_t), the exact minimiser is pi_t exp(r_t/eta)/Z: at eta = 1
    for pi_t = pi_ref and iterates 1000 and 2000 of the path below, at eta = 0.5 for pi_ref and the
    uniform policy; (ii) that path, soft policy iteration on the §16 matrix with eta = 1 for 2000
    iterations, has an average iterate of exploitability ~0.002 while the last iterate oscillates (~0.1)."""
    from preftune.methods.registry import CheckResult
    from preftune.tabular import exploitability, method_loss
    from preftune.tabular.checks import compare_vectors
    from preftune.tabular.online import (SECTION16, SECTION16_REF, average_policy, iterate, log_policy,
                                         minimise_round, mw_update, sampled_pairs)

    game = SECTION16
    start = log_policy(SECTION16_REF)
    path = iterate(lambda log_pi: mw_update(game, log_pi, 1.0), start, 2000)
    points = [(1.0, "pi_ref", start), (1.0, "iterate 1000", path[1000]), (1.0, "iterate 2000", path[2000]),
              (0.5, "pi_ref", start), (0.5, "uniform", log_policy([1 / 3] * 3))]
    results = []
    for eta, name, log_pi_t in points:
        pi_t = log_pi_t.exp()
        data = sampled_pairs(pi_t, include_identical=False).with_win_rates(game.win_rate(pi_t))
        fitted = minimise_round(method_loss("dno", fn, eta=eta), data, log_pi_t, log_pi_t).exp()
        results.append(compare_vectors("dno", f"loss minimiser = pi_t exp(r_t/eta)/Z, eta = {eta:g}, pi_t = {name}",
                                       mw_update(game, log_pi_t, 1 / eta).exp(), fitted, 1e-9,
                                       labels=[f"pi(y{k})" for k in range(3)]))
    last, average = exploitability(game, path[-1].exp()), exploitability(game, average_policy(path))
    return results + [
        CheckResult("dno", "average iterate exploitability after 2000 iterations (eta = 1) ~ 0.002",
                    0.002, average, 0.0005),
        CheckResult("dno", "last iterate oscillates: exploitability after 2000 iterations >= 0.05",
                    0.05, last, 0.0, bound=">="),
    ]
