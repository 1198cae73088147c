"""MNPO: Multiplayer Nash Preference Optimization (Wu, Huang et al. 2025, arXiv 2509.23102), TD-MNPO loss."""
from __future__ import annotations

from typing import Sequence

from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


@register(
    name="mnpo", seed="mnpo", family="online-nash", input_kind="pairwise", needs_reference=True,
    extras=("history",), status="stable",
    paper="Wu, Huang et al. 2025, Multiplayer Nash Preference Optimization, arXiv 2509.23102",
    taxonomy=taxonomy(["online", "self-play", "binary-labels", "policy-history"],
                      ["online", "game-theoretic", "multiplayer"],
                      ["reverse-kl", "history-mixture-proximal", "squared-loss"], []),
)
def mnpo(policy: Logps, reference: Logps, *, history: Sequence[Logps], eta: float = 0.0075, ratio: float = 1 / 3,
         history_weights: Sequence[float] = (1.0, 0.0)) -> MethodOutput:
    """INPO's squared loss against a weighted mixture of past policies (online.md §6, TD-MNPO).

    z = log pi(y_w)/pi(y_l) - rho log pi_ref(y_w)/pi_ref(y_l) - (1 - rho) sum_j lambda_j log pi_{t-j}(y_w)/pi_{t-j}(y_l),
    L = (z - 1/(2 eta))^2,  lambda = history_weights / their sum (uniform if all are 0).
    The population update is log pi_{t+1} = rho log pi_ref + (1 - rho) sum_j lambda_j log pi_{t-j}
    + P(. > pi_t)/eta + c, with fixed point pi*_beta, beta = rho eta; with one history player it is INPO.

    history:         one Logps per past policy, history[0] = pi_t (the policy that generated this
                     iteration's data), history[1] = pi_{t-1}, ...; as many as history_weights.
    eta:             0.0075 (grid as INPO's); the target margin is 1/(2 eta).
    ratio:           rho = 1/3, INPO's tau/eta.
    history_weights: (1.0, 0.0), the official config's (t-1, t-2) weights; the paper grid-searches
                     {0, 0.1, 0.333, 0.5, 0.667, 0.9}.
    Step-size convention (online.md §0): eta is the inverse step, s = 1/eta; KL-to-reference beta = rho eta.
    rewards:         eta times the log-ratio to the mixture, the win-rate gap the policy implies.
    """
    if len(history) != len(history_weights):
        raise ValueError(f"mnpo: {len(history)} history policies for {len(history_weights)} history weights")
    total = float(sum(history_weights))
    weights = [w / total for w in history_weights] if total > 0 else [1 / len(history)] * len(history)
    mixture = sum(w * past.sum for w, past in zip(weights, history))
    implied = policy.sum - ratio * reference.sum - (1 - ratio) * mixture
    z = implied[:, 0] - implied[:, 1]
    rewards = eta * implied
    return MethodOutput((z - 1 / (2 * eta)) ** 2, rewards, pairwise_metrics(rewards[:, 0], rewards[:, 1]))


@tabular_check("mnpo")
def mnpo_tabular_check(fn=mnpo):
    """online.md §6 Test on the §16 matrix, pi_ref = (.6, .3, .1), step 1/eta = 1, rho = 0.1 (beta = 0.1),
    pairs from pi_t with Bernoulli winners and the registered loss fitting every iterate: (i) the
    minimiser equals the closed-form update with lambda = (.7, .3) and distinct pi_t, pi_{t-1};
    (ii) the loss-driven last iterate converges to pi*_beta: KL ~ 1e-5 at t = 50 with lambda = (1, 0)
    (INPO's rate) and ~2.6e-4 with lambda = (.5, .5), slower but converging (pi_{-1} = pi_0)."""
    from preftune.methods.registry import CheckResult
    from preftune.tabular import method_loss, regularised_equilibrium
    from preftune.tabular.checks import compare_vectors
    from preftune.tabular.games import kl_divergence
    from preftune.tabular.online import (SECTION16, SECTION16_REF, labelled_pairs, log_policy, minimise_round,
                                         mnpo_update)

    game, log_ref, rho = SECTION16, log_policy(SECTION16_REF), 0.1

    def fit(loss, history):
        data = labelled_pairs(game, history[0].exp()).seeing(history=list(history))
        return minimise_round(loss, data, log_ref, history[0])

    history = [log_policy([0.2, 0.5, 0.3]), log_policy([0.5, 0.25, 0.25])]
    loss = method_loss("mnpo", fn, eta=1.0, ratio=rho, history_weights=(0.7, 0.3))
    results = [compare_vectors("mnpo", "loss minimiser = closed-form update, lambda = (.7, .3), rho = 0.1, 1/eta = 1",
                               mnpo_update(game, history, (0.7, 0.3), log_ref, rho, 1.0).exp(),
                               fit(loss, history).exp(), 1e-9, labels=[f"pi(y{k})" for k in range(3)])]
    target = regularised_equilibrium(game, SECTION16_REF, rho)
    for weights, paper_kl, tolerance in (((1.0, 0.0), 1e-5, 1e-6), ((0.5, 0.5), 2.6e-4, 1e-5)):
        loss = method_loss("mnpo", fn, eta=1.0, ratio=rho, history_weights=weights)
        history = [log_ref, log_ref]
        for _ in range(50):
            history = [fit(loss, history), history[0]]
        results.append(CheckResult("mnpo", f"loss-driven last iterate: KL(pi*_beta || pi_50) ~ {paper_kl:g}, "
                                           f"lambda = {weights} (online.md §6)", paper_kl,
                                   kl_divergence(target, history[0].exp()), tolerance))
    return results
