"""WPO: weighted preference optimisation (Zhou et al., EMNLP 2024, arXiv 2406.11827).

Registered as its own method, weighted DPO, which is the paper's main objective and what the
authors' code trains. The weight itself is the public function `wpo_weights`, so a method file
that wants a weighted variant of another pairwise loss multiplies it in with one line. It is
deliberately not a generic objective-level switch: reweighting pairs moves a loss's population
optimum whenever the preferences are not Bradley-Terry, so each weighted loss needs its own
tabular check, which a registered method carries and a switch would not.
"""
from __future__ import annotations

import torch
from torch import Tensor

from preftune.methods.cdpo import cdpo
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput


def wpo_weights(policy: Logps) -> Tensor:
    """(B,) detached pair weight w(x, y_w) w(x, y_l), w(x, y) = exp(mean token log pi(y|x)).

    The length-normalised probability of each response under the current policy: the geometric
    mean of its token probabilities, so long responses are not crushed towards 0. Both factors are
    at most 1, so the product needs no clipping. Detached: the weight says how much a pair counts,
    it is not optimised. Any pairwise loss can be reweighted with it: `wpo_weights(policy) * loss`.
    """
    return (policy.chosen_mean + policy.rejected_mean).detach().exp()


@register(
    name="wpo", seed=None, family="offline-pairwise", input_kind="pairwise", needs_reference=True,
    status="stable", paper="Zhou et al. 2024, WPO: Enhancing RLHF with Weighted Preference Optimization, "
                           "arXiv 2406.11827",
    reconstructed="weights use the plain length-normalised probability exp(mean log pi(y)); the paper's "
                  "default 'sampled alignment' also divides each token probability by sum_v pi(v|s_t)^2, which "
                  "needs the full next-token distribution that the Logps record does not carry",
    taxonomy=taxonomy(["pairwise", "off-policy-reweighting"], ["offline"], ["fixed-reference", "reverse-kl"]),
)
def wpo(policy: Logps, reference: Logps, *, beta: float = 0.01, label_smoothing: float = 0.0) -> MethodOutput:
    """DPO with each pair weighted by the policy's probability of its two responses (off-policy data made on-policy-like).

    The paper's weighted objective (§3): L = w(x, y_w) w(x, y_l) * [(1-e) l(h) + e l(-h)],
    h = beta (Delta_w - Delta_l), l(z) = -log sigmoid(z), with the detached weights of `wpo_weights`,
    i.e. the length-normalised form of the paper's weight (see `reconstructed` for the alignment
    step left out). A weighting of the DPO loss rather than a new loss: a pair the current policy
    finds likely counts more than one it would never produce.
    beta: 0.01, the authors' configs (Mistral-base, Llama-3-Instruct); label_smoothing (e): 0, as
    cDPO. Metrics: weight besides margin/accuracy. Shapes: (B, 2) in, (B,) loss.
    """
    unweighted = cdpo(policy, reference, beta=beta, label_smoothing=label_smoothing)  # DPO when e = 0
    weight = wpo_weights(policy)
    return MethodOutput(weight * unweighted.loss, unweighted.rewards, {**unweighted.metrics, "weight": weight})


@tabular_check("wpo")
def wpo_tabular_check(fn=wpo):
    """On the standard four-response bandit (Bradley-Terry labels, pairs from the reference, lengths 3, 1, 4, 2):

    1. Reweighting only: both orders of a pair get the same weight, so DPO's population optimum
       pi* ~ pi_ref exp(r/beta) is still stationary: the expected WPO gradient there is exactly zero.
       It is not if the weight were differentiated (it must be detached).
    2. Weighting: at a random policy the exact expected gradient equals the closed form
       sum over rows (i > j, weight m) of m w_i w_j beta sigmoid(-h) (-1 on y_i, +1 on y_j),
       w_y = pi(y)^(1/|y|), so a weight missing its 1/|y| shows.
    """
    from preftune.tabular.bandit import Bandit
    from preftune.tabular.checks import (DEFAULT_LENGTHS, DEFAULT_REF, DEFAULT_REWARDS, compare, compare_vectors,
                                         method_loss)
    from preftune.tabular.closed_forms import dpo_optimal_policy
    from preftune.tabular.expected import pairwise_dataset, reference_pair_sampling
    from preftune.tabular.pair_checks import expected_loss_gradient
    from preftune.tabular.preferences import PreferenceModel

    beta = 0.5
    bandit = Bandit.create(DEFAULT_REF, DEFAULT_LENGTHS)
    data = pairwise_dataset(PreferenceModel.bradley_terry(DEFAULT_REWARDS), reference_pair_sampling(bandit))
    loss = method_loss("wpo", fn, beta=beta)
    optimum = dpo_optimal_policy(DEFAULT_REF, DEFAULT_REWARDS, beta).log().unsqueeze(0)
    _, grad = expected_loss_gradient(loss, bandit, data, optimum)
    results = [compare("wpo", "zero expected gradient at DPO's BT optimum pi ~ pi_ref exp(r/beta) (largest |dE/dDelta|)",
                       0.0, float(grad.abs().max()), 1e-15)]

    logp = torch.log_softmax(torch.randn(1, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64), -1)
    _, grad = expected_loss_gradient(loss, bandit, data, logp)
    delta, lengths = bandit.log_ratios(logp)[0], bandit.lengths[0]
    expected = torch.zeros(4, dtype=torch.float64)
    for (i, j), m in zip(data.responses.tolist(), data.weight.tolist()):
        pull = m * torch.exp(logp[0, i] / lengths[i] + logp[0, j] / lengths[j]) * beta * \
            torch.sigmoid(-beta * (delta[i] - delta[j]))
        expected[i] -= pull
        expected[j] += pull
    results.append(compare_vectors("wpo", "expected gradient = sum m w_i w_j beta sigmoid(-h) (-1, +1) at a random policy",
                                   expected, grad[0], 1e-14, labels=[f"y{k}" for k in range(4)]))
    return results
