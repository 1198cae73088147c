"""EGPO: Extragradient Preference Optimization (Zhou, Fazel, Du, COLM 2025, arXiv 2503.08942)."""
from __future__ import annotations

from preftune.methods.common import log_ratios
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


@register(
    name="egpo", seed="egpo", family="online-nash", input_kind="pairwise", needs_reference=True,
    extras=("win_rate",), status="stable",
    paper="Zhou, Fazel, Du 2025, Extragradient Preference Optimization (EGPO): Beyond Last-Iterate Convergence "
          "for Nash Learning from Human Feedback, arXiv 2503.08942",
    taxonomy=taxonomy(["online", "self-play", "win-rate-targets"], ["online", "game-theoretic", "extragradient"],
                      ["fixed-reference", "reverse-kl", "squared-loss"], []),
)
def egpo(policy: Logps, reference: Logps, *, win_rate, beta: float = 0.1) -> MethodOutput:
    """The online IPO loss (version 1) that EGPO takes two gradients of per extragradient step (online.md §4).

    L = ((log pi(y) - log pi(y')) - (log pi_ref(y) - log pi_ref(y')) - (p_1 - p_2)/beta)^2,
    p_1 = P(y > y''), p_2 = P(y' > y''), y'' a sample of the opponent policy (pi_t for the half
    step, pi_{t+1/2} for the full step; the online loop's extragradient schedule saves and
    restores the weights and optimiser state between the two). With the same untempered policy
    for y, y', y'' the variance-reduced target is (P(y > y') - 1/2)/beta (online IPO v2), i.e.
    win_rate = (P(y > y'), 1/2). One gradient step with learning rate g on softmax logits, pairs
    uniform over |Y| responses, is the mirror step pi ~ pi_t^(1 - eta beta) pi_ref^(eta beta)
    exp(eta P(. > opponent)) with eta = 4 g / (|Y| beta).

    win_rate: (B, 2) the judge's (p_1, p_2) for the row's two responses.
    beta:     0.1 (paper), the KL-to-reference strength. Step-size convention (online.md §0): the
              learning rate sets the step eta = 4 g / (|Y| beta); beta is as Nash-MD's.
    rewards:  beta log pi/pi_ref.
    """
    ratios = log_ratios(policy, reference)
    h = (ratios[:, 0] - ratios[:, 1]) - (win_rate[:, 0] - win_rate[:, 1]) / beta
    rewards = beta * ratios
    return MethodOutput(h ** 2, rewards, pairwise_metrics(rewards[:, 0], rewards[:, 1]))


@tabular_check("egpo")
def egpo_tabular_check(fn=egpo):
    """online.md §4 Test on the §16 matrix, pi_ref = (.6, .3, .1), every step a full-batch gradient step
    of the registered loss on uniform pairs (lr g = eta |Y| beta / 4): (i) one step equals the mirror
    step with eta = 4g/(|Y| beta) exactly; (ii) extragradient (two gradients per iteration) contracts
    KL(pi*_beta || pi_t) by ~0.81 per iteration at step 1 and ~0.63 at step 2 (beta = 0.1), below 1e-10
    by iteration 50 at step 2; (iii) at beta = 0.001 (nearly the unregularised game), step 2, the
    extragradient last iterate approaches the Nash equilibrium within 100 iterations while plain
    online IPO (one gradient per iteration) drifts away from it."""
    from preftune.methods.registry import CheckResult
    from preftune.tabular import method_loss, nash_equilibrium, regularised_equilibrium
    from preftune.tabular.checks import compare_vectors
    from preftune.tabular.online import (SECTION16, SECTION16_REF, contraction_rate, gradient_step, iterate, kl_path,
                                         log_policy, mirror_descent_update, sampled_pairs)

    game, log_ref, K = SECTION16, log_policy(SECTION16_REF), 3
    uniform_pairs = sampled_pairs([1 / K] * K)

    def online_ipo_step(beta, step):
        loss, lr = method_loss("egpo", fn, beta=beta), step * K * beta / 4

        def update(log_pi, opponent):
            data = uniform_pairs.with_win_rates(game.win_rate(opponent.exp()))
            return gradient_step(loss, data, log_ref, log_pi, lr)

        return update

    def extragradient(update):
        return lambda log_pi: update(log_pi, update(log_pi, log_pi))

    pi_t = log_policy([0.2, 0.5, 0.3])
    results = [compare_vectors("egpo", "one gradient step (lr g) = mirror step with eta = 4g/(|Y| beta), eta = 1, "
                                       "beta = 0.1", mirror_descent_update(game, pi_t, log_ref, 1.0, 0.1).exp(),
                               online_ipo_step(0.1, 1.0)(pi_t, pi_t).exp(), 1e-12,
                               labels=[f"pi(y{k})" for k in range(3)])]
    target = regularised_equilibrium(game, SECTION16_REF, 0.1)
    for step, rate in ((1.0, 0.81), (2.0, 0.63)):
        kls = kl_path(target, iterate(extragradient(online_ipo_step(0.1, step)), log_ref, 50))
        results.append(CheckResult("egpo", f"extragradient contraction of KL(pi*_beta || pi_t), t = 10..40, step "
                                           f"{step:g} (online.md §16: ~{rate})", rate, contraction_rate(kls, 10, 40),
                                   0.01))
        if step == 2.0:
            results.append(CheckResult("egpo", "KL(pi*_beta || pi_50) < 1e-10 at step 2", 0.0, kls[50], 1e-10))
    ne = nash_equilibrium(game)
    near_unregularised = online_ipo_step(0.001, 2.0)
    start = kl_path(ne, [log_ref])[0]
    eg_kl = kl_path(ne, [iterate(extragradient(near_unregularised), log_ref, 100)[-1]])[0]
    plain_kl = kl_path(ne, [iterate(lambda lp: near_unregularised(lp, lp), log_ref, 100)[-1]])[0]
    results += [
        CheckResult("egpo", f"beta = 0.001, step 2: extragradient KL(NE || pi_100) <= 0.05 (from {start:.3f})", 0.0,
                    eg_kl, 0.05),
        CheckResult("egpo", "beta = 0.001, step 2: plain online IPO drifts away, KL(NE || pi_100) >= KL at t = 0",
                    start, plain_kl, 0.0, bound=">="),
    ]
    return results

