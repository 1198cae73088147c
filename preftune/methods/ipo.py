"""IPO: Identity Preference Optimisation (Azar et al., AISTATS 2024, arXiv 2310.12036)."""
from __future__ import annotations

from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


@register(
    name="ipo", seed=None, family="offline-pairwise", input_kind="pairwise", needs_reference=True,
    status="stable", paper="Azar et al. 2024, A General Theoretical Paradigm to Understand Learning "
                           "from Human Preferences, arXiv 2310.12036",
    taxonomy=taxonomy(["pairwise"], ["offline"], ["fixed-reference", "squared-loss"]),
)
def ipo(policy: Logps, reference: Logps, *, beta: float = 0.1, length_normalize: bool = True) -> MethodOutput:
    """Squared regression of the log-ratio margin onto 1/(2 tau): L = (Delta - 1/(2 beta))^2.

    beta is the paper's tau; Delta is NOT multiplied by it. With preference probability p the
    expected-loss minimiser is Delta* = (2p - 1)/(2 tau) (offline.md §1).
    length_normalize: use per-token log-ratios Delta_w/|y_w| - Delta_l/|y_l|, as trl and the
    IPO authors' runs do (default True); False uses sequence sums as in the paper's equation.
    """
    ratios = policy.sum - reference.sum
    if length_normalize:
        ratios = ratios / policy.length.clamp_min(1.0)
    margin = ratios[:, 0] - ratios[:, 1]
    loss = (margin - 1 / (2 * beta)) ** 2
    rewards = beta * ratios
    return MethodOutput(loss, rewards, pairwise_metrics(rewards[:, 0], rewards[:, 1]))


@tabular_check("ipo")
def ipo_tabular_check(fn=ipo):
    """offline.md §1 Test: for a pair with preference probability p the expected-loss minimiser is
    Delta* = (2p-1)/(2 tau), measured on per-token log-ratios when length_normalize (lengths 3 and 7,
    so a missing 1/|y| shows) and on summed ones otherwise."""
    from preftune.tabular.checks import PAIR_LENGTHS, PAIR_P, compare, method_loss, pair_log_ratio_margin, \
        pair_optimum
    from preftune.tabular.closed_forms import ipo_optimal_margin

    tau = 0.1
    results = []
    for normalise in (True, False):
        bandit, optimum = pair_optimum(method_loss("ipo", fn, beta=tau, length_normalize=normalise))
        kind = "per-token" if normalise else "summed"
        results.append(compare("ipo", f"pair optimum Delta* = (2p-1)/(2 tau), {kind} log-ratios, p = {PAIR_P}, "
                                      f"|y| = {PAIR_LENGTHS}", ipo_optimal_margin(PAIR_P, tau),
                               pair_log_ratio_margin(bandit, optimum.logp, normalise), 1e-9))
    return results
