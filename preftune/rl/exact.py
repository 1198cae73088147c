"""Exact small worlds for the RL losses' checks (`preftune verify`): bandits with enumerated groups and
fixed-depth token trees with exact expectations, float64 throughout.

A check calls the loss it is given (the registered one, or a mutant in the mutation tests) on records
built here, so every number it compares comes through the loss; the references it compares with are
computed here independently, with plain recursions.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from preftune.records import Logps

F64 = torch.float64


def records(tokens: Tensor, mask: Tensor | None = None) -> Logps:
    """A per-token record from (B, K, T) log-probs (every position a response token by default)."""
    return Logps.from_tokens(tokens, torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask)


# ----------------------------------------------------------------------------------------- GRPO bandits

def grpo_bandit_fixed_point(call: Callable, arm_aspects: Sequence[Sequence[float]], params: dict | None = None,
                            group_size: int = 3, steps: int = 60, lr: float = 4.0) -> Tensor:
    """Probabilities of a softmax bandit policy after `steps` exact expected GRPO updates from uniform.

    Every ordered group of `group_size` draws is enumerated with its probability under the current
    policy (held fixed within a step, as the sampling policy pi_old is), each arm a one-token response;
    call(policy, reference, old, aspects (B, A), group, **params) is the loss. The reference is uniform.
    """
    table = torch.tensor(arm_aspects, dtype=F64)
    n = len(table)
    tuples = torch.tensor(list(itertools.product(range(n), repeat=group_size)))
    arms = tuples.flatten()
    group = torch.arange(len(tuples)).repeat_interleave(group_size)
    log_ref = torch.full((n,), -math.log(n), dtype=F64)
    logits = torch.zeros(n, dtype=F64)
    for _ in range(steps):
        logits = logits.detach().requires_grad_(True)
        log_pi = torch.log_softmax(logits, -1)
        weight = log_pi.detach().exp()[tuples].prod(-1)
        tokens = log_pi[arms].reshape(-1, 1, 1)
        out = call(records(tokens), records(log_ref[arms].reshape(-1, 1, 1)), records(tokens.detach()),
                   table[arms], group, **(params or {}))
        loss = (out.loss.reshape(-1, group_size).mean(-1) * weight).sum()
        (grad,) = torch.autograd.grad(loss, logits)
        logits = logits.detach() - lr * grad
    return torch.softmax(logits, -1)


def affine_invariance_error(call: Callable, aspects: int, per_aspect: bool = False, seed: int = 0) -> float:
    """Largest change of the loss or its gradient when the rewards of random groups are mapped affinely.

    Three groups of four responses of three tokens, random log-probs (the old policy a little away from
    the current one, so some ratios are clipped). Every aspect is mapped r -> 3r - 2, or, per_aspect,
    aspect k by its own map (3r - 2, 0.5r + 1, ...). call(policy, reference, old, aspects, group).
    """
    g = torch.Generator().manual_seed(seed)
    shape = (12, 1, 3)
    current = -torch.rand(shape, generator=g, dtype=F64) * 2
    old = current + 0.3 * torch.randn(shape, generator=g, dtype=F64)
    reference = current + 0.2 * torch.randn(shape, generator=g, dtype=F64)
    scores = torch.rand(12, aspects, generator=g, dtype=F64)
    group = torch.arange(3).repeat_interleave(4)
    scale = torch.tensor([3.0, 0.5, 2.0, 1.5][:aspects], dtype=F64) if per_aspect else torch.full((aspects,), 3.0, dtype=F64)
    shift = torch.tensor([-2.0, 1.0, 0.5, -1.0][:aspects], dtype=F64) if per_aspect else torch.full((aspects,), -2.0, dtype=F64)
    values = []
    for s in (scores, scores * scale + shift):
        leaf = current.clone().requires_grad_(True)
        loss = call(records(leaf), records(reference), records(old), s, group).loss
        (grad,) = torch.autograd.grad(loss.sum(), leaf)
        values.append((loss.detach(), grad))
    return max(float((values[0][0] - values[1][0]).abs().max()), float((values[0][1] - values[1][1]).abs().max()))


# ----------------------------------------------------------------------------------- fixed-depth trees

class Tree:
    """A token tree of fixed depth: every response is `depth` tokens from a vocabulary of `branching`.

    Node i is a prefix of fewer than `depth` tokens (`prefixes[i]`, the root first); a policy is a
    (nodes, branching) table of logits, pi(a | s) = softmax(logits[s])[a]. The leaves are the responses.
    """

    def __init__(self, branching: int = 2, depth: int = 2):
        self.branching, self.depth = branching, depth
        self.prefixes = [p for d in range(depth) for p in itertools.product(range(branching), repeat=d)]
        self.node = {p: i for i, p in enumerate(self.prefixes)}
        self.leaves = list(itertools.product(range(branching), repeat=depth))

    def uniform_logits(self) -> Tensor:
        return torch.zeros(len(self.prefixes), self.branching, dtype=F64)

    def token_logps(self, logits: Tensor) -> Tensor:
        """(leaves, 1, depth) log pi(y_t | y_<t) of every leaf, differentiable in `logits`."""
        tokens = torch.tensor(self.leaves)
        return torch.log_softmax(logits, -1)[self.state_index(), tokens].unsqueeze(1)

    def state_index(self) -> Tensor:
        """(leaves, depth) node index of the state before each token (to read tabular values)."""
        return torch.tensor([[self.node[y[:t]] for t in range(self.depth)] for y in self.leaves])

    def leaf_logp(self, logits: Tensor) -> Tensor:
        return self.token_logps(logits)[:, 0].sum(-1)

    def logits_of(self, leaf_probs: Tensor) -> Tensor:
        """Logits (conditional log-probs) of the autoregressive policy with these leaf probabilities."""
        mass = {y: float(p) for y, p in zip(self.leaves, leaf_probs)}
        for d in reversed(range(self.depth)):
            for p in itertools.product(range(self.branching), repeat=d):
                mass[p] = sum(mass[p + (a,)] for a in range(self.branching))
        out = torch.empty(len(self.prefixes), self.branching, dtype=F64)
        for i, p in enumerate(self.prefixes):
            for a in range(self.branching):
                out[i, a] = math.log(mass[p + (a,)] / mass[p])
        return out

    def soft_values(self, ref_logits: Tensor, rewards: Sequence[float], beta: float) -> tuple[Tensor, Tensor]:
        """Soft-optimal values V*(s) per node and the optimal policy's logits, for terminal rewards r(leaf):
        V*(leaf) = r, V*(s) = beta log sum_a pi_ref(a|s) exp(V*(s a)/beta), pi*(a|s) = pi_ref e^{(V*(sa) - V*(s))/beta}."""
        log_ref = torch.log_softmax(ref_logits, -1)
        value = {y: float(r) for y, r in zip(self.leaves, rewards)}
        for p in reversed(self.prefixes):
            terms = [float(log_ref[self.node[p], a]) + value[p + (a,)] / beta for a in range(self.branching)]
            top = max(terms)
            value[p] = beta * (top + math.log(sum(math.exp(t - top) for t in terms)))
        values = torch.tensor([value[p] for p in self.prefixes], dtype=F64)
        logits = torch.tensor([[float(log_ref[self.node[p], a]) + (value[p + (a,)] - value[p]) / beta
                                for a in range(self.branching)] for p in self.prefixes], dtype=F64)
        return values, logits


def reward_to_go(token_rewards: Sequence[Sequence[float]]) -> list[list[float]]:
    """G_t = sum_{i >= t} r_i for every row of per-token rewards (plain Python, as a reference)."""
    return [[sum(row[t:]) for t in range(len(row))] for row in token_rewards]


def gae_reference(rewards: Sequence[float], values: Sequence[float], gamma: float, lam: float) -> list[float]:
    """GAE of one trajectory by its definition A_t = sum_l (gamma lam)^l delta_{t+l} (a reference)."""
    n = len(rewards)
    deltas = [rewards[t] + gamma * (values[t + 1] if t + 1 < n else 0.0) - values[t] for t in range(n)]
    return [sum((gamma * lam) ** (i - t) * deltas[i] for i in range(t, n)) for t in range(n)]


def loss_advantages(call: Callable, policy_tokens: Tensor, **records_and_extras) -> Tensor:
    """The per-token advantages a clipped-surrogate loss uses, read back through autograd at rho = 1.

    With the policy equal to the old policy every ratio is 1 and inside the clip range, so
    d loss_i / d log pi_t = -A_t / T_i for a token-averaged loss: A_t = -T d loss / d log pi_t.
    """
    leaf = policy_tokens.clone().requires_grad_(True)
    out = call(records(leaf), **records_and_extras)
    (grad,) = torch.autograd.grad(out.loss.sum(), leaf)
    return -grad * policy_tokens.shape[-1]


def tabular_ppo_updates_to(call: Callable, tree: Tree, rewards: Sequence[float], target_leaf: int, *,
                           threshold: float = 0.9, max_updates: int = 200, epochs: int = 4, lr: float = 1.0,
                           value_lr: float = 0.5, extras: Callable[[Tensor], dict] | None = None) -> tuple[int, Tensor]:
    """Tabular PPO on `tree` with exact expectations: updates until pi(target leaf) >= threshold.

    Each update holds the current policy as pi_old and the critic's values as V_old, then takes `epochs`
    gradient steps on the loss averaged over the leaves weighted by pi_old (the exact expectation of
    sampled rollouts): the policy logits with step `lr`, the tabular critic (one value per node) with
    `value_lr`. call(policy, reference, old, values, old_values, score, **extras(old_tokens)). The
    reference is uniform. Returns (updates used, final leaf probabilities); max_updates + 1 if never.
    """
    score = torch.tensor(rewards, dtype=F64)
    reference = records(tree.token_logps(tree.uniform_logits()))
    states = tree.state_index()
    logits, critic = tree.uniform_logits(), torch.zeros(len(tree.prefixes), dtype=F64)
    for update in range(1, max_updates + 1):
        old_tokens = tree.token_logps(logits).detach()
        weight = old_tokens[:, 0].sum(-1).exp()
        old_values = critic[states].unsqueeze(1).detach()
        added = extras(old_tokens) if extras else {}
        for _ in range(epochs):
            logits = logits.detach().requires_grad_(True)
            critic = critic.detach().requires_grad_(True)
            out = call(records(tree.token_logps(logits)), reference, old=records(old_tokens),
                       values=critic[states].unsqueeze(1), old_values=old_values, score=score, **added)
            loss = (out.loss * weight).sum()
            grad_logits, grad_critic = torch.autograd.grad(loss, (logits, critic))
            logits, critic = logits.detach() - lr * grad_logits, critic.detach() - value_lr * grad_critic
        probs = tree.leaf_logp(logits).exp()
        if probs[target_leaf] >= threshold:
            return update, probs
    return max_updates + 1, probs
