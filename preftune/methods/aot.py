"""AOT: distributional preference alignment via optimal transport (Melnyk et al., NeurIPS 2024, arXiv 2406.05882)."""
from __future__ import annotations

import torch

from preftune.methods.common import log_ratios, neg_log_sigmoid
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


@register(
    name="aot", seed=None, family="offline-pairwise", input_kind="pairwise", needs_reference=True,
    status="stable", paper="Melnyk et al. 2024, Distributional Preference Alignment of LLMs via Optimal "
                           "Transport, arXiv 2406.05882",
    taxonomy=taxonomy(["pairwise", "distributional"], ["offline", "batch-level"],
                      ["fixed-reference", "optimal-transport", "stochastic-dominance"]),
)
def aot(policy: Logps, reference: Logps, *, beta: float = 0.1, label_smoothing: float = 0.0,
        paired: bool = True) -> MethodOutput:
    """First-order stochastic dominance of one batch distribution over another, by sorting (1-D optimal transport).

    The paper relaxes "the distribution U dominates V" to the optimal-transport cost
    min over couplings of E h(u - v) with a convex loss h; in one dimension the optimal coupling
    of two empirical measures of size B is the monotone one, so the cost is
        (1/B) sum_i h(beta (u_(i) - v_(i))),   u_(1) <= ... <= u_(B) and v_(1) <= ... <= v_(B) sorted,
    with h(z) = (1-e) l(z) + e l(-z), l(z) = -log sigmoid(z) (e = label_smoothing, 0 by default).
    - paired=True (AOT paired): u = lp(y_w) - lp(y_l), the policy's log-likelihood ratio of each
      pair, and v = lpr(y_w) - lpr(y_l), the reference's: the policy's ratio distribution must
      dominate the reference's. Unsorted, this is DPO (cDPO with e > 0).
    - paired=False (AOT unpaired): u = Delta_w, v = Delta_l: the chosen responses' implicit-reward
      distribution must dominate the rejected ones'.
    Per-example contract: AOT is a batch-level loss. loss[i] is the loss of the i-th order
    statistics, not of example i; its mean is the paper's objective and does not depend on the
    order of the batch. Per-example weighting or filtering of it has no meaning, each micro-batch
    (and each process) is sorted on its own, and with B = 1 it equals DPO. Rewards and the
    logged margin/accuracy are each example's own beta * Delta, unsorted.
    beta: 0.1 (public implementations' default; the paper's value was not read). Shapes: (B, 2) in, (B,) loss.
    """
    ratios = log_ratios(policy, reference)
    if paired:
        upper, lower = policy.chosen - policy.rejected, reference.chosen - reference.rejected
    else:
        upper, lower = ratios[:, 0], ratios[:, 1]
    # torch.sort is differentiable: each sorted value carries the gradient of the entry it came from.
    z = beta * (torch.sort(upper).values - torch.sort(lower).values)
    loss = (1 - label_smoothing) * neg_log_sigmoid(z) + label_smoothing * neg_log_sigmoid(-z)
    rewards = beta * ratios
    return MethodOutput(loss, rewards, pairwise_metrics(rewards[:, 0], rewards[:, 1]))


@tabular_check("aot")
def aot_tabular_check(fn=aot):
    """On four prompts with one pair each (hard labels, equal weights, so the expected loss is the
    batch objective over the whole dataset; reference ratios differ in sign and size):

    1. Optimum with label smoothing e: every sorted term sits at the minimiser logit(1-e) of h, so
       beta (u_(i) - v_(i)) = log((1-e)/e) at every rank, in both modes. Starting from the reference,
       where the two orders agree, this also holds pair by pair.
    2. Distributional: the batch loss is unchanged when the policy's values u are permuted among the
       examples while the reference's v stay (paired), or the chosen log-ratios are permuted while
       the rejected ones stay (unpaired). A per-pair loss such as DPO changes (shown in the unit tests).
    """
    from preftune.tabular.bandit import Bandit
    from preftune.tabular.checks import compare, compare_vectors, loss_and_gradient, method_loss
    from preftune.tabular.closed_forms import logit
    from preftune.tabular.expected import Dataset, optimise_policy

    beta, eps = 0.5, 0.1
    ref = ((0.7, 0.3), (0.2, 0.8), (0.5, 0.5), (0.9, 0.1))
    bandit = Bandit.create(ref)
    data = Dataset(prompt=torch.arange(4), responses=torch.tensor([[0, 1]] * 4),
                   weight=torch.full((4,), 0.25, dtype=torch.float64))
    results = []
    for paired in (True, False):
        mode = "paired" if paired else "unpaired"
        optimum = optimise_policy(method_loss("aot", fn, beta=beta, label_smoothing=eps, paired=paired), bandit, data)
        if paired:
            upper, lower = optimum.logp[:, 0] - optimum.logp[:, 1], bandit.ref_logp[:, 0] - bandit.ref_logp[:, 1]
        else:
            delta = bandit.log_ratios(optimum.logp)
            upper, lower = delta[:, 0], delta[:, 1]
        measured = beta * (torch.sort(upper).values - torch.sort(lower).values)
        results.append(compare_vectors("aot", f"{mode}: optimum beta*(u_(i) - v_(i)) = log((1-e)/e) at every rank, e = {eps}",
                                       torch.full((4,), logit(1 - eps), dtype=torch.float64), measured, 1e-9,
                                       labels=[f"rank {i}" for i in range(4)]))
        # A policy/reference table whose orders disagree; permute the policy's values among examples.
        policy_sums = torch.tensor([[-1.0, -2.5], [-3.0, -0.5], [-2.0, -2.0], [-0.2, -4.0]], dtype=torch.float64)
        reference_sums = torch.tensor([[-1.5, -1.0], [-2.0, -2.0], [-0.5, -3.5], [-3.0, -0.7]], dtype=torch.float64)
        shuffled = policy_sums.clone()
        order = torch.tensor([2, 0, 3, 1])
        if paired:
            shuffled = policy_sums[order]  # whole pairs move: u permuted, the reference's v stay
            reference_moved = reference_sums.clone()
        else:  # chosen log-ratios permuted, rejected ones stay: move chosen policy and reference sums together
            shuffled[:, 0] = policy_sums[order, 0]
            reference_moved = reference_sums.clone()
            reference_moved[:, 0] = reference_sums[order, 0]
        loss = method_loss("aot", fn, beta=beta, paired=paired)
        before, _ = loss_and_gradient(loss, policy_sums, reference_sums)
        after, _ = loss_and_gradient(loss, shuffled, reference_moved)
        results.append(compare("aot", f"{mode}: batch loss unchanged when the policy's values are permuted among examples",
                               float(before.sum()), float(after.sum()), 1e-12))
    return results
