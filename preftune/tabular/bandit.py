"""The finite response set: a few prompts, K responses each, a softmax policy and a fixed reference.

This is the "tabular bandit" of offline.md §0: the sequence log-probability of response k to
prompt x is log pi(k|x) = theta[x, k] - logsumexp(theta[x]), and every expectation over
prompts, responses and labels is a finite sum. Each response also has a length in tokens, so
that length-normalised methods (IPO with 1/|y|, SimPO, ORPO) see `Logps.mean != Logps.sum`.

A method function never sees the bandit: `Bandit.records` turns a policy into the same `Logps`
record the trainer builds from a forward pass, so the registered function runs unchanged.
Everything is float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from preftune.records import Logps

DTYPE = torch.float64


def as_float64(values) -> Tensor:
    """A float64 copy of `values` (tensor, array or nested sequence)."""
    return torch.as_tensor(values, dtype=DTYPE).clone()


@dataclass(frozen=True)
class Bandit:
    """X prompts with K responses each, a fixed reference policy and per-response lengths.

    ref_logp: (X, K) log pi_ref(k|x), normalised over k.
    lengths:  (X, K) number of response tokens |y| of each response (>= 1).
    """

    ref_logp: Tensor
    lengths: Tensor

    @staticmethod
    def create(ref_probs, lengths=None) -> "Bandit":
        """Build a bandit from reference probabilities, (K,) for one prompt or (X, K) for several.

        lengths defaults to 1 for every response, i.e. `mean == sum`.
        """
        probs = as_float64(ref_probs)
        if probs.dim() == 1:
            probs = probs.unsqueeze(0)
        if (probs <= 0).any():
            raise ValueError("reference probabilities must be positive (log pi_ref must be finite)")
        probs = probs / probs.sum(-1, keepdim=True)
        lengths = torch.ones_like(probs) if lengths is None else as_float64(lengths).reshape(probs.shape)
        if (lengths < 1).any():
            raise ValueError("response lengths must be at least one token")
        return Bandit(ref_logp=probs.log(), lengths=lengths)

    @property
    def num_prompts(self) -> int:
        return self.ref_logp.shape[0]

    @property
    def num_responses(self) -> int:
        return self.ref_logp.shape[1]

    @property
    def ref_probs(self) -> Tensor:
        return self.ref_logp.exp()

    def reference_logits(self) -> Tensor:
        """Logits that make the policy equal to the reference (the usual starting point)."""
        return self.ref_logp.clone()

    @staticmethod
    def log_policy(logits: Tensor) -> Tensor:
        """(X, K) log pi(k|x) of the softmax policy with the given logits."""
        return torch.log_softmax(logits, dim=-1)

    def log_ratios(self, logp: Tensor) -> Tensor:
        """(X, K) Delta_k = log pi(k|x) - log pi_ref(k|x), the implicit reward over beta."""
        return logp - self.ref_logp

    def records(self, logp: Tensor, prompt: Tensor, responses: Tensor) -> Logps:
        """The `Logps` a trainer would build for rows (prompt[m], responses[m, 0..R-1]).

        logp: (X, K) log-probabilities of a policy (or the reference); prompt: (M,) long;
        responses: (M, R) long. Returns sums (M, R) = logp[prompt, response] with their lengths.
        """
        rows = prompt.unsqueeze(-1).expand_as(responses)
        return Logps(sum=logp[rows, responses], length=self.lengths[rows, responses])

    def reference_records(self, prompt: Tensor, responses: Tensor) -> Logps:
        return self.records(self.ref_logp, prompt, responses)
