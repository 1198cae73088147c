"""RankDPO (Karthik et al. 2024, arXiv 2410.18013): listwise DPO with DCG weights (diffusion.md §5)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from preftune.diffusion.methods.common import FAMILY, diffusion_taxonomy, error_gap
from preftune.diffusion.records import Denoise
from preftune.methods.common import neg_log_sigmoid
from preftune.methods.registry import register, tabular_check
from preftune.records import MethodOutput

DISCOUNTS = ("ln", "log2")


def ranks(values: Tensor) -> Tensor:
    """(B, K) rank of each entry within its row, 1 = largest (ties broken by position)."""
    order = values.argsort(dim=-1, descending=True, stable=True)
    return order.argsort(dim=-1) + 1


def dcg_weights(scores: Tensor, implicit: Tensor, discount: str = "ln", rank_by: str = "model") -> Tensor:
    """(B, K, K) Delta-DCG_ij = |G_i - G_j| |1/D(tau(i)) - 1/D(tau(j))| (RankDPO Eq. 6), no gradient.

    G = 2^psi - 1 with psi the target scores; D(r) = log(1 + r) (natural log, or log2 with
    discount="log2"); tau ranks the samples by the current implicit rewards (rank_by="model", the
    LambdaLoss reading) or by the target scores (rank_by="labels"). Both choices are options because
    the paper's exact constants are not pinned down (diffusion.md §13.1).
    """
    if discount not in DISCOUNTS:
        raise ValueError(f"discount must be one of {DISCOUNTS}, got {discount!r}")
    if rank_by not in ("model", "labels"):
        raise ValueError(f"rank_by must be 'model' or 'labels', got {rank_by!r}")
    gain = torch.pow(2.0, scores.detach().to(implicit.dtype)) - 1
    tau = ranks(implicit.detach() if rank_by == "model" else scores.detach()).to(implicit.dtype)
    log = torch.log2 if discount == "log2" else torch.log
    inverse_discount = 1.0 / log(1 + tau)
    return (gain[:, :, None] - gain[:, None, :]).abs() * (inverse_discount[:, :, None] - inverse_discount[:, None, :]).abs()


@register(
    name="rankdpo", seed="rankdpo", family=FAMILY, input_kind="image-lists", needs_reference=True,
    status="stable", extras=("scores",),
    paper="Karthik et al. 2024, Scalable Ranked Preference Optimization for Text-to-Image Generation, "
          "arXiv 2410.18013",
    reconstructed="Eq. 5-7 constants (gain base, discount log, rank source, beta scale) are reconstructed "
                  "from the paper's structure (diffusion.md §13.1) and exposed as options",
    taxonomy=diffusion_taxonomy(["listwise", "ranked"], ["offline", "learning-to-rank"], ["fixed-reference", "reverse-kl"]),
)
def rankdpo(policy: Denoise, reference: Denoise, *, scores: Tensor, beta: float = 5000.0, discount: str = "ln",
            rank_by: str = "model") -> MethodOutput:
    """LambdaLoss on the Diffusion-DPO implicit reward of k ranked samples (same t and eps for all k).

    s_i = -(beta/2)(E_theta(x_i) - E_ref(x_i)) (Eq. 5, scaled so that k = 2 is Diffusion-DPO),
    L = sum over pairs with psi_i > psi_j of Delta-DCG_ij * -log sigmoid(s_i - s_j) (Eq. 7), with the
    stop-gradient DCG weights of `dcg_weights` (Eq. 6). Pairs with equal scores are skipped.
    scores: (B, K) target preference scores psi (higher is better). beta: ~5000 as DPO-SDXL.
    """
    implicit = -0.5 * beta * error_gap(policy, reference)
    psi = scores.to(implicit.dtype)
    weights = dcg_weights(psi, implicit, discount, rank_by)
    better = (psi[:, :, None] > psi[:, None, :]).to(implicit.dtype)
    pair_losses = neg_log_sigmoid(implicit[:, :, None] - implicit[:, None, :])
    loss = (better * weights * pair_losses).sum((1, 2))
    ordered = better * (implicit[:, :, None] > implicit[:, None, :]).to(implicit.dtype)
    accuracy = ordered.sum((1, 2)) / better.sum((1, 2)).clamp_min(1)
    return MethodOutput(loss, implicit, {"accuracy": accuracy.detach(),
                                         "top_correct": (implicit.argmax(-1) == psi.argmax(-1)).float()})


@tabular_check("rankdpo")
def rankdpo_check(fn=rankdpo):
    """diffusion.md §12.1-2: with k = 2 the loss is Diffusion-DPO times Delta-DCG_12 (value log 2 and
    gradient (beta/4) grad(E_w - E_l), both times the weight, at theta = ref); with k = 4 the loss at
    theta = ref is log 2 times the summed weights of the ordered pairs."""
    from preftune.diffusion.methods import checks

    results = []
    scores2 = torch.tensor([[0.9, 0.2], [0.6, 0.1], [0.3, 0.0], [1.0, 0.5], [0.7, 0.4], [0.5, 0.2]], dtype=checks.DTYPE)
    weight = (torch.pow(2.0, scores2[:, 0]) - torch.pow(2.0, scores2[:, 1])).abs() * abs(1 / math.log(2) - 1 / math.log(3))
    p = checks.problem()
    theta = p.theta()
    policy, reference = p.denoise(theta), p.reference()
    loss = checks.mean_loss(fn, policy, reference, scores=scores2, beta=5000.0)
    results.append(checks.close("rankdpo", "k = 2: loss at theta = ref is Delta-DCG_12 * log 2", (weight * checks.LOG2).mean().item(),
                                loss.item()))
    want = 5000.0 / 4 * checks.grad((weight * (policy.error[:, 0] - policy.error[:, 1])).mean(), theta)
    results.append(checks.gradient_identity("rankdpo", "k = 2: grad equals Delta-DCG_12 * Diffusion-DPO's grad",
                                            checks.grad(loss, theta), want))
    moved = p.theta(shift=0.2)
    from preftune.diffusion.methods.diffusion_dpo import diffusion_dpo

    moved_policy = p.denoise(moved)
    got = fn(moved_policy, reference, scores=scores2, beta=5000.0).loss
    dpo = diffusion_dpo(moved_policy, reference, beta=5000.0).loss * weight
    results.append(checks.close("rankdpo", "k = 2: loss equals Delta-DCG_12 * Diffusion-DPO away from ref", 0.0,
                                (got - dpo).abs().max(), checks.EXACT))
    p4 = checks.problem(samples=4, seed=5)
    g = torch.Generator().manual_seed(11)
    scores4 = torch.rand(6, 4, generator=g, dtype=checks.DTYPE)
    theta4 = p4.theta()
    policy4, reference4 = p4.denoise(theta4), p4.reference()
    loss4 = fn(policy4, reference4, scores=scores4, beta=5000.0).loss
    # At theta = ref every implicit reward is 0, so ranks break ties by position: tau = 1..k.
    inverse = 1 / torch.log(torch.arange(2, 6, dtype=checks.DTYPE))
    gain = torch.pow(2.0, scores4) - 1
    expected = []
    for b in range(6):
        total = sum(abs(gain[b, i] - gain[b, j]) * abs(inverse[i] - inverse[j])
                    for i in range(4) for j in range(4) if scores4[b, i] > scores4[b, j])
        expected.append(float(total) * checks.LOG2)
    results.append(checks.close("rankdpo", "k = 4: loss at theta = ref is log 2 * sum of ordered-pair weights", 0.0,
                                (loss4 - torch.tensor(expected, dtype=checks.DTYPE)).abs().max(), checks.EXACT))
    return results
