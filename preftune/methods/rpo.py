"""RPO: iterative reasoning preference optimisation, DPO plus NLL (Pang et al., NeurIPS 2024, arXiv 2404.19733)."""
from __future__ import annotations

from preftune.methods.common import response_nll
from preftune.methods.dpo import dpo
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput


@register(
    name="rpo", seed=None, family="offline-pairwise", input_kind="pairwise", needs_reference=True,
    status="stable", paper="Pang et al. 2024, Iterative Reasoning Preference Optimization, arXiv 2404.19733",
    taxonomy=taxonomy(["pairwise"], ["offline", "iterative"], ["fixed-reference", "reverse-kl", "sft-regularised"],
                      ["likelihood"]),
)
def rpo(policy: Logps, reference: Logps, *, beta: float = 0.1, alpha: float = 1.0) -> MethodOutput:
    """DPO plus the length-normalised NLL of the chosen response: L = l(h) + alpha * NLL(y_w) / |y_w|.

    The paper's DPO+NLL loss (§2): the NLL term is -log M(c_w, y_w | x) / (|c_w| + |y_w|), the
    log-likelihood of the winning chain of thought and answer divided by its total length, i.e. the
    token-mean NLL of the chosen response, which is exactly the `sft` term; so
    rpo(beta, alpha) == build_objective({"dpo": {"beta": beta}, "sft": {"weight": alpha}}).
    h = beta (Delta_w - Delta_l) on summed log-ratios, as DPO. alpha: 1 (the paper); beta: 0.1.
    The iterative part (new pairs sampled from the last model, which becomes the reference) is a
    schedule around this loss. Metrics: DPO's plus nll. Shapes: (B, 2) in, (B,) loss.
    """
    preference = dpo(policy, reference, beta=beta)
    nll = response_nll(policy, 0)
    return MethodOutput(preference.loss + alpha * nll, preference.rewards, {**preference.metrics, "nll": nll})


@tabular_check("rpo")
def rpo_tabular_check(fn=rpo):
    """On one pair labelled 0 > 1 with probability p (lengths 3 and 7, so the 1/|y_w| matters) the expected
    loss has a single stationary point, the root of its derivative written from the paper's loss
    (pair_checks.rpo_optimal_pair_policy); alpha = 0 is DPO's logit(p)."""
    from preftune.tabular.checks import PAIR_LENGTHS, PAIR_P, PAIR_REF, compare, method_loss, pair_optimum
    from preftune.tabular.pair_checks import rpo_optimal_pair_policy

    beta = 0.5
    results = []
    for alpha in (1.0, 0.0):
        _, optimum = pair_optimum(method_loss("rpo", fn, beta=beta, alpha=alpha))
        results.append(compare("rpo", f"pair optimum pi(y_0), alpha = {alpha:g}, beta = {beta}, p = {PAIR_P}, "
                                      f"|y| = {PAIR_LENGTHS}",
                               rpo_optimal_pair_policy(PAIR_P, beta, alpha, PAIR_REF, PAIR_LENGTHS),
                               float(optimum.probs[0, 0]), 1e-10))
    return results
