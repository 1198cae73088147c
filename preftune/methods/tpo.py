"""TPO: triple preference optimisation with a gold response (Saeidi et al. 2024, arXiv 2405.16681)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from preftune.methods.common import neg_log_sigmoid
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.methods.state import BatchStatistics
from preftune.records import Logps, MethodOutput, pairwise_metrics

GOLD = 2  # response index of the gold answer: data `extra_responses: [gold]` comes after chosen, rejected


def batch_token_mean_nll(policy: Logps, response: int, state: BatchStatistics | None = None) -> Tensor:
    """(B,) per-example shares of the token-mean NLL over ALL tokens of one response column in the batch.

    -sum_b lp(y_b) / sum_b |y_b| is a batch-level reduction (a cross-entropy over the batch's gold
    tokens); each example gets -lp(y_b) * B / sum_b |y_b|, so that the plain batch mean the trainer
    takes is exactly that token mean. With a `state` (in training) B and the token count are those of
    the global batch, every process's share of it, so the average the processes' gradients take is
    that token mean too; under gradient accumulation it is the token mean within each micro-batch.
    """
    lengths = policy.length[:, response]
    examples = torch.tensor(float(lengths.shape[0]), dtype=lengths.dtype, device=lengths.device)
    total_tokens = lengths.sum()
    if state is not None:
        examples, total_tokens = state.total(examples), state.total(lengths)
    return -policy.sum[:, response] * examples / total_tokens.clamp_min(1.0)


@register(
    name="tpo", seed="tpo", family="offline-pairwise", input_kind="pairwise", needs_reference=False,
    status="stable", state=BatchStatistics,
    paper="Saeidi et al. 2024, Triple Preference Optimization: Achieving Better Alignment using a Single Step "
          "Optimization, arXiv 2405.16681",
    taxonomy=taxonomy(["pairwise", "gold-response", "triples"], ["offline", "single-stage"],
                      ["reference-free"], ["likelihood"]),
)
def tpo(policy: Logps, *, beta: float = 0.01, alpha: float = 1.0, length_normalize: bool = False,
        gamma: float = 0.5, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
        state: BatchStatistics | None = None) -> MethodOutput:
    """A reference-free preference loss on (y_w, y_l) plus the NLL of a gold response y_gold.

    offline.md §9, responses (y_w, y_l, y_gold) = indices (0, 1, 2) (data `extra_responses: [gold]`):
      TPO   (length_normalize False):  L = l(beta [lp(y_w) - lp(y_l)]) + alpha NLL_tok(y_gold)
      TPO-L (length_normalize True):   L = l(beta [avg(y_w) - avg(y_l)] - gamma) + alpha NLL_tok(y_gold)
    NLL_tok is the token-mean cross-entropy over all gold tokens of the batch (a batch-level
    reduction, spread over examples by `batch_token_mean_nll`). gamma is absolute (the code
    subtracts gamma/beta before multiplying by beta) and only enters TPO-L. loss_type: "sigmoid"
    (above, with optional label_smoothing eps: (1-eps) l(z) + eps l(-z)), "hinge" max(0, 1 - z), or
    "ipo" (u - 1/(2 beta))^2 on u = avg(y_w) - avg(y_l): the official trainer length-averages the
    log-probs for ipo as for TPO-L, whatever length_normalize says.
    Defaults, official README for base models: TPO beta 0.01, alpha 1 (instruct: alpha 0.05);
    TPO-L beta 2 and gamma 0.5-10. Code defaults: beta 0.1, alpha 0.05, gamma 0.5.
    alpha = 0 TPO-L is SimPO with gamma absolute; alpha = 0 TPO is the reference-free sigmoid loss.
    state: filled by the objective in training, so that the gold token mean is over the global batch.
    Shapes: (B, 3) in, (B,) loss. Rewards: beta * lp (avg for TPO-L and ipo) of each response.
    """
    if policy.num_responses <= GOLD:
        raise ValueError("tpo needs a gold response after chosen and rejected: set data.extra_responses: [gold]")
    scores = policy.mean if length_normalize or loss_type == "ipo" else policy.sum
    gap = scores[:, 0] - scores[:, 1]
    z = beta * gap - (gamma if length_normalize else 0.0)
    if loss_type == "sigmoid":
        preference = (1 - label_smoothing) * neg_log_sigmoid(z) + label_smoothing * neg_log_sigmoid(-z)
    elif loss_type == "hinge":
        preference = torch.relu(1 - z)
    elif loss_type == "ipo":
        preference = (gap - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"tpo: loss_type must be 'sigmoid', 'hinge' or 'ipo', got {loss_type!r}")
    gold_nll = batch_token_mean_nll(policy, GOLD, state)
    rewards = beta * scores
    metrics = pairwise_metrics(rewards[:, 0], rewards[:, 1])
    metrics["nll/gold"] = -policy.mean[:, GOLD]
    return MethodOutput(preference + alpha * gold_nll, rewards, metrics)


def tpo_gold_pair_optimum(p: float, lengths: tuple[float, float], beta: float, alpha: float,
                          length_normalize: bool, gamma: float) -> float:
    """pi(y_0) at the optimum of TPO's expected loss on two responses where the gold is response 0 and
    the pair is labelled 0 > 1 with probability p (offline.md §9, written from the formula alone).

    With d = theta_0 - theta_1, u_k = log pi_k and a_k = u_k/|y_k| (TPO-L) or u_k (TPO, |y| = 1
    in e), e = a_0 - a_1, de/dd = pi_1/L_0 + pi_0/L_1, and the expected loss
        p l(beta e - g) + (1 - p) l(-beta e - g) - alpha u_0/|y_0|   (g = gamma for TPO-L, 0 for TPO)
    (one gold per row, so the batch token mean is -u_0/|y_0|) has derivative
        dE/dd = beta de/dd [-p sigmoid(g - beta e) + (1 - p) sigmoid(beta e + g)] - alpha pi_1/|y_0|,
    negative at pi_0 -> 0 and positive at pi_0 -> 1 for p < 1; Brent's method finds its root.
    """
    from scipy.optimize import brentq

    L0, L1 = lengths
    n0, n1 = (L0, L1) if length_normalize else (1.0, 1.0)
    g = gamma if length_normalize else 0.0

    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))

    def derivative(pi0: float) -> float:
        pi1 = 1 - pi0
        e = math.log(pi0) / n0 - math.log(pi1) / n1
        de = pi1 / n0 + pi0 / n1
        return beta * de * (-p * sigmoid(g - beta * e) + (1 - p) * sigmoid(beta * e + g)) - alpha * pi1 / L0

    return brentq(derivative, 1e-12, 1 - 1e-12, xtol=1e-15, rtol=1e-15)


@tabular_check("tpo")
def tpo_tabular_check(fn=tpo):
    """offline.md §9. (1) Optimum with the gold NLL: two responses, the gold is response 0, the pair
    is labelled 0 > 1 with probability p; lengths 3 and 7. The expected loss is minimised at the
    root of the derivative in `tpo_gold_pair_optimum`, for TPO (sums) and TPO-L (means, gamma).
    (2) The gold NLL is a token mean over the batch's gold tokens: d(mean_b L)/d lp(gold_b) =
    -alpha / sum_b |gold_b| for every example (gold lengths 2, 5, 9), not -alpha/(B |gold_b|).
    (3) alpha = 0 TPO-L is SimPO: its soft-label pair optimum beta (avg_0 - avg_1) is SimPO's closed form.
    (4) loss_type ipo regresses the length-averaged gap: with alpha = 0 its pair optimum is
    avg_0 - avg_1 = (2p - 1)/(2 beta), IPO's closed form on per-token log-probs (lengths 3 and 7)."""
    from preftune.tabular.bandit import DTYPE, Bandit
    from preftune.tabular.checks import PAIR_LENGTHS, PAIR_P, PAIR_REF, compare, compare_vectors, method_loss, \
        pair_logp_margin, pair_optimum
    from preftune.tabular.closed_forms import ipo_optimal_margin, margin_logistic_optimal_margin
    from preftune.tabular.expected import Dataset, optimise_policy

    p = PAIR_P
    gold_first = Dataset(prompt=torch.zeros(2, dtype=torch.long), responses=torch.tensor([[0, 1, 0], [1, 0, 0]]),
                         weight=torch.tensor([p, 1 - p], dtype=DTYPE))
    bandit = Bandit.create(PAIR_REF, PAIR_LENGTHS)
    results = []
    for normalise, beta, alpha, gamma in ((False, 0.5, 0.5, 0.0), (True, 2.0, 0.5, 0.5)):
        params = dict(beta=beta, alpha=alpha, length_normalize=normalise, gamma=gamma)
        optimum = optimise_policy(method_loss("tpo", fn, **params), bandit, gold_first)
        name = "TPO-L" if normalise else "TPO"
        results.append(compare("tpo", f"{name}, gold = y_0, p = {p}, |y| = {PAIR_LENGTHS}: optimum pi(y_0)",
                               tpo_gold_pair_optimum(p, PAIR_LENGTHS, beta, alpha, normalise, gamma),
                               float(optimum.probs[0, 0]), 1e-10))

    alpha, gold_lengths = 0.7, torch.tensor([2.0, 5.0, 9.0], dtype=DTYPE)
    sums = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -1.5, -6.0], [-0.5, -0.7, -8.0]], dtype=DTYPE,
                        requires_grad=True)
    lengths = torch.stack([torch.tensor([3.0, 4.0, 2.0], dtype=DTYPE), torch.tensor([1.0, 2.0, 6.0], dtype=DTYPE),
                           gold_lengths], -1)
    loss = fn(Logps(sum=sums, length=lengths), beta=0.1, alpha=alpha).loss.mean()
    grad, = torch.autograd.grad(loss, sums)
    results.append(compare_vectors("tpo", "d mean L/d lp(gold_b) = -alpha / sum_b |gold_b| (batch token mean)",
                                   torch.full((3,), -alpha / float(gold_lengths.sum()), dtype=DTYPE), grad[:, 2],
                                   1e-15, labels=[f"|gold|={int(n)}" for n in gold_lengths.tolist()]))

    beta, gamma = 2.0, 1.0
    bandit, optimum = pair_optimum(method_loss("tpo", lambda policy, **kw: fn(_with_unused_gold(policy), **kw),
                                               beta=beta, alpha=0.0, length_normalize=True, gamma=gamma))
    results.append(compare("tpo", f"alpha = 0 TPO-L = SimPO: soft-label optimum beta (avg_0 - avg_1), gamma = {gamma:g}",
                           margin_logistic_optimal_margin(p, gamma),
                           beta * pair_logp_margin(bandit, optimum.logp, normalise=True), 1e-9))

    beta = 0.5
    bandit, optimum = pair_optimum(method_loss("tpo", lambda policy, **kw: fn(_with_unused_gold(policy), **kw),
                                               beta=beta, alpha=0.0, loss_type="ipo"))
    results.append(compare("tpo", f"ipo, alpha = 0: optimum avg_0 - avg_1 = (2p-1)/(2 beta), |y| = {PAIR_LENGTHS}",
                           ipo_optimal_margin(p, beta), pair_logp_margin(bandit, optimum.logp, normalise=True), 1e-9))
    return results


def _with_unused_gold(policy: Logps) -> Logps:
    """A pair record with a third, constant response appended as the gold (alpha = 0 ignores it)."""
    return Logps(sum=torch.cat([policy.sum, policy.sum[:, :1].detach()], -1),
                 length=torch.cat([policy.length, policy.length[:, :1]], -1))
