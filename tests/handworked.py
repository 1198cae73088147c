"""Scalar formulas and float64 records shared by the hand-worked method tests.

The hand-worked tests compute expected values with plain `math` from the spec's formulas and
compare them with the tensors a method returns; these are the pieces every such file needs.
"""
from __future__ import annotations

import math

import torch

from preftune.records import Logps

F64 = torch.float64


def ell(z: float) -> float:
    """offline.md §0: l(z) = -log sigmoid(z) = softplus(-z), written so it cannot overflow."""
    return max(-z, 0.0) + math.log1p(math.exp(-abs(z)))


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def pair(chosen, rejected, lengths=(1.0, 1.0), requires_grad: bool = False) -> Logps:
    """A float64 (B, 2) pairwise record; with requires_grad the sums are autograd leaves."""
    chosen = torch.as_tensor(chosen, dtype=F64).reshape(-1)
    rejected = torch.as_tensor(rejected, dtype=F64).reshape(-1)
    sums = torch.stack([chosen, rejected], dim=-1).requires_grad_(requires_grad)
    return Logps(sum=sums, length=torch.tensor(lengths, dtype=F64).expand_as(sums).clone())


def flat(logps: Logps) -> Logps:
    """A reference with log pi_ref = 0 everywhere, so Delta_y = lp(y)."""
    return Logps(sum=torch.zeros_like(logps.sum.detach()), length=logps.length)


def random_pairs(n: int, seed: int = 0, requires_grad: bool = False) -> tuple[Logps, Logps]:
    """n pairs with lengths 1..8, mean token log-probs in (-3, 0) and reference sums nearby."""
    g = torch.Generator().manual_seed(seed)
    length = torch.randint(1, 9, (n, 2), generator=g).to(F64)
    policy_sum = -3.0 * length * torch.rand(n, 2, generator=g, dtype=F64)
    reference_sum = policy_sum + torch.randn(n, 2, generator=g, dtype=F64)
    return (Logps(sum=policy_sum.requires_grad_(requires_grad), length=length),
            Logps(sum=reference_sum, length=length))


def call(name: str, policy: Logps, reference: Logps | None = None, **kwargs):
    """Call a registered method, passing the reference only if the registry says it takes one."""
    from preftune.methods import get

    spec = get(name)
    return spec.fn(*((policy, reference) if spec.needs_reference else (policy,)), **kwargs)


def assert_same_loss_and_gradient(got, want, got_leaf: Logps, want_leaf: Logps, atol: float = 1e-12) -> None:
    """A reduction holds for the values and for the gradients reaching the policy's log-probs:
    `got` and `want` are per-example losses computed from twin leaves `got_leaf` and `want_leaf`."""
    torch.testing.assert_close(got, want, rtol=0, atol=atol)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(got_leaf.sum.grad, want_leaf.sum.grad, rtol=0, atol=atol)
