"""The entropy bonus of actor-critic methods (Mnih et al. 2016, arXiv 1602.01783; PPO's c2 term, arXiv 1707.06347)."""
from __future__ import annotations

from torch import Tensor

from preftune.methods.registry import register, taxonomy
from preftune.records import Logps, MethodOutput
from preftune.rl.methods.common import token_mean


@register(
    name="entropy_bonus", seed=None, family="rl", input_kind="rollout", needs_reference=False, needs_token_logps=True,
    extras=("entropy",), status="stable",
    paper="Mnih et al. 2016, Asynchronous Methods for Deep Reinforcement Learning, arXiv 1602.01783; Schulman et al. "
          "2017, arXiv 1707.06347 (the c2 entropy term)",
    taxonomy=taxonomy(["online", "on-policy-rollouts"], ["policy-gradient"], ["entropy-bonus"], []),
    no_check_reason="a sign-flipped average of the entropies it is given: its value and gradient tests pin it; "
                    "there is no optimum to compare with a closed form",
)
def entropy_bonus(policy: Logps, *, entropy: Tensor) -> MethodOutput:
    """-(1/H) sum_t H(pi(.|s_t)): add it with a weight to any rollout loss, e.g. `ppo + 0.01*entropy_bonus`.

    entropy: (B, 1, T) the policy's exact entropy over the vocabulary at each response token (with
    gradient), which the `preftune rl` loop computes from the logits when an objective asks for it.
    Minimising the term raises the entropy. Rewards in the output: the (B, 1) mean entropies.
    """
    mean = token_mean(entropy, policy.mask)
    return MethodOutput(-mean, mean.detach().reshape(-1, 1), {"entropy": mean.detach()})
