"""MCTS-DPO: Monte Carlo Tree Search Boosts Reasoning via Iterative Preference Learning (Xie et al. 2024,
arXiv 2405.00451; code YuxiXie/MCTS-DPO)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from preftune.methods.registry import CheckResult, register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics
from preftune.rl.methods.common import require_tokens, response_positions
from preftune.rl.tree import conservative_epsilon


def suffix_log_ratios(policy: Logps, reference: Logps, diverge_at: Tensor) -> Tensor:
    """(B, 2) sum of log pi/pi_ref over each response's tokens from index `diverge_at` (B,) on."""
    keep = response_positions(policy.mask) >= diverge_at.reshape(-1, 1, 1).to(torch.long)
    delta = policy.tokens[:, :2] - reference.tokens[:, :2].detach()
    return torch.where(keep[:, :2], delta, torch.zeros_like(delta)).sum(-1)


@register(
    name="mcts_dpo", seed="mcts-dpo", family="rl", input_kind="rollout", needs_reference=True, needs_token_logps=True,
    extras=("visits", "diverge_at"), status="stable",
    paper="Xie et al. 2024, Monte Carlo Tree Search Boosts Reasoning via Iterative Preference Learning, arXiv 2405.00451",
    taxonomy=taxonomy(["online", "step-level", "tree-search-pairs"], ["iterative", "online"],
                      ["fixed-reference", "reverse-kl", "label-smoothing"], ["credit-assignment"]),
)
def mcts_dpo(policy: Logps, reference: Logps, *, visits: Tensor, diverge_at: Tensor, beta: float = 0.1,
             conservative: bool = True, ipo: bool = False) -> MethodOutput:
    """Step-level DPO on the diverging suffix of two sibling steps from MCTS, smoothed by visit counts.

    online.md §12 step 5: response 0 is the highest-Q child, response 1 the lowest-Q sibling (each
    extended through single-child chains); with z = [log pi/pi_ref](chosen suffix) - [log pi/pi_ref]
    (rejected suffix), the suffixes starting at the first differing token `diverge_at`,
        l = -(1 - eps) log sigmoid(beta z) - eps log sigmoid(-beta z),
    eps = min(1 - 1/(1 + N_r / max(1, N_c)), 1/2) from the children's visit counts (`conservative`;
    eps = 0 otherwise), or IPO's (z - 1/(2 beta))^2 with `ipo`. visits: (B, 2) visit counts (chosen,
    rejected); diverge_at: (B,) index of the first differing token of the two responses. Defaults
    (official): beta 0.1, conservative. With eps = 0 and diverge_at = 0 this is DPO.
    """
    require_tokens("mcts_dpo", policy=policy, reference=reference)
    ratios = suffix_log_ratios(policy, reference, diverge_at)
    z = ratios[:, 0] - ratios[:, 1]
    counts = visits.detach().to(torch.float64).cpu().tolist()
    eps = torch.tensor([conservative_epsilon(int(c), int(r)) if conservative else 0.0 for c, r in counts],
                       dtype=z.dtype, device=z.device)
    if ipo:
        loss = (z - 1.0 / (2.0 * beta)) ** 2
    else:
        loss = -(1.0 - eps) * F.logsigmoid(beta * z) - eps * F.logsigmoid(-beta * z)
    rewards = beta * ratios.detach()
    metrics = {**pairwise_metrics(rewards[:, 0], rewards[:, 1]), "label_smoothing": eps}
    return MethodOutput(loss, rewards, metrics)


