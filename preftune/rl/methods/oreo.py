"""OREO: Offline REasoning Optimization (Wang et al. 2024, arXiv 2412.16145; code jwhj/OREO, pcl_trainer.py)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from preftune.methods.registry import CheckResult, register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput
from preftune.rl.advantages import reverse_cumsum
from preftune.rl.methods.common import require_tokens, token_mean

LEVELS = ("token", "step")


def state_starts(mask: Tensor, step_ids: Tensor, level: str) -> Tensor:
    """(B, K, T) True where a state begins: every response token ("token"), or each step's first token."""
    if level == "token":
        return mask
    if level != "step":
        raise ValueError(f"oreo: level must be one of {LEVELS}, got {level!r}")
    previous = torch.cat([torch.full_like(step_ids[..., :1], -1), step_ids[..., :-1]], -1)
    before = torch.cat([torch.zeros_like(mask[..., :1]), mask[..., :-1]], -1)
    return mask & ((step_ids != previous) | ~before)


def next_state_value(acc: Tensor, starts: Tensor) -> Tensor:
    """(B, K, T) at each position, acc at the first state start strictly after it (0 when none is left)."""
    out = torch.zeros_like(acc)
    carry = torch.zeros_like(acc[..., 0])
    for t in reversed(range(acc.shape[-1])):
        out[..., t] = carry
        carry = torch.where(starts[..., t], acc[..., t], carry)
    return out


@register(
    name="oreo", seed="oreo", family="rl", input_kind="rollout", needs_reference=True, needs_token_logps=True,
    extras=("values", "outcome", "token_kl", "step_ids"), status="stable",
    paper="Wang et al. 2024, Offline Reinforcement Learning for LLM Multi-Step Reasoning, arXiv 2412.16145",
    taxonomy=taxonomy(["offline", "outcome-labels", "token-level", "step-level"], ["offline", "actor-critic"],
                      ["fixed-reference", "soft-bellman", "reverse-kl"], ["credit-assignment", "value-guided-search"]),
)
def oreo(policy: Logps, reference: Logps, *, values: Tensor, outcome: Tensor, token_kl: Tensor, step_ids: Tensor,
         beta: float = 0.03, kl_coef: float = 0.01, level: str = "token") -> MethodOutput:
    """Value and policy losses on the soft Bellman residual of a sparse terminal reward, plus a KL penalty.

    online.md §11 (official pcl_trainer.py, `dro_actor_loss`): with Delta_i = log pi(a_i|s_i) - log pi_ref(a_i|s_i)
    and acc_t = sum_{i >= t} Delta_i, for every state s_t of a response with outcome R,
        value loss  (policy frozen):  (V(s_t) + beta sg(acc_t) - R)^2,
        policy loss (value frozen):   (beta [acc_t - acc_next + sg(acc_next)] + sg(V(s_t)) - R)^2,
    acc_next being acc at the next state (t + 1 for tokens; the next step's start for steps), so the
    gradient reaches only the current action's log-probs; each averaged over the response's states, plus
    kl_coef times the token-averaged exact KL(pi || pi_ref) over the vocabulary (`unbiased_kl`).
    level "token": every token is an action; "step": a reasoning step (its tokens share a step id) is one
    action and V is read at step starts only. The two parts detach each other, so one backward pass gives
    each model its own gradient, as the official alternation on one batch does (its actor step uses the
    values from before the critic step). values: (B, 1, T) V(s_t) at each response token; outcome: (B,)
    R in {0, 1}; token_kl: (B, 1, T) exact per-token KL (differentiable); step_ids: (B, 1, T) step index of
    each token. Defaults (math recipe): beta 0.03, kl_coef 0.01.
    """
    require_tokens("oreo", policy=policy, reference=reference)
    mask = policy.mask
    delta = (policy.tokens - reference.tokens.detach()) * mask
    acc = reverse_cumsum(delta, mask)
    starts = state_starts(mask, step_ids, level)
    following = next_state_value(acc, starts)
    target = outcome.to(acc.dtype).reshape(-1, 1, 1)
    value_residual = values + beta * acc.detach() - target
    policy_residual = beta * (acc - following + following.detach()) + values.detach() - target
    value_part = token_mean(value_residual ** 2, starts)
    policy_part = token_mean(policy_residual ** 2, starts)
    kl = token_mean(token_kl, mask)
    first = starts & (starts.long().cumsum(-1) == 1)
    metrics = {"value_loss": value_part.detach(), "policy_loss": policy_part.detach(), "kl": kl.detach(),
               "value_first_state": (values.detach() * first).sum((1, 2)), "outcome": target.detach().reshape(-1)}
    return MethodOutput(value_part + policy_part + kl_coef * kl, beta * acc.detach()[..., 0], metrics)


