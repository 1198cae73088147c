"""IPO: Identity Preference Optimisation (Azar et al., AISTATS 2024, arXiv 2310.12036)."""
from __future__ import annotations

from preftune.methods.registry import register, taxonomy
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
