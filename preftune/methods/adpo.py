"""ADPO: Anchored Direct Preference Optimization (Wang 2025, arXiv 2510.18913), pairwise and listwise.

Both forms minimise a cross-entropy between a target distribution q over a group of responses
and the policy's anchored distribution over the same group (offline.md §5):

    u_i = (s_i - a_i) / tau,    p_theta(i | S) = softmax_i(u),    L = -sum_i q_i log p_theta(i | S)

with s_i = log pi(y_i|x) (or its per-token mean) and a_i the same under the anchor, here the
reference model (fixed anchor). L is KL(q || p_theta) up to the entropy of q, a constant.
Because softmax is shift invariant only within-group differences of s - a matter.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from preftune.methods.common import neg_log_sigmoid
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics

PAPER = "Wang 2025, Anchored Direct Preference Optimization (ADPO), arXiv 2510.18913"
TARGETS = ("softmax", "top1", "kde")
LIST_LOSSES = ("cross_entropy", "plackett_luce")


def anchored_scores(policy: Logps, anchor: Logps, tau: float, length_normalize: bool) -> Tensor:
    """(B, K) u = (s - a) / tau: sequence log-ratios against the anchor, per token when length_normalize."""
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if length_normalize:
        return (policy.mean - anchor.mean) / tau
    return (policy.sum - anchor.sum) / tau


def listwise_target(scores: Tensor, target: str = "softmax", reward_temperature: float = 1.0,
                    standardize: bool = False, kde_bandwidth: float = 0.5) -> Tensor:
    """(B, K) target distribution q over each group from its (B, K) scalar rewards.

    softmax: q = softmax(r / beta_r), r standardised within the group first when `standardize`
             (offline.md §5 variant 2; verl: z-scored rewards, beta_r 0.3-0.5).
    top1:    q one-hot on the best response (ties share the mass): Top-1-vs-rest / InfoNCE.
    kde:     [recon] q = softmax(r~ / beta_r), where r~ is a Gaussian-kernel (Nadaraya-Watson)
             smoothing of the within-group z-scores z: r~_i = sum_j k_ij z_j / sum_j k_ij with
             k_ij = exp(-(z_i - z_j)^2 / (2 h^2)), h = kde_bandwidth. Close rewards are pooled, so
             small noisy differences give (almost) equal q; h -> 0 is the standardised softmax,
             h -> inf the uniform q. The paper's kernel and bandwidth could not be read.
    """
    r = scores if scores.is_floating_point() else scores.float()
    if target == "top1":
        best = r == r.max(dim=-1, keepdim=True).values
        return best.to(r.dtype) / best.sum(-1, keepdim=True)
    if target not in ("softmax", "kde"):
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if standardize or target == "kde":
        r = (r - r.mean(-1, keepdim=True)) / r.std(-1, unbiased=False, keepdim=True).clamp_min(1e-8)
    if target == "kde":
        kernel = torch.exp(-(r.unsqueeze(-1) - r.unsqueeze(-2)) ** 2 / (2 * kde_bandwidth ** 2))
        r = (kernel * r.unsqueeze(-2)).sum(-1) / kernel.sum(-1)
    return torch.softmax(r / reward_temperature, dim=-1)


def plackett_luce_nll(u: Tensor, scores: Tensor) -> Tensor:
    """(B,) ListMLE: -sum_{k<K} [u_(k) - logsumexp_{j>=k} u_(j)] over items sorted by score, best first
    (ties keep their order in the group)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ranked = u.gather(-1, order)
    tail = torch.logcumsumexp(ranked.flip(-1), dim=-1).flip(-1)
    return -(ranked - tail)[:, :-1].sum(-1)


