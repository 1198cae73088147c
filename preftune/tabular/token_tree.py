"""A toy autoregressive LM with one logit vector per prefix, and its soft Bellman values.

`tokens.TokenLM` ties the logits to the position, so it can only represent distributions that
factorise over positions. `TokenTree` keeps the same responses and conventions (vocabulary
{0 = EOS, 1..V-1}, at most T content tokens, EOS emitted after a response that stops early, none
after one of full length) but gives every prefix s of fewer than T tokens its own logits
theta[s], so that pi(a | s) = softmax(theta[s])[a] and *every* distribution over the responses
is an autoregressive policy of the tree. This is the token MDP of "From r to Q*" (Rafailov et
al. 2024; offline.md §14): state s_t = the prefix, action a_t = the next token, deterministic
transitions, and a sequence-level reward r(y) paid when the response ends.

For a reference policy pi_ref and a reward r the KL-regularised optimum is
pi*(y) = pi_ref(y) exp(r(y)/beta) / Z, and its soft Bellman values are

    V*(y) = r(y) for a response of full length (it must stop),
    Q*(s, EOS) = r(s),  Q*(s, a) = V*(s a),  V*(s) = beta log sum_a pi_ref(a|s) exp(Q*(s, a)/beta),

with V*(root) = beta log Z; the paper's Theorem: beta log pi*(a|s)/pi_ref(a|s) = Q*(s,a) - V*(s).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from preftune.records import Logps
from preftune.tabular.bandit import DTYPE
from preftune.tabular.tokens import EOS, Response, TokenLM


@dataclass(frozen=True)
class TokenTree:
    """The prefix tree of a TokenLM: `prefixes[i]` is node i (every prefix of fewer than T tokens)."""

    lm: TokenLM = field(default_factory=TokenLM)

    @property
    def responses(self) -> list[Response]:
        return self.lm.all_responses()

    @property
    def prefixes(self) -> list[Response]:
        return [y for y in self.responses if len(y) < self.lm.max_length]

    @property
    def node_of(self) -> dict[Response, int]:
        return {prefix: i for i, prefix in enumerate(self.prefixes)}

    def random_logits(self, generator: torch.Generator | None = None, scale: float = 1.0) -> Tensor:
        """(P, V) logits, one row per prefix, N(0, scale^2)."""
        return scale * torch.randn(len(self.prefixes), self.lm.vocab_size, generator=generator, dtype=DTYPE)

    def steps(self, y: Response) -> list[tuple[Response, int]]:
        """The (prefix, token) decisions that produce response y, EOS last if it stops early."""
        out = [(y[:t], y[t]) for t in range(len(y))]
        if len(y) < self.lm.max_length:
            out.append((y, EOS))
        return out

    def token_logps(self, logits: Tensor, responses: list[Response]) -> tuple[Tensor, Tensor]:
        """(N, T) log pi(y_t | y_<t) on response tokens (0 elsewhere) and the (N, T) response mask."""
        log_probs = torch.log_softmax(logits, dim=-1)
        node = self.node_of
        entries = [(n, t, node[prefix], token) for n, y in enumerate(responses)
                   for t, (prefix, token) in enumerate(self.steps(y))]
        rows, cols, nodes, tokens = (list(column) for column in zip(*entries))
        values = torch.zeros(len(responses), self.lm.max_length, dtype=logits.dtype)
        values = values.index_put((torch.tensor(rows), torch.tensor(cols)), log_probs[nodes, tokens])
        mask = torch.zeros(len(responses), self.lm.max_length, dtype=torch.bool)
        mask[rows, cols] = True
        return values, mask

    def sequence_logp(self, logits: Tensor, responses: list[Response] | None = None) -> Tensor:
        """(N,) log pi(y) of the given responses (default: all of them, in `responses` order)."""
        return self.token_logps(logits, self.responses if responses is None else responses)[0].sum(-1)

    def records(self, logits: Tensor, rows: list[list[Response]]) -> Logps:
        """`Logps` with per-token values for B rows of K responses each, as an LM forward would give."""
        k = len(rows[0])
        values, mask = self.token_logps(logits, [y for row in rows for y in row])
        shape = (len(rows), k, self.lm.max_length)
        return Logps.from_tokens(values.reshape(shape), mask.reshape(shape))

    def logits_of(self, sequence_logp: Tensor) -> Tensor:
        """(P, V) logits whose policy gives exactly these (N,) sequence log-probs (over `responses`).

        pi(a|s) = M(s a) / M(s), where M(s) is the probability of the responses that extend s and
        M(s EOS) = pi(s); the logits are these conditional log-probs (-inf for impossible tokens
        never arises when every response has positive probability).
        """
        responses = self.responses
        probs = dict(zip(responses, sequence_logp.exp().tolist()))
        mass: dict[Response, float] = {}
        for y in sorted(responses, key=len, reverse=True):  # children before parents
            mass[y] = probs[y] + sum(mass.get(y + (a,), 0.0) for a in range(1, self.lm.vocab_size))
        logits = torch.empty(len(self.prefixes), self.lm.vocab_size, dtype=DTYPE)
        for i, s in enumerate(self.prefixes):
            logits[i, EOS] = math.log(probs[s] / mass[s])
            for a in range(1, self.lm.vocab_size):
                logits[i, a] = math.log(mass[s + (a,)] / mass[s])
        return logits

    def soft_values(self, ref_logits: Tensor, rewards: Tensor, beta: float) -> tuple[dict, dict]:
        """V*(s) for every response/prefix and Q*(s, a) for every decision, from the recursion in
        the module docstring (rewards: (N,) r(y) over `responses`)."""
        reward = dict(zip(self.responses, rewards.tolist()))
        log_ref = torch.log_softmax(ref_logits, dim=-1)
        node = self.node_of
        value: dict[Response, float] = {}
        q: dict[tuple[Response, int], float] = {}
        for s in sorted(self.responses, key=len, reverse=True):
            if len(s) == self.lm.max_length:
                value[s] = reward[s]
                continue
            q[(s, EOS)] = reward[s]
            for a in range(1, self.lm.vocab_size):
                q[(s, a)] = value[s + (a,)]
            terms = [float(log_ref[node[s], a]) + q[(s, a)] / beta for a in range(self.lm.vocab_size)]
            top = max(terms)
            value[s] = beta * (top + math.log(sum(math.exp(t - top) for t in terms)))
        return value, q
