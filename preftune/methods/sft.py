"""Supervised fine-tuning: token-mean negative log-likelihood of the target response."""
from __future__ import annotations

from preftune.methods.common import response_nll
from preftune.methods.registry import register, taxonomy
from preftune.records import Logps, MethodOutput


@register(
    name="sft", seed=None, family="baseline", input_kind="any", needs_reference=False, status="stable",
    paper="maximum likelihood on demonstrations (e.g. Ouyang et al. 2022, arXiv 2203.02155, step 1)",
    taxonomy=taxonomy(["pointwise"], ["offline"], ["reference-free"], ["likelihood"]),
    no_check_reason="maximum likelihood has no preference optimum to compare against; its minimiser "
                    "(all mass on the target) is covered by the unit tests",
)
def sft(policy: Logps) -> MethodOutput:
    """L = -(1/|y|) sum_t log pi(y_t | x, y_<t) on response 0 (the chosen, gold or demonstrated one).

    Combine it with a preference loss for RPO-style regularisation, e.g. `dpo + 0.2*sft`.
    """
    loss = response_nll(policy, 0)
    return MethodOutput(loss, policy.mean.detach(), {"nll": loss.detach()})
