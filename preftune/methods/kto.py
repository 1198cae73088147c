"""KTO: model alignment as prospect-theoretic optimisation (Ethayarajh et al., ICML 2024, arXiv 2402.01306)."""
from __future__ import annotations

import torch

from preftune.methods.common import log_ratios
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.methods.state import BatchStatistics
from preftune.records import Logps, MethodOutput


@register(
    name="kto", seed=None, family="offline-pointwise", input_kind="pointwise", needs_reference=True,
    status="stable", extras=("label",), state=BatchStatistics,
    paper="Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization, arXiv 2402.01306",
    taxonomy=taxonomy(["pointwise", "unpaired"], ["offline"], ["fixed-reference", "reverse-kl"]),
)
def kto(policy: Logps, reference: Logps, *, label, beta: float = 0.1, desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0, state: BatchStatistics | None = None) -> MethodOutput:
    """Prospect-theoretic value of the implicit reward against a KL reference point z0.

    r = log pi(y|x)/pi_ref(y|x) for the completion (response 0) and
      desirable:   L = lambda_D * (1 - sigmoid(beta * (r - z0)))
      undesirable: L = lambda_U * (1 - sigmoid(beta * (z0 - r)))
    z0 = max(0, mean over the batch of log pi/pi_ref of mismatched completions), detached
    (Eq. 8 of the paper); the data layer puts the mismatched completion y' of another prompt in
    response 1. With K = 1 (no mismatched completion) z0 = 0.
    label: (B,) bool, True for a desirable completion. beta 0.1, lambda_D = lambda_U = 1.
    state: filled by the objective; the mean is then over the whole global batch, every process's
    share of it (the paper's z0 is one number per batch). Each mismatched completion still comes
    from the same process's micro-batch. Without a state: this batch alone.
    """
    ratios = log_ratios(policy, reference)
    if ratios.shape[1] > 1:
        mismatched = ratios[:, 1].detach()
        z0 = (mismatched.mean() if state is None else state.mean(mismatched)).clamp_min(0)
    else:
        z0 = torch.zeros((), dtype=ratios.dtype, device=ratios.device)
    r = ratios[:, 0]
    label = label.bool()
    loss = torch.where(label, desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
                       undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))))
    rewards = beta * ratios
    metrics = {"kl_reference_point": z0.expand_as(r),
               "accuracy": torch.where(label, r > z0, r < z0).float()}
    return MethodOutput(loss, rewards, metrics)


@tabular_check("kto")
def kto_tabular_check(fn=kto):
    """Two exact properties (derivations in closed_forms.kto_optimal_policy):

    1. Optimum. Response y drawn with probability mu_y, desirable with probability q_y, no
       mismatched completion (z0 = 0). With net desirability w_y = lambda_D q_y - lambda_U (1 - q_y) > 0
       and beta < 1 the expected loss has a unique optimum, pi_y with mu_y w_y beta s'(r_y)/pi_y equal
       for all y (s = sigmoid(beta r)); lambda_D != lambda_U so that swapped weights show.
    2. Reference point. With mismatched completions in response 1, z0 = max(0, batch mean of their
       log-ratios) is a constant: d L/d lp(y) = -lambda_D beta s (1 - s) for a desirable y, with
       s = sigmoid(beta (r - z0)), +lambda_U beta s (1 - s) for an undesirable one with
       s = sigmoid(beta (z0 - r)), and exactly 0 for the mismatched completions.
    """
    from preftune.tabular.bandit import Bandit
    from preftune.tabular.checks import compare_vectors, loss_and_gradient, method_loss, optimum_is_policy
    from preftune.tabular.closed_forms import kto_optimal_policy
    from preftune.tabular.expected import optimise_policy, pointwise_dataset

    beta, lam_d, lam_u = 0.1, 1.0, 1.5
    ref, mu, q = (0.5, 0.3, 0.2), (0.2, 0.5, 0.3), (0.9, 0.8, 0.7)
    params = dict(beta=beta, desirable_weight=lam_d, undesirable_weight=lam_u)
    optimum = optimise_policy(method_loss("kto", fn, **params), Bandit.create(ref), pointwise_dataset(q, mu))
    results = [optimum_is_policy("kto", f"optimum with z0 = 0, lambda_D = {lam_d}, lambda_U = {lam_u}",
                                 kto_optimal_policy(ref, q, beta, mu, lam_d, lam_u), optimum, 1e-10)]

    completion = torch.tensor([1.5, -0.5, 2.0, -3.0], dtype=torch.float64)  # log-ratios r (reference at 0)
    mismatched = torch.tensor([0.8, 0.1, -0.2, 0.5], dtype=torch.float64)
    label = torch.tensor([True, True, False, False])
    z0 = mismatched.mean().clamp_min(0)
    s_desirable, s_undesirable = torch.sigmoid(beta * (completion - z0)), torch.sigmoid(beta * (z0 - completion))
    expected_grad = torch.where(label, -lam_d * beta * s_desirable * (1 - s_desirable),
                                lam_u * beta * s_undesirable * (1 - s_undesirable))
    _, grad = loss_and_gradient(method_loss("kto", fn, **params), torch.stack([completion, mismatched], -1),
                                extras={"label": label})
    results.append(compare_vectors(
        "kto", f"gradient against z0 = max(0, mean mismatched log-ratio) = {float(z0):.3g}, z0 detached",
        torch.stack([expected_grad, torch.zeros(4, dtype=torch.float64)], -1), grad, 1e-15,
        labels=[f"{'D' if d else 'U'}{i}/{col}" for i, d in enumerate(label.tolist()) for col in ("y", "y'")]))
    return results
