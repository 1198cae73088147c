"""APO: Accelerated Preference Optimization (He, Yuan, Gu 2024, arXiv 2410.06293)."""
from __future__ import annotations

from preftune.methods.dpo import dpo
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput


@register(
    name="apo", seed="apo", family="online-iterative", input_kind="pairwise", needs_reference=True, status="stable",
    reconstructed="online.md §7 [R]: the extrapolation form (log-space / parameter-space) and the default "
                  "momentum 0.3 are not pinned by the paper text we had",
    paper="He, Yuan, Gu 2024, Accelerated Preference Optimization for Large Language Model Alignment, "
          "arXiv 2410.06293",
    taxonomy=taxonomy(["online", "iterative", "on-policy-pairs"], ["online", "proximal-point", "momentum"],
                      ["previous-iterate-reference"], []),
)
def apo(policy: Logps, reference: Logps, *, beta: float = 0.1) -> MethodOutput:
    """One APO iteration's loss: DPO against the extrapolated previous iterate (online.md §7).

    Iterative DPO with reference pi_t is a proximal-point method; APO adds Nesterov momentum
    between iterations, which is a schedule, not a loss:
        pi^_{t+1} = argmin_pi L_DPO(pi; ref = pi_t, pairs from pi_t),
        pi_{t+1} ~ pi^_{t+1} (pi^_{t+1} / pi^_t)^alpha      (log space; parameter space in the LM [R]),
    with pi^_0 = pi_0 = pi_ref. alpha = 0 is iterative DPO. The online loop's `momentum` schedule
    (`schedule.momentum`, alpha, default 0.3 in configs/online/apo.yaml [R]) extrapolates the
    trainable parameters, theta_{t+1} = theta^_{t+1} + alpha (theta^_{t+1} - theta^_t).

    reference: pi_t (the extrapolated policy that sampled the iteration's pairs).
    beta:      0.1, as iterative DPO. Step-size convention (online.md §0): 1/beta is the step of the
               proximal point pi^_{t+1} ~ pi_t exp(r/beta); alpha is the momentum.
    """
    return dpo(policy, reference, beta=beta)


@tabular_check("apo")
def apo_tabular_check(fn=apo):
    """online.md §7 Test on a Bradley-Terry bandit (rewards (1, .4, -.3, -1.1), pi_ref = (.4, .3, .2, .1),
    beta = 1), pairs drawn from pi_t and labelled by BT, every iterate the minimiser of the registered
    loss: (i) the minimiser is pi_t exp(r/beta)/Z; (ii) alpha = 0 reproduces iterative DPO (the
    registered `dpo` with reference pi_t) bit for bit; (iii) APO with alpha = 0.3 reaches the
    sub-optimality gap max r - E_pi r <= 0.02 in fewer iterations than alpha = 0."""
    import torch

    from preftune.methods.registry import CheckResult
    from preftune.tabular import PreferenceModel, dpo_optimal_policy, method_loss
    from preftune.tabular.checks import DEFAULT_REF, DEFAULT_REWARDS, compare_vectors
    from preftune.tabular.online import labelled_pairs, log_policy, minimise_round

    beta, rewards = 1.0, torch.tensor(DEFAULT_REWARDS, dtype=torch.float64)
    bt = PreferenceModel.bradley_terry(rewards)

    def proximal_step(loss, log_pi_t):
        return minimise_round(loss, labelled_pairs(bt, log_pi_t.exp()), log_pi_t, log_pi_t)

    def gap(log_pi):
        return float(rewards.max() - log_pi.exp() @ rewards)

    def run(loss, alpha, iterations=8, target=0.02):
        """APO's iterates pi_0, pi_1, ... until the gap target is met (at most `iterations`)."""
        path, hat_previous = [log_policy(DEFAULT_REF)], log_policy(DEFAULT_REF)
        while len(path) <= iterations and gap(path[-1]) > target:
            hat = proximal_step(loss, path[-1])
            path.append(torch.log_softmax(hat + alpha * (hat - hat_previous), dim=-1))
            hat_previous = hat
        return path

    apo_loss = method_loss("apo", fn, beta=beta)
    start = log_policy(DEFAULT_REF)
    iterative_dpo, apo_zero = run(method_loss("dpo", beta=beta), 0.0), run(apo_loss, 0.0)
    accelerated = run(apo_loss, 0.3)
    n_dpo, n_apo = len(iterative_dpo) - 1, len(accelerated) - 1
    difference = float("inf") if len(apo_zero) != len(iterative_dpo) else \
        max(float((a - b).abs().max()) for a, b in zip(apo_zero, iterative_dpo))
    return [
        compare_vectors("apo", "loss minimiser = pi_t exp(r/beta)/Z, beta = 1, pi_t = pi_ref",
                        dpo_optimal_policy(DEFAULT_REF, rewards, beta), proximal_step(apo_loss, start).exp(), 1e-9,
                        labels=[f"pi(y{k})" for k in range(4)]),
        CheckResult("apo", "alpha = 0 is iterative DPO bit for bit (max |log pi difference| along the path)",
                    0.0, difference, 0.0),
        CheckResult("apo", f"iterations to gap <= 0.02 with alpha = 0.3: fewer than alpha = 0's {n_dpo}", n_dpo - 1,
                    n_apo, 0.0, bound="<="),
    ]
