"""The values that flow between the model code and the method functions.

A method never sees a model or a batch of token ids: it sees `Logps`, the log-probabilities
of K responses per example under one model, and returns a `MethodOutput`. The same method
functions therefore run on a language model (logps.py builds the records from a forward pass)
and in the exact tabular engine (tabular/ builds them from a softmax over a finite set).

Response order is part of the contract: for pairwise data response 0 is the chosen one and
response 1 the rejected one; for pointwise data K = 1 (KTO adds a mismatched completion as
response 1 for its KL estimate); for listwise data the K responses come with `scores`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class Logps:
    """Log-probabilities of K responses per example under one model.

    sum:    (B, K) sum of response-token log-probs (prompt and padding masked).
    length: (B, K) number of response tokens, as a float tensor.
    tokens: (B, K, T) per-token log-probs, 0 where `mask` is False; only present when a method
            in the objective asked for token-level log-probs.
    mask:   (B, K, T) bool, True on response tokens; present together with `tokens`.
    """

    sum: Tensor
    length: Tensor
    tokens: Tensor | None = None
    mask: Tensor | None = None

    @property
    def mean(self) -> Tensor:
        """(B, K) length-normalised log-prob: log-prob per response token."""
        return self.sum / self.length.clamp_min(1.0)

    # Pairwise conveniences: response 0 is chosen, response 1 is rejected.
    @property
    def chosen(self) -> Tensor:
        return self.sum[:, 0]

    @property
    def rejected(self) -> Tensor:
        return self.sum[:, 1]

    @property
    def chosen_mean(self) -> Tensor:
        return self.mean[:, 0]

    @property
    def rejected_mean(self) -> Tensor:
        return self.mean[:, 1]

    @property
    def num_responses(self) -> int:
        return self.sum.shape[1]

    def detach(self) -> "Logps":
        return Logps(
            sum=self.sum.detach(),
            length=self.length,
            tokens=None if self.tokens is None else self.tokens.detach(),
            mask=self.mask,
        )

    def select(self, index: Tensor | list[int] | slice) -> "Logps":
        """Keep a subset of the examples (rows)."""
        return Logps(
            sum=self.sum[index],
            length=self.length[index],
            tokens=None if self.tokens is None else self.tokens[index],
            mask=None if self.mask is None else self.mask[index],
        )

    def responses(self, index: list[int] | slice) -> "Logps":
        """Keep a subset of the responses (columns), e.g. `responses([0, 1])`."""
        return Logps(
            sum=self.sum[:, index],
            length=self.length[:, index],
            tokens=None if self.tokens is None else self.tokens[:, index],
            mask=None if self.mask is None else self.mask[:, index],
        )

    def with_tokens(self, tokens: Tensor, mask: Tensor) -> "Logps":
        """A record whose sums are recomputed from (possibly re-weighted) per-token values."""
        tokens = torch.where(mask, tokens, torch.zeros((), dtype=tokens.dtype, device=tokens.device))
        return replace(self, tokens=tokens, sum=tokens.sum(-1))

    @staticmethod
    def from_tokens(tokens: Tensor, mask: Tensor) -> "Logps":
        """Build a record from (B, K, T) per-token log-probs and their response mask."""
        mask = mask.bool()
        # where(), not multiplication: a -inf at a padded position must not turn the sum into nan.
        tokens = torch.where(mask, tokens, torch.zeros((), dtype=tokens.dtype, device=tokens.device))
        return Logps(sum=tokens.sum(-1), length=mask.sum(-1).to(tokens.dtype), tokens=tokens, mask=mask)

    @staticmethod
    def pair(chosen: Tensor, rejected: Tensor, chosen_length: Tensor | float = 1.0,
             rejected_length: Tensor | float = 1.0) -> "Logps":
        """Build a pairwise record from (B,) sums; handy in tests and in the tabular engine."""
        dtype = chosen.dtype if isinstance(chosen, Tensor) and chosen.is_floating_point() else torch.get_default_dtype()
        chosen = torch.as_tensor(chosen, dtype=dtype)
        rejected = torch.as_tensor(rejected, dtype=dtype)
        length = torch.stack([torch.as_tensor(chosen_length, dtype=chosen.dtype).expand_as(chosen),
                              torch.as_tensor(rejected_length, dtype=chosen.dtype).expand_as(rejected)], dim=-1)
        return Logps(sum=torch.stack([chosen, rejected], dim=-1), length=length)


@dataclass
class MethodOutput:
    """What a method function returns.

    loss:    (B,) per-example loss, unreduced: the trainer averages (or a method's own
             reduction says otherwise in its docstring).
    rewards: (B, K) detached implicit rewards of each response (e.g. beta * log pi/pi_ref).
    metrics: name -> (B,) or scalar tensor, detached; the trainer averages and logs them.
    """

    loss: Tensor
    rewards: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rewards = self.rewards.detach()
        self.metrics = {k: v.detach() for k, v in self.metrics.items()}


def pairwise_metrics(chosen_reward: Tensor, rejected_reward: Tensor) -> dict[str, Tensor]:
    """The metrics every pairwise method logs (offline.md §0, requirement 3)."""
    margin = (chosen_reward - rejected_reward).detach()
    return {"margin": margin, "accuracy": (margin > 0).float()}


# What the responses of a row are called in metric names (logps/chosen, rewards/rejected, ...).
RESPONSE_NAMES = {"pairwise": ["chosen", "rejected"], "pointwise": ["completion", "mismatched"],
                  "sft": ["target"]}


def response_names(kind: str, k: int) -> list[str]:
    """The names of the k responses of a row of data kind `kind` (response_<i> when it has none)."""
    return RESPONSE_NAMES.get(kind, [])[:k] or [f"response_{i}" for i in range(k)]