@tabular_check("oreo")
def oreo_tabular_check(fn=oreo):
    """online.md §11 Test: a depth-2 binary token tree, pi_ref uniform, success table R = (1, 0, 0, 1), every
    trajectory in the data (weight 1/4), beta = 0.5, kl_coef 0, a tabular value per state. (1) At the
    soft-optimal pair (pi*, V*) of the closed-form solver (pi* ~ pi_ref e^{Q_soft/beta}) the loss and its
    gradients are zero, token- and step-level (one step = the whole response). (2) Gradient steps from
    (pi_ref, V = 0) converge to pi* and to V(s_0) = beta log E_{pi_ref} e^{R/beta}."""
    from preftune.rl.exact import F64, Tree, records

    tree, rewards, beta = Tree(), [1.0, 0.0, 0.0, 1.0], 0.5
    states, outcome = tree.state_index(), torch.tensor(rewards, dtype=F64)
    reference = records(tree.token_logps(tree.uniform_logits()))
    soft_values, soft_logits = tree.soft_values(tree.uniform_logits(), rewards, beta)
    token_ids = torch.arange(tree.depth).expand(len(tree.leaves), 1, tree.depth)

    def loss(logits, table, step_ids, level):
        tokens = tree.token_logps(logits)
        return fn(records(tokens), reference, values=table[states].unsqueeze(1), outcome=outcome,
                  token_kl=torch.zeros_like(tokens), step_ids=step_ids, beta=beta, kl_coef=0.0, level=level).loss.mean()

    results = []
    for level, step_ids in (("token", token_ids), ("step", torch.zeros_like(token_ids))):
        logits, table = soft_logits.clone().requires_grad_(True), soft_values.clone().requires_grad_(True)
        value = loss(logits, table, step_ids, level)
        grads = torch.autograd.grad(value, (logits, table))
        results.append(CheckResult("oreo", f"{level}-level: loss and gradients vanish at the soft-optimal (pi*, V*)",
                                   0.0, max(float(value.detach()), *(float(g.abs().max()) for g in grads)), 1e-12))
    logits, table = tree.uniform_logits(), torch.zeros(len(tree.prefixes), dtype=F64)
    for _ in range(150):
        logits, table = logits.detach().requires_grad_(True), table.detach().requires_grad_(True)
        grad_logits, grad_table = torch.autograd.grad(loss(logits, table, token_ids, "token"), (logits, table))
        logits, table = logits - 4.0 * grad_logits, table - 1.0 * grad_table
    optimum = torch.softmax(soft_logits, -1)
    results.append(CheckResult("oreo", "token-level gradient steps reach pi* (max |dp| over states)", 0.0,
                               float((torch.softmax(logits.detach(), -1) - optimum).abs().max()), 1e-6))
    expected = beta * math.log(sum(math.exp(r / beta) for r in rewards) / len(rewards))
    results.append(CheckResult("oreo", "V(s_0) reaches beta log E_pi_ref e^{R/beta}", expected, float(table[0].detach()), 1e-6))
    return results
