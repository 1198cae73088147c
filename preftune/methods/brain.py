"""BRAIn: Bayesian Reward-conditioned Amortized Inference (Pandey et al., ICML 2024, arXiv 2402.02479)."""
from __future__ import annotations

import torch
from torch import Tensor

from preftune.methods.common import log_ratios
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput

POSTERIORS = ("softmax", "argmax")


def _sums(values: Logps | Tensor) -> Tensor:
    """(B, n) sequence log-probs from a Logps record (an auxiliary model) or a data column."""
    return values.sum if isinstance(values, Logps) else values


@register(
    name="brain", seed="brain", family="offline-distribution", input_kind="listwise", needs_reference=True,
    status="stable", extras=("scores", "proposal_logps"),
    paper="Pandey et al. 2024, BRAIn: Bayesian Reward-conditioned Amortized Inference for natural language "
          "generation from feedback, arXiv 2402.02479",
    taxonomy=taxonomy(["listwise", "reward-scores", "n-samples-per-prompt"], ["offline", "distillation"],
                      ["fixed-reference", "forward-kl", "importance-sampling"]),
    reconstructed="the posterior p(y|x,G=1) ~ p_SFT(y|x) exp(r/beta_post) (beta_post's placement) and the "
                  "DPO temperature `beta` on the policy's log-ratio in the self-normalised policy weights (so "
                  "that the proposal cancels and the n = 2 argmax case is DPO at any beta; the paper states it "
                  "at beta = 1) are our reading; the proposal refresh schedule is not implemented (the proposal "
                  "log-probs are data).",
)
def brain(policy: Logps, reference: Logps, *, scores: Tensor, proposal_logps: Logps | Tensor,
          beta_post: float = 1.0, posterior: str = "softmax", beta: float = 1.0) -> MethodOutput:
    """Distil the reward-conditioned posterior into pi by self-normalised importance sampling (offline.md §16).

    For n samples y_1..y_n of one prompt drawn from a proposal q' (the SFT model, or any other):
      alpha_i = softmax_i(log p_SFT(y_i) + r_i / beta_post - log q'(y_i))   target weights, detached
      b_i     = softmax_i(beta log pi(y_i)/p_SFT(y_i) + log p_SFT(y_i) - log q'(y_i))
                                                                     self-normalised policy weights
      L       = -sum_i alpha_i log b_i,   so that   dL/d log pi(y_i) = -beta (alpha_i - b_i)
    i.e. the BRAIn gradient -sum_i (alpha_i - b_i) grad log pi(y_i) at beta = 1, where b_i is
    softmax_i(log pi(y_i) - log q'(y_i)) (paper §3, the self-normalised baseline). b = alpha holds at
    pi = p_SFT exp(r / (beta beta_post)) / Z whatever the proposal: q' cancels at every beta (with
    b = softmax(beta (log pi - log q')) it would not, and the optimum would move with q' when beta != 1).
    At beta = 1 the fixed point is the posterior pi = p_SFT exp(r/beta_post) / Z.
    posterior "argmax" puts alpha on the best-rewarded sample: with n = 2 and q' = p_SFT = pi_ref
    this is DPO, L = -log sigmoid(beta (Delta_w - Delta_l)) ("DPO-sft", paper §4; beta = 1 there).
    p_SFT is the reference model; scores (B, n) are the rewards r; proposal_logps (B, n) are
    log q'(y_i), a data column or the Logps of an auxiliary model (aux_models: {proposal_logps: PATH}).
    beta_post: 1 (posterior temperature; not given in what we read). beta: 1 (paper). Shapes:
    (B, n) in, (B,) loss; rewards beta * log pi/pi_ref. Logs ess (effective sample size of alpha
    over n), sn_kl = KL(alpha || b) (0 iff the policy weights match the target) and top1_accuracy.
    """
    if posterior not in POSTERIORS:
        raise ValueError(f"posterior must be one of {POSTERIORS}, got {posterior!r}")
    proposal = _sums(proposal_logps).to(policy.sum.dtype)
    scores = scores.to(policy.sum.dtype)
    if posterior == "softmax":
        alpha = torch.softmax(reference.sum + scores / beta_post - proposal, dim=-1)
    else:
        best = scores == scores.max(dim=-1, keepdim=True).values
        alpha = best.to(scores.dtype) / best.sum(-1, keepdim=True)
    alpha = alpha.detach()
    log_b = torch.log_softmax(beta * (policy.sum - reference.sum) + reference.sum - proposal, dim=-1)
    loss = -(alpha * log_b).sum(-1)
    kl = (torch.special.xlogy(alpha, alpha) - alpha * log_b).sum(-1)
    n = alpha.shape[-1]
    metrics = {"ess": 1.0 / (alpha ** 2).sum(-1) / n, "sn_kl": kl,
               "top1_accuracy": (log_b.argmax(-1) == alpha.argmax(-1)).float()}
    return MethodOutput(loss, beta * log_ratios(policy, reference), metrics)