@register(
    name="adpo", seed="adpo", family="offline-listwise", input_kind="pairwise", needs_reference=True,
    status="stable", paper=PAPER,
    taxonomy=taxonomy(["pairwise", "soft-labels"], ["offline"], ["anchored", "fixed-reference", "trust-region"]),
    reconstructed="anchor = the fixed reference (dynamic EMA / previous-iterate anchors are not implemented "
                  "here); the paper's tau default is unknown, tau = 10 = 1/beta makes the defaults DPO; a "
                  "soft q from a reward gap, q = sigmoid((r_w - r_l)/T), is adpo_listwise with K = 2.",
)
def adpo(policy: Logps, reference: Logps, *, tau: float = 10.0, q: float = 1.0,
         length_normalize: bool = False) -> MethodOutput:
    """Pairwise anchored soft-DPO (offline.md §5, variant 1).

    u = [(s_w - a_w) - (s_l - a_l)] / tau,   L = q l(u) + (1 - q) l(-u),   l(z) = -log sigmoid(z),
    the two-item case of L = -sum_i q_i log softmax(u)_i, with the anchor a = the reference.
    q = 1, tau = 1/beta is DPO; q = 1 - eps is cDPO. Logs win_mass = p_theta(chosen | pair) = sigmoid(u).
    tau: 10 (= 1/beta for beta 0.1; verl's hint for per-token scores is 0.5-0.8). q: 1 (hard
    label; an annotator confidence or a smoothed label otherwise). length_normalize: per-token
    scores (verl's default) instead of sequence sums. Shapes: (B, 2) in, (B,) loss.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q is a probability, got {q}")
    rewards = anchored_scores(policy, reference, tau, length_normalize)
    u = rewards[:, 0] - rewards[:, 1]
    loss = q * neg_log_sigmoid(u) + (1 - q) * neg_log_sigmoid(-u)
    metrics = pairwise_metrics(rewards[:, 0], rewards[:, 1])
    metrics["win_mass"] = torch.sigmoid(u)
    return MethodOutput(loss, rewards, metrics)


@register(
    name="adpo_listwise", seed="adpo", family="offline-listwise", input_kind="listwise", needs_reference=True,
    status="stable", extras=("scores",), paper=PAPER,
    taxonomy=taxonomy(["listwise", "reward-scores", "soft-labels"], ["offline"],
                      ["anchored", "fixed-reference", "trust-region"]),
    reconstructed="the KDE target (Gaussian Nadaraya-Watson smoothing of within-group z-scores, bandwidth h) "
                  "is our reading of 'KDE-based listwise smoothing'; defaults tau = 10 and beta_r = 1 are not "
                  "the paper's (unknown; verl uses tau 0.5-0.8 on per-token scores and beta_r 0.3-0.5 on "
                  "z-scored rewards); anchor = the fixed reference.",
)
def adpo_listwise(policy: Logps, reference: Logps, *, scores: Tensor, tau: float = 10.0,
                  reward_temperature: float = 1.0, target: str = "softmax", standardize: bool = False,
                  kde_bandwidth: float = 0.5, loss_type: str = "cross_entropy",
                  length_normalize: bool = False) -> MethodOutput:
    """Listwise anchored soft-DPO over K responses with scalar rewards (offline.md §5, variants 2-3).

    u_i = (s_i - a_i) / tau,  p_theta = softmax(u),  q = listwise_target(scores), and
      cross_entropy:  L = -sum_i q_i log p_theta(i)  (= KL(q || p_theta) + H(q));
      plackett_luce:  L = -sum_{k<K} [u_(k) - logsumexp_{j>=k} u_(j)], items sorted by score (ListMLE).
    At the optimum of cross_entropy, (s_i - a_i)/tau = log q_i + C. With K = 2 and the softmax
    target this is the pairwise form with q = sigmoid((r_w - r_l)/beta_r). Logs win_mass =
    p_theta(best | group) (the paper's WinMass) and top1_accuracy = 1[argmax u = argmax score].
    scores: (B, K) rewards, higher is better. tau 10; reward_temperature beta_r 1; target
    softmax | top1 | kde; standardize: z-score rewards in the group; kde_bandwidth h 0.5;
    length_normalize: per-token scores. Shapes: (B, K) in, (B,) loss, rewards u (B, K).
    """
    if loss_type not in LIST_LOSSES:
        raise ValueError(f"loss_type must be one of {LIST_LOSSES}, got {loss_type!r}")
    u = anchored_scores(policy, reference, tau, length_normalize)
    scores = scores.to(device=u.device, dtype=u.dtype)
    log_p = torch.log_softmax(u, dim=-1)
    if loss_type == "plackett_luce":
        loss = plackett_luce_nll(u, scores)
    else:
        q = listwise_target(scores, target, reward_temperature, standardize, kde_bandwidth)
        loss = -(q * log_p).sum(-1)
    best = scores.argmax(-1, keepdim=True)
    metrics = {"win_mass": log_p.detach().gather(-1, best).squeeze(-1).exp(),
               "top1_accuracy": (u.detach().argmax(-1, keepdim=True) == best).squeeze(-1).float()}
    return MethodOutput(loss, u, metrics)


@tabular_check("adpo")
def adpo_tabular_check(fn=adpo):
    """1. q = 1, tau = 1/beta is DPO: under Bradley-Terry labels the optimum recovers the reward,
          (Delta_i - Delta_j)/tau = r_i - r_j (offline.md §5 with §1).
       2. Soft label q on one pair labelled 0 > 1 with probability p: the expected loss is a logistic
          loss with soft label pq + (1-p)(1-q), minimised at u* = logit(pq + (1-p)(1-q)); u is
          measured on sequence log-ratios, and per token when length_normalize (unequal lengths).
    """
    from preftune.tabular.checks import (compare, method_loss, optimum_matches_reward, pair_log_ratio_margin,
                                         pair_optimum)
    from preftune.tabular.closed_forms import smoothed_logistic_optimal_margin

    beta = 0.1
    results = [optimum_matches_reward("adpo", fn, params={"tau": 1 / beta, "q": 1.0}, beta=beta)]
    tau = 2.0
    for q, p, normalise in ((0.8, 1.0, False), (0.9, 0.7, False), (0.8, 1.0, True)):
        bandit, optimum = pair_optimum(method_loss("adpo", fn, tau=tau, q=q, length_normalize=normalise), p=p)
        per = "per-token" if normalise else "summed"
        results.append(compare("adpo", f"pair optimum u* = logit(pq+(1-p)(1-q)), q = {q:g}, p = {p:g}, {per} scores",
                               smoothed_logistic_optimal_margin(1 - q, p),
                               pair_log_ratio_margin(bandit, optimum.logp, normalise) / tau, 1e-9))
    return results


@tabular_check("adpo_listwise")
def adpo_listwise_tabular_check(fn=adpo_listwise):
    """On the standard 4-response bandit (unequal lengths, non-uniform reference), one group of all
    four responses with rewards r (listed out of order):

    1. cross-entropy, softmax target: optimum (s_i - a_i)/tau = log q_i + C, q = softmax(r/beta_r),
       on summed and on per-token scores (offline.md §5 Test 3);
    2. cross-entropy, KDE target: the same with q from the kernel-smoothed z-scores, computed here
       from the formula in the docstring;
    3. Plackett-Luce: under rankings drawn from Plackett-Luce(r) (all 24, exact probabilities) the
       ListMLE optimum recovers the rewards, (s_i - a_i)/tau = r_i + C.
    """
    import torch

    from preftune.tabular.bandit import Bandit
    from preftune.tabular.checks import (DEFAULT_LENGTHS, DEFAULT_REF, DEFAULT_REWARDS, compare_vectors, log_ratio,
                                         method_loss)
    from preftune.tabular.expected import Dataset, optimise_policy, plackett_luce_dataset

    tau, beta_r, h = 2.0, 0.5, 0.8
    r = torch.tensor(DEFAULT_REWARDS, dtype=torch.float64)
    listed = torch.tensor([[2, 0, 3, 1]])
    group = Dataset(prompt=torch.zeros(1, dtype=torch.long), responses=listed,
                    weight=torch.ones(1, dtype=torch.float64), extras={"scores": r[listed]})
    bandit = Bandit.create(DEFAULT_REF, DEFAULT_LENGTHS)
    i, j = torch.triu_indices(4, 4, offset=1)
    labels = [f"{a},{b}" for a, b in zip(i.tolist(), j.tolist())]

    def differences(values: torch.Tensor) -> torch.Tensor:
        return values[i] - values[j]

    z = (r - r.mean()) / r.std(unbiased=False)
    smoothed = torch.tensor([sum(math.exp(-(a - b) ** 2 / (2 * h * h)) * b for b in z.tolist()) /
                             sum(math.exp(-(a - b) ** 2 / (2 * h * h)) for b in z.tolist()) for a in z.tolist()],
                            dtype=torch.float64)
    results = []
    for target, log_q in (("softmax", torch.log_softmax(r / beta_r, -1)),
                          ("kde", torch.log_softmax(smoothed / beta_r, -1))):
        for normalise in ((False, True) if target == "softmax" else (False,)):
            loss = method_loss("adpo_listwise", fn, tau=tau, reward_temperature=beta_r, target=target,
                               kde_bandwidth=h, length_normalize=normalise)
            optimum = optimise_policy(loss, bandit, group)
            u = log_ratio(bandit, optimum.logp, normalise) / tau
            per = "per-token" if normalise else "summed"
            results.append(compare_vectors("adpo_listwise", f"{target} target optimum (s-a)/tau = log q + C, {per} scores",
                                           differences(log_q), differences(u), 1e-9, labels=labels))
    rankings = plackett_luce_dataset(DEFAULT_REWARDS)
    positions = torch.arange(4, 0, -1, dtype=torch.float64).expand(rankings.num_rows, 4)  # best first
    rankings = Dataset(rankings.prompt, rankings.responses, rankings.weight, {"scores": positions})
    optimum = optimise_policy(method_loss("adpo_listwise", fn, tau=tau, loss_type="plackett_luce"), bandit, rankings)
    results.append(compare_vectors("adpo_listwise", "Plackett-Luce rankings: ListMLE optimum (s-a)/tau = r + C",
                                   differences(r), differences(log_ratio(bandit, optimum.logp) / tau), 1e-9,
                                   labels=labels))
    return results
