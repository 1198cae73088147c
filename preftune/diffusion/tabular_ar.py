"""A tabular autoregressive model over short sequences, for DDO's exact fixed point (diffusion.md §7, §12.3).

Sequences of `length` tokens over `vocab` symbols (3 x 3 = 27 outcomes by default) have
p(x) = prod_i softmax(logits_i[prefix])[x_i], with one logit row per prefix. Every expectation is
an exact sum over the outcomes, so a loss is minimised with no sampling noise, and the exact
sequence log-ratio log p_theta/p_ref needs no Jensen step (DDO's autoregressive instantiation).
"""
from __future__ import annotations

import itertools

import torch
from torch import Tensor

DTYPE = torch.float64


class TabularAR:
    def __init__(self, vocab: int = 3, length: int = 3):
        self.vocab, self.length = vocab, length
        self.outcomes = torch.tensor(list(itertools.product(range(vocab), repeat=length)))  # (N, L)
        # The prefix index of position i for each outcome: an integer in 0..vocab^i - 1.
        self.prefix = torch.zeros(len(self.outcomes), length, dtype=torch.long)
        for i in range(1, length):
            self.prefix[:, i] = self.prefix[:, i - 1] * vocab + self.outcomes[:, i - 1]

    def init_logits(self, generator: torch.Generator | None = None, scale: float = 1.0) -> list[Tensor]:
        """One (vocab^i, vocab) logit table per position."""
        return [scale * torch.randn(self.vocab ** i, self.vocab, generator=generator, dtype=DTYPE)
                for i in range(self.length)]

    def log_probs(self, logits: list[Tensor]) -> Tensor:
        """(N,) exact log p(x) of every outcome."""
        total = torch.zeros(len(self.outcomes), dtype=DTYPE)
        for i, table in enumerate(logits):
            log_softmax = torch.log_softmax(table, dim=-1)
            total = total + log_softmax[self.prefix[:, i], self.outcomes[:, i]]
        return total


def total_variation(p: Tensor, q: Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


def minimise(loss_of_logits, logits: list[Tensor], grad_tol: float = 1e-6) -> list[Tensor]:
    """Minimise a loss of the logit tables from `logits` with L-BFGS (scipy), gradients by autograd.

    The exact expected loss is smooth and deterministic, so a quasi-Newton method reaches the fixed
    point to near machine precision in a couple of hundred evaluations, without Hessians.
    """
    import numpy as np
    from scipy.optimize import minimize

    sizes = [t.numel() for t in logits]

    def unpack(flat: Tensor) -> list[Tensor]:
        return [part.reshape(t.shape) for part, t in zip(flat.split(sizes), logits)]

    def value_and_grad(x: np.ndarray):
        flat = torch.from_numpy(x).requires_grad_(True)
        value = loss_of_logits(unpack(flat))
        grad, = torch.autograd.grad(value, flat)
        return float(value.detach()), grad.numpy()

    start = torch.cat([t.flatten() for t in logits]).numpy()
    found = minimize(value_and_grad, start, jac=True, method="L-BFGS-B",
                     options={"gtol": grad_tol, "ftol": 1e-16, "maxiter": 2000})
    return unpack(torch.from_numpy(found.x))
