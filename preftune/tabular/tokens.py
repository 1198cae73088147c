"""A toy token-level LM with exactly computable sequence probabilities (offline.md §0, "Toy token LM").

Vocabulary {0, ..., V-1} where token 0 is end-of-sequence (EOS). The policy is a table of
logits per position, theta[t, v] for t < T (T = max_length): the model emits token y_t with
probability softmax(theta[t])[y_t] regardless of the prefix, and stops at EOS or after T
tokens. A response is its tuple of content tokens (ids 1..V-1), of length 0..T; its response
tokens are the content followed by EOS when it stops early, as in a chat-formatted completion.
So sum over all (V-1)^0 + ... + (V-1)^T responses of pi(y) is exactly 1, and the per-token
log-probs are the `Logps.tokens` a token-level method (TGDPO, LD-DPO, r->Q*) would see.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from preftune.records import Logps
from preftune.tabular.bandit import DTYPE, Bandit

Response = tuple[int, ...]
EOS = 0


@dataclass(frozen=True)
class TokenLM:
    """Structure of the toy LM: vocabulary size (EOS included) and maximum response length."""

    vocab_size: int = 5
    max_length: int = 4

    def all_responses(self) -> list[Response]:
        """Every response, shortest first: content tuples over tokens 1..V-1 of length 0..T."""
        content = range(1, self.vocab_size)
        return [y for n in range(self.max_length + 1) for y in itertools.product(content, repeat=n)]

    def random_tables(self, generator: torch.Generator | None = None, scale: float = 1.0) -> Tensor:
        """(T, V) logits with N(0, scale^2) entries."""
        return scale * torch.randn(self.max_length, self.vocab_size, generator=generator, dtype=DTYPE)

    def token_ids(self, responses: list[Response]) -> tuple[Tensor, Tensor]:
        """(N, T) token ids (content, then EOS if it stops early; padded with EOS) and the (N, T) response mask."""
        ids = torch.full((len(responses), self.max_length), EOS, dtype=torch.long)
        mask = torch.zeros(len(responses), self.max_length, dtype=torch.bool)
        for n, y in enumerate(responses):
            if len(y) > self.max_length or any(not 0 < v < self.vocab_size for v in y):
                raise ValueError(f"{y} is not a response of this LM (content tokens 1..{self.vocab_size - 1}, "
                                 f"at most {self.max_length} of them)")
            ids[n, :len(y)] = torch.as_tensor(y, dtype=torch.long)
            mask[n, :min(len(y) + 1, self.max_length)] = True
        return ids, mask

    def token_logps(self, tables: Tensor, responses: list[Response]) -> tuple[Tensor, Tensor]:
        """(N, T) log pi(y_t | position t) on response tokens (0 elsewhere) and the response mask."""
        ids, mask = self.token_ids(responses)
        log_probs = torch.log_softmax(tables, dim=-1)  # (T, V)
        per_token = log_probs[torch.arange(self.max_length), ids]  # (N, T): position t picks row t
        return per_token * mask, mask

    def sequence_logp(self, tables: Tensor, responses: list[Response]) -> Tensor:
        """(N,) log pi(y) = sum of the response-token log-probs."""
        return self.token_logps(tables, responses)[0].sum(-1)

    def records(self, tables: Tensor, rows: list[list[Response]]) -> Logps:
        """`Logps` with per-token values for B rows of K responses each (e.g. [[y_w, y_l], ...])."""
        K = len(rows[0])
        per_token, mask = self.token_logps(tables, [y for row in rows for y in row])
        shape = (len(rows), K, self.max_length)
        return Logps.from_tokens(per_token.reshape(shape), mask.reshape(shape))

    def as_bandit(self, ref_tables: Tensor, responses: list[Response]) -> Bandit:
        """The bandit over a subset of responses: the reference renormalised to them, lengths in tokens."""
        per_token, mask = self.token_logps(ref_tables, responses)
        return Bandit.create(per_token.sum(-1).exp(), mask.sum(-1))


def repeat_response_tokens(logps: Logps, response: int, times: int = 2) -> Logps:
    """A record in which one response's per-token log-probs are repeated `times` times (SimPO test 1:
    the sum scales by `times` and the token-mean is unchanged). The other responses are padded."""
    if logps.tokens is None:
        raise ValueError("repeating tokens needs a record with per-token log-probs")
    tokens = torch.cat([logps.tokens] * times, dim=-1)
    mask = torch.cat([logps.mask] + [torch.zeros_like(logps.mask)] * (times - 1), dim=-1)
    mask[:, response] = torch.cat([logps.mask[:, response]] * times, dim=-1)
    return Logps.from_tokens(tokens, mask)