@tabular_check("brain")
def brain_tabular_check(fn=brain):
    """Enumerated bandit: one prompt whose n samples are all four responses (unequal lengths),
    p_SFT = the reference, rewards r, beta_post = 0.5.

    1. With a uniform proposal the expected loss is minimised exactly at the posterior
       pi = p_SFT exp(r/beta_post) / Z (offline.md §16 Test 2).
    2. With a non-uniform proposal q' the optimum is the same posterior: the importance weights
       remove q' from both the target and the policy weights. At beta = 0.5, with the same
       non-uniform q', the optimum is p_SFT exp(r / (beta beta_post)) / Z: q' cancels at every beta.
    3. n = 2, argmax posterior, q' = p_SFT = pi_ref, pairs labelled by Bradley-Terry(r) with the
       winner scored higher: DPO, so beta (Delta_i - Delta_j) = r_i - r_j at the optimum (beta = 1
       as in the paper, and beta = 0.1 for the [recon] temperature).
    """
    import torch

    from preftune.tabular.bandit import Bandit
    from preftune.tabular.checks import (DEFAULT_LENGTHS, DEFAULT_REF, DEFAULT_REWARDS, compare_vectors, log_ratio,
                                         method_loss, optimum_is_policy)
    from preftune.tabular.closed_forms import dpo_optimal_policy
    from preftune.tabular.expected import Dataset, optimise_policy, pairwise_dataset, reference_pair_sampling
    from preftune.tabular.preferences import PreferenceModel

    beta_post = 0.5
    r = torch.tensor(DEFAULT_REWARDS, dtype=torch.float64)
    bandit = Bandit.create(DEFAULT_REF, DEFAULT_LENGTHS)
    listed = torch.tensor([[2, 0, 3, 1]])
    posterior = dpo_optimal_policy(DEFAULT_REF, DEFAULT_REWARDS, beta_post)  # p_SFT exp(r/beta_post) / Z
    loss = method_loss("brain", fn, beta_post=beta_post)
    results = []
    for name, proposal in (("uniform", torch.full((4,), 0.25, dtype=torch.float64)),
                           ("non-uniform", torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))):
        group = Dataset(prompt=torch.zeros(1, dtype=torch.long), responses=listed,
                        weight=torch.ones(1, dtype=torch.float64),
                        extras={"scores": r[listed], "proposal_logps": proposal.log()[listed]})
        optimum = optimise_policy(loss, bandit, group)
        results.append(optimum_is_policy("brain", f"optimum = p_SFT exp(r/beta_post)/Z, {name} proposal",
                                         posterior, optimum, 1e-9))
    beta = 0.5
    optimum = optimise_policy(method_loss("brain", fn, beta_post=beta_post, beta=beta), bandit, group)
    results.append(optimum_is_policy(
        "brain", f"beta = {beta:g}, non-uniform proposal: optimum = p_SFT exp(r/(beta beta_post))/Z",
        dpo_optimal_policy(DEFAULT_REF, DEFAULT_REWARDS, beta * beta_post), optimum, 1e-9))

    pairs = pairwise_dataset(PreferenceModel.bradley_terry(DEFAULT_REWARDS), reference_pair_sampling(bandit))
    winner_first = torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand(pairs.num_rows, 2)
    pairs = Dataset(pairs.prompt, pairs.responses, pairs.weight,
                    {"scores": winner_first, "proposal_logps": bandit.ref_logp[0][pairs.responses]})
    i, j = torch.triu_indices(4, 4, offset=1)
    for beta in (1.0, 0.1):
        optimum = optimise_policy(method_loss("brain", fn, posterior="argmax", beta=beta), bandit, pairs)
        implicit = beta * log_ratio(bandit, optimum.logp)
        results.append(compare_vectors("brain", f"n = 2 argmax, q' = pi_ref is DPO: beta*(D_i-D_j) = r_i-r_j, "
                                       f"beta = {beta:g}", r[i] - r[j], implicit[i] - implicit[j], 1e-9,
                                       labels=[f"{a},{b}" for a, b in zip(i.tolist(), j.tolist())]))
    return results