@tabular_check("mcts_dpo")
def mcts_dpo_tabular_check(fn=mcts_dpo):
    """online.md §12 Tests. (i) Backup on a 2x2 tree, node values root 0, A .5 (A1 1, A2 0), B .2 (B1 .6, B2 .2),
    simulations A-A1, A-A2, B-B1: V(root) = 7/15, Q(A) = .5, Q(B) = .4, V(B) = .2 by hand. (ii) The pair
    taken at a node is two of its own children (siblings). (iii) The loss's gradient is exactly zero on
    tokens before `diverge_at` and non-zero after it. (iv) eps stays in [0, 1/2] for visit counts 0..20,
    and the minimiser of the loss over the suffix margin is cDPO's beta z* = log((1 - eps)/eps) (N = 2, 1)."""
    from preftune.rl.exact import F64, records
    from preftune.rl.tree import Node, backup, sibling_pair
    from preftune.tabular.closed_forms import smoothed_logistic_optimal_margin

    root = Node(0.0)
    a, b = root.add_child(0.5), root.add_child(0.2)
    a1, a2 = a.add_child(1.0, terminal=True), a.add_child(0.0, terminal=True)
    b.add_child(0.6), b.add_child(0.2)
    for leaf in (a1, a2, b.children[0]):
        backup(leaf.path())
    measured = torch.tensor([root.mean_value, a.q, b.q, b.mean_value], dtype=F64)
    expected = torch.tensor([7 / 15, 0.5, 0.4, 0.2], dtype=F64)
    results = [CheckResult("mcts_dpo", "backup on a 2x2 tree = hand values (V(root), Q(A), Q(B), V(B))", 0.0,
                           float((measured - expected).abs().max()), 1e-12)]
    pairs = [sibling_pair(node) for node in (root, a, b)]
    strangers = sum(c.parent is not node or r.parent is not node for node, (c, r) in zip((root, a, b), pairs))
    results.append(CheckResult("mcts_dpo", "pairs are siblings: pairs whose nodes have another parent", 0.0,
                               strangers, 0.0))

    g = torch.Generator().manual_seed(1)
    tokens = -torch.rand(3, 2, 5, generator=g, dtype=F64)
    reference = tokens + 0.3 * torch.randn(3, 2, 5, generator=g, dtype=F64)
    diverge = torch.tensor([0, 2, 4])
    leaf = tokens.clone().requires_grad_(True)
    out = fn(records(leaf), records(reference), visits=torch.tensor([[3, 1], [2, 2], [5, 0]]), diverge_at=diverge)
    (grad,) = torch.autograd.grad(out.loss.sum(), leaf)
    before = torch.arange(5).reshape(1, 1, 5) < diverge.reshape(-1, 1, 1)
    results.append(CheckResult("mcts_dpo", "gradient on tokens before diverge_at (largest |g|)", 0.0,
                               float(grad[before.expand_as(grad)].abs().max()), 0.0))
    results.append(CheckResult("mcts_dpo", "gradient on suffix tokens (smallest |g|)", 1e-6,
                               float(grad[~before.expand_as(grad)].abs().min()), 0.0, bound=">="))
    from preftune.rl.tree import conservative_epsilon

    epsilons = [conservative_epsilon(c, r) for c in range(21) for r in range(21)]
    results.append(CheckResult("mcts_dpo", "eps outside [0, 1/2] over visit counts 0..20 (largest excess)", 0.0,
                               max(max(0.0, -e, e - 0.5) for e in epsilons), 0.0))

    beta, visits = 0.1, torch.tensor([[2, 1]])

    def loss_at(z: float) -> Tensor:
        zt = torch.tensor([[[z], [0.0]]], dtype=F64, requires_grad=True)
        return fn(records(zt), records(torch.zeros_like(zt)), visits=visits, diverge_at=torch.tensor([0]),
                  beta=beta).loss.sum(), zt

    z = 0.0
    for _ in range(50):  # Newton on the scalar margin, derivatives by autograd
        value, zt = loss_at(z)
        (g1,) = torch.autograd.grad(value, zt, create_graph=True)
        (g2,) = torch.autograd.grad(g1[0, 0, 0], zt)
        if not float(g2[0, 0, 0]) > 1e-300:  # no curvature left: the loss has no finite minimiser
            z = math.inf
            break
        z -= float(g1[0, 0, 0].detach()) / float(g2[0, 0, 0])
    eps = conservative_epsilon(2, 1)
    results.append(CheckResult("mcts_dpo", f"minimiser beta z* = log((1 - eps)/eps), eps = {eps:.4f} (N_c = 2, N_r = 1)",
                               smoothed_logistic_optimal_margin(eps), beta * z, 1e-9))
    return results
