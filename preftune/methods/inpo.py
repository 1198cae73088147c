"""INPO: Iterative Nash Policy Optimization (Zhang et al., ICLR 2025, arXiv 2407.00617)."""
from __future__ import annotations

from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


@register(
    name="inpo", seed="inpo", family="online-nash", input_kind="pairwise", needs_reference=True,
    extras=("previous",), status="stable",
    paper="Zhang et al. 2025, Iterative Nash Policy Optimization: Aligning LLMs with General Preferences via "
          "No-Regret Learning, arXiv 2407.00617",
    taxonomy=taxonomy(["online", "self-play", "binary-labels", "tournament-pairs"], ["online", "game-theoretic",
                      "no-regret"], ["reverse-kl", "previous-iterate-proximal", "squared-loss"], []),
)
def inpo(policy: Logps, reference: Logps, *, previous: Logps, eta: float = 0.005,
         tau_ratio: float = 1 / 3) -> MethodOutput:
    """Online mirror descent on the KL-regularised preference game, as a squared loss (online.md §3).

    h = log pi(y_w)/pi(y_l) - (tau/eta) log pi_ref(y_w)/pi_ref(y_l) - (1 - tau/eta) log pi_t(y_w)/pi_t(y_l),
    L = (h - 1/(2 eta))^2.
    With y_w, y_l drawn from pi_t itself and a binary winner from the oracle, the population
    minimiser is the OMD (Hedge) update pi_{t+1} ~ pi_t^(1 - tau/eta) pi_ref^(tau/eta) exp(P(. > pi_t)/eta),
    whose last iterate converges to the regularised equilibrium pi*_tau.

    previous:  log-probs of the pair under pi_t, the policy that generated the data (a frozen snapshot).
    eta:       0.005 (grid {0.1, 0.01, 0.0075, 0.005, 0.002}); the target margin is 1/(2 eta) = 100.
    tau_ratio: tau/eta = 1/3 (the paper sets tau = eta/3; 0 is the "w/o KL" ablation).
    Step-size convention (online.md §0): eta is the inverse OMD step; internal step s = 1/eta and
    KL-to-reference beta = tau = tau_ratio * eta.
    rewards:   the win-rate gap the policy implies, eta (log pi - (tau/eta) log pi_ref - (1 - tau/eta) log pi_t).
    """
    implied = policy.sum - tau_ratio * reference.sum - (1 - tau_ratio) * previous.sum
    h = implied[:, 0] - implied[:, 1]
    rewards = eta * implied
    return MethodOutput((h - 1 / (2 * eta)) ** 2, rewards, pairwise_metrics(rewards[:, 0], rewards[:, 1]))


def omd_iteration(loss, preferences, log_ref):
    """pi_t -> pi_{t+1}: draw pairs from pi_t, label them by a Bernoulli draw from P, and minimise the
    exact expected loss of INPO/MNPO-style losses that take pi_t as `previous` (online.md §3 steps 1-3)."""
    from preftune.tabular.online import labelled_pairs, minimise_round

    def step(log_pi_t, _t=0):
        data = labelled_pairs(preferences, log_pi_t.exp()).seeing(previous=log_pi_t)
        return minimise_round(loss, data, log_ref, log_pi_t)

    return step


@tabular_check("inpo")
def inpo_tabular_check(fn=inpo):
    """online.md §3 and §16, with the registered loss fitting every iterate on the §16 matrix,
    pi_ref = (.6, .3, .1): (i) the minimiser equals the OMD closed form at pi_ref and at a
    non-uniform pi_t (step 1/eta = 1, tau/eta = 1/3); (ii) the loss-driven last iterate converges
    linearly to pi*_beta (beta = tau = 0.1): KL(pi*_beta || pi_50) ~ 1e-5 at step 1 and ~2e-10 at step 2."""
    from preftune.methods.registry import CheckResult
    from preftune.tabular import method_loss, regularised_equilibrium
    from preftune.tabular.checks import compare_vectors
    from preftune.tabular.games import kl_divergence
    from preftune.tabular.online import SECTION16, SECTION16_REF, log_policy, loss_driven_path, mirror_descent_update

    game, log_ref = SECTION16, log_policy(SECTION16_REF)
    results = []
    for name, log_pi_t in (("pi_ref", log_ref), ("(.2, .5, .3)", log_policy([0.2, 0.5, 0.3]))):
        step = omd_iteration(method_loss("inpo", fn, eta=1.0, tau_ratio=1 / 3), game, log_ref)
        expected = mirror_descent_update(game, log_pi_t, log_ref, step=1.0, beta=1 / 3)
        results.append(compare_vectors("inpo", f"loss minimiser = OMD update, 1/eta = 1, tau/eta = 1/3, pi_t = {name}",
                                       expected.exp(), step(log_pi_t).exp(), 1e-9,
                                       labels=[f"pi(y{k})" for k in range(3)]))
    beta = 0.1
    target = regularised_equilibrium(game, SECTION16_REF, beta)
    for step_size, paper_kl, tolerance in ((1.0, 1e-5, 1e-6), (2.0, 2e-10, 3e-11)):
        eta = 1 / step_size
        loss = method_loss("inpo", fn, eta=eta, tau_ratio=beta / eta)
        path = loss_driven_path(omd_iteration(loss, game, log_ref), log_ref, 50)
        results.append(CheckResult("inpo", f"loss-driven last iterate: KL(pi*_beta || pi_50) ~ {paper_kl:g}, step "
                                           f"{step_size:g}, beta = 0.1 (online.md §16)", paper_kl,
                                   kl_divergence(target, path[-1].exp()), tolerance))
    return results
