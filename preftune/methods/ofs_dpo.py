"""OFS-DPO / COFS-DPO: online DPO with fast and slow LoRA modules chasing each other (Qi et al. 2024, arXiv 2406.05534)."""
from __future__ import annotations

from preftune.methods.common import log_ratios, neg_log_sigmoid
from preftune.methods.dpo import dpo
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput


@register(
    name="ofs_dpo", seed="ofs-dpo", family="online-iterative", input_kind="pairwise", needs_reference=True,
    extras=("slow",), status="stable",
    reconstructed="online.md §8 [R]: the chasing regulariser L_FS, the learning-rate ratio and COFS's choice of "
                  "the combination weight are reconstructed from summaries (no official code)",
    paper="Qi et al. 2024, Online DPO: Online Direct Preference Optimization with Fast-Slow Chasing, "
          "arXiv 2406.05534",
    taxonomy=taxonomy(["online", "streaming-pairs", "cross-domain"], ["online", "continual", "fast-slow"],
                      ["fixed-reference", "reverse-kl", "chasing-regulariser"], ["lora-modules"]),
)
def ofs_dpo(policy: Logps, reference: Logps, *, slow: Logps, beta: float = 0.1,
            chase_weight: float = 1.0) -> MethodOutput:
    """The fast module's loss: DPO plus the fast-slow chasing regulariser (online.md §8).

    L_F  = L_DPO(pi_F; pi_ref) + lambda L_FS,
    L_FS = -log sigmoid(beta [log pi_F(y_w)/pi_S(y_w) - log pi_F(y_l)/pi_S(y_l)]):
    the fast module must beat the slow module's margin, which keeps its gradient alive where
    plain DPO's fades. The slow module trains on plain L_DPO(pi_S; pi_ref) at a lower learning
    rate (the online loop's fast/slow schedule: two LoRA adapters on one base model, `slow` the
    slow adapter's log-probs, detached). COFS-DPO keeps the best fast module per domain and uses
    w theta_old + (1 - w) theta_new with w chosen on a replay memory (the schedule's `cofs_combine`).

    policy:       log-probs under the fast module; reference: pi_ref (the base model, adapters off).
    slow:         log-probs of the pair under the slow module.
    beta:         0.1, as DPO. chase_weight: lambda = 1.0 [R]. Step-size convention (online.md §0):
                  beta as DPO's; the fast/slow speeds are the two modules' learning rates.
    """
    out = dpo(policy, reference, beta=beta)
    fast_over_slow = beta * log_ratios(policy, slow)
    chase = neg_log_sigmoid(fast_over_slow[:, 0] - fast_over_slow[:, 1])
    metrics = {**out.metrics, "dpo_loss": out.loss.detach(), "chase_loss": chase.detach()}
    return MethodOutput(out.loss + chase_weight * chase, out.rewards, metrics)


@tabular_check("ofs_dpo")
def ofs_dpo_tabular_check(fn=ofs_dpo):
    """online.md §8 Test; a module is an additive logit vector on pi_ref ("LoRA"), every step a full-batch
    gradient step (fast lr 1, slow lr 0.25), the fast module on the registered loss (lambda = 1,
    beta = 1). (i) On a Bradley-Terry stream (rewards (1, .4, -.3, -1.1), pairs from pi_ref) the fast
    module reaches the DPO loss plain DPO has after 20 steps in fewer steps (the chasing term keeps
    pushing past the optimum later on, so this is about speed, not the final loss). (ii) Two domains
    with conflicting BT rewards, 40 steps each: COFS (the fast modules of the two domains combined
    with the weight, on a 0.05 grid, that minimises the DPO loss of a replay memory of both domains)
    keeps domain-1 preference accuracy at least 0.05 above sequential DPO's."""
    import torch

    from preftune.methods.registry import CheckResult
    from preftune.tabular import PreferenceModel, method_loss
    from preftune.tabular.checks import DEFAULT_REF, DEFAULT_REWARDS
    from preftune.tabular.online import gradient_step, labelled_pairs, log_policy, round_loss

    beta, fast_lr, slow_lr = 1.0, 1.0, 0.25
    dpo_loss, ofs_loss = method_loss("dpo", beta=beta), method_loss("ofs_dpo", fn, beta=beta, chase_weight=1.0)

    def fast_slow(data, log_ref, start, steps):
        fast, slow = start, start
        for _ in range(steps):
            fast, slow = (gradient_step(ofs_loss, data.seeing(slow=slow), log_ref, fast, fast_lr),
                          gradient_step(dpo_loss, data, log_ref, slow, slow_lr))
            yield fast

    def plain_dpo(data, log_ref, start, steps):
        current = start
        for _ in range(steps):
            current = gradient_step(dpo_loss, data, log_ref, current, fast_lr)
            yield current

    log_ref = log_policy(DEFAULT_REF)
    stream = labelled_pairs(PreferenceModel.bradley_terry(DEFAULT_REWARDS), log_ref.exp())
    target = float(round_loss(dpo_loss, stream, log_ref, list(plain_dpo(stream, log_ref, log_ref, 20))[-1]))
    fast_losses = [float(round_loss(dpo_loss, stream, log_ref, f)) for f in fast_slow(stream, log_ref, log_ref, 20)]
    steps = next((t + 1 for t, value in enumerate(fast_losses) if value <= target), 21)

    log_ref = log_policy([0.25] * 4)
    domains = [labelled_pairs(PreferenceModel.bradley_terry(r), log_ref.exp())
               for r in ((1.0, 0.4, -0.3, -1.1), (-1.0, 0.6, 0.8, -0.4))]

    def accuracy(data, log_pi):
        implicit = log_pi - log_ref
        return float((data.weight * (implicit[data.responses[:, 0]] > implicit[data.responses[:, 1]])).sum())

    sequential = list(plain_dpo(domains[1], log_ref, list(plain_dpo(domains[0], log_ref, log_ref, 40))[-1], 40))[-1]
    first = list(fast_slow(domains[0], log_ref, log_ref, 40))[-1]
    second = list(fast_slow(domains[1], log_ref, first, 40))[-1]
    candidates = [torch.log_softmax(w * first + (1 - w) * second, -1) for w in torch.linspace(0, 1, 21).tolist()]
    combined = min(candidates, key=lambda c: sum(float(round_loss(dpo_loss, d, log_ref, c)) for d in domains))
    cofs_accuracy, sequential_accuracy = accuracy(domains[0], combined), accuracy(domains[0], sequential)
    return [
        CheckResult("ofs_dpo", "steps for the fast module to reach plain DPO's loss after 20 steps: at most 19",
                    19, steps, 0.0, bound="<="),
        CheckResult("ofs_dpo", f"COFS's domain-1 accuracy: at least sequential DPO's {sequential_accuracy:.3f} + 0.05",
                    sequential_accuracy + 0.05, cofs_accuracy, 0.0, bound=">="),
    ]
