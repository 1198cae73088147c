"""DAPO: Direct Advantage Policy Optimization (Liu et al. 2024, Skywork, arXiv 2412.18279; not ByteDance's DAPO)."""
from __future__ import annotations

import torch
from torch import Tensor

from preftune.methods.registry import CheckResult, register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput

CENTRES = ("none", "advantage", "both")


@register(
    name="dapo_step", seed="dapo-step", family="rl", input_kind="rollout", needs_reference=True,
    extras=("advantages",), status="stable",
    paper="Liu et al. 2024, Improving Multi-Step Reasoning Abilities of Large Language Models with Direct Advantage "
          "Policy Optimization, arXiv 2412.18279",
    taxonomy=taxonomy(["offline", "step-level", "critic-labels"], ["offline", "actor-critic"],
                      ["reference-anchored", "quadratic"], ["credit-assignment"]),
    reconstructed="online.md §10 [R]: K, M, beta and the loss scaling are not pinned; the quadratic form "
                  "(log-ratio - A/beta)^2, beta = 0.2 and the centring options are our reconstruction",
)
def dapo_step(policy: Logps, reference: Logps, *, advantages: Tensor, beta: float = 0.2,
              centre: str = "advantage") -> MethodOutput:
    """Quadratic loss aligning each candidate step's log-ratio with its critic advantage over beta.

    online.md §10 Stage B: for a state s (a prompt and the steps so far) and K candidate next steps
    a_k ~ pi_ref(.|s), A(s, a_k) = V(s + a_k) - V(s) from a frozen step critic, and
        L(s) = (1/K) sum_k ( log pi(a_k|s)/pi_ref(a_k|s) - A(s, a_k)/beta )^2,
    whose target is pi = pi_ref e^{A/beta}/Z(s). The per-state normaliser log Z(s) is ignored.
    centre: "advantage" subtracts the mean advantage over the K candidates (E_{pi_ref} A = 0 in
    expectation; the spec's choice), "both" also centres the log-ratios, which removes log Z(s) exactly
    so that the minimiser over a full-support softmax is pi_ref e^{A/beta}/Z; "none" uses A as given.
    policy, reference: (B, K) step log-probs (K candidates per state); advantages: (B, K).
    Rewards in the output: beta * log-ratio of each candidate.
    """
    if centre not in CENTRES:
        raise ValueError(f"dapo_step: centre must be one of {CENTRES}, got {centre!r}")
    if advantages.shape != policy.sum.shape:
        raise ValueError(f"dapo_step: advantages {tuple(advantages.shape)} must match the (B, K) candidates "
                         f"{tuple(policy.sum.shape)}")
    log_ratio = policy.sum - reference.sum.detach()
    target = advantages.to(log_ratio.dtype) / beta
    if centre in ("advantage", "both"):
        target = target - target.mean(-1, keepdim=True)
    if centre == "both":
        log_ratio = log_ratio - log_ratio.mean(-1, keepdim=True)
    residual = log_ratio - target
    loss = (residual ** 2).mean(-1)
    ranks = torch.corrcoef(torch.stack([log_ratio.detach().flatten(), target.flatten()]))[0, 1] \
        if log_ratio.numel() > 1 else torch.tensor(float("nan"))
    metrics = {"residual_abs": residual.detach().abs().mean(-1), "advantage_abs": advantages.abs().mean(-1).float(),
               "log_ratio_target_correlation": ranks.detach()}
    return MethodOutput(loss, beta * log_ratio.detach(), metrics)


@tabular_check("dapo_step")
def dapo_step_tabular_check(fn=dapo_step):
    """online.md §10 Test on a 2-step MDP (3 steps at each of 2 states, binary success table
    ((1,0,0), (1,1,0), (0,0,0)), random pi_ref): (1) Monte-Carlo step values from 4000 completions per
    prefix lie within 4 standard errors of the exact V^{pi_ref}; (2) with exhaustive candidates and exact
    advantages, the minimiser of the loss with centre "both" over full-support softmax policies at every
    state is pi_ref e^{A/beta}/Z (beta = 0.5); (3) with the default centring, which ignores log Z(s), the
    minimiser satisfies its KKT condition (log-ratio - A/beta) proportional to pi exactly, and stays within
    max_s |log Z(s)| of pi_ref e^{A/beta}/Z; (4) one round (the minimiser as the new policy, beta = 0.2)
    does not lower the success probability."""
    from preftune.rl.exact import F64, Tree
    from preftune.rl.advantages import monte_carlo_value
    from preftune.tabular.expected import minimise

    tree, success = Tree(branching=3, depth=2), torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=F64)
    ref_logits = torch.randn(len(tree.prefixes), 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    log_ref = torch.log_softmax(ref_logits, -1)
    child_values = (log_ref[1:].exp() * success).sum(-1)            # V(s1 = a), nodes 1..3 are (0,), (1,), (2,)
    root_value = float((log_ref[0].exp() * child_values).sum())
    g = torch.Generator().manual_seed(7)
    worst = 0.0
    for a in range(3):
        draws = torch.multinomial(log_ref[1 + a].exp(), 4000, replacement=True, generator=g)
        estimate = monte_carlo_value(success[a, draws].tolist())
        exact = float(child_values[a])
        worst = max(worst, abs(estimate - exact) / max(1e-12, (exact * (1 - exact) / 4000) ** 0.5))
    results = [CheckResult("dapo_step", "Monte-Carlo step values (4000 completions) vs exact V^pi_ref, in standard "
                                        "errors", 4.0, worst, 0.0, bound="<=")]
    # Exact advantages: at the root A = V(a) - V(root); after step a, A = success(a, b) - V(a).
    advantages = torch.cat([(child_values - root_value).unsqueeze(0), success - child_values.unsqueeze(-1)])

    def minimiser(beta, centre):
        def objective(logits):
            log_pi = torch.log_softmax(logits, -1)
            policy, reference = Logps(sum=log_pi, length=torch.ones_like(log_pi)), \
                Logps(sum=log_ref, length=torch.ones_like(log_ref))
            return fn(policy, reference, advantages=advantages, beta=beta, centre=centre).loss.sum()
        return torch.log_softmax(minimise(objective, log_ref.clone()).x, -1)

    def target(beta):
        return torch.log_softmax(log_ref + advantages / beta, -1)

    def success_probability(log_pi):
        return float((log_pi[0].exp() * (log_pi[1:].exp() * success).sum(-1)).sum())

    results.append(CheckResult("dapo_step", "centre 'both': minimiser = pi_ref e^{A/beta}/Z at every state (max |dp|, "
                                            "beta = 0.5)", 0.0,
                               float((minimiser(0.5, "both").exp() - target(0.5).exp()).abs().max()), 1e-8))
    # Default centring ignores log Z(s): the minimiser satisfies the KKT condition
    # (log-ratio - centred A/beta) proportional to pi, where pi_ref e^{A/beta}/Z has it constant (-log Z).
    log_pi = minimiser(1.0, "advantage")
    gap = (log_pi - log_ref - (advantages - advantages.mean(-1, keepdim=True))) / log_pi.exp()
    results.append(CheckResult("dapo_step", "default centring: at the minimiser (log-ratio - A/beta) / pi is the same "
                                            "for every step of a state (beta = 1)", 0.0,
                               float((gap - gap.mean(-1, keepdim=True)).abs().max()), 1e-7))
    log_z = float(torch.logsumexp(log_ref + advantages - advantages.mean(-1, keepdim=True), -1).abs().max())
    results.append(CheckResult("dapo_step", f"default centring: minimiser within max_s |log Z(s)| = {log_z:.3f} of "
                                            "pi_ref e^{A/beta}/Z (max |dp|, beta = 1)", log_z,
                               float((log_pi.exp() - target(1.0).exp()).abs().max()), 0.0, bound="<="))
    results.append(CheckResult("dapo_step", f"one round (beta = 0.2) keeps the success probability >= pi_ref's "
                                            f"({root_value:.4f})", root_value,
                               success_probability(minimiser(0.2, "advantage")), 1e-12, bound=">="))
    return results
