"""The MLP actor-critic of PPO and PDPPO on vector observations (online.md §14): one categorical per
machine from a shared actor, a state critic V(s) and a post-decision critic V^x(s^x), 128-128 tanh."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, outputs))


class ActorCritic(nn.Module):
    """Actor: logits of size sum(action_sizes), split per machine. Critics: V(s) and V^x(s^x)."""

    def __init__(self, observation_size: int, action_sizes: list[int], hidden: int = 128):
        super().__init__()
        self.action_sizes = list(action_sizes)
        self.actor = mlp(observation_size, hidden, sum(action_sizes))
        self.critic = mlp(observation_size, hidden, 1)
        self.post_critic = mlp(observation_size, hidden, 1)

    def log_probs(self, observations: Tensor) -> list[Tensor]:
        """Per machine, (B, choices) log-probabilities of its action."""
        logits = self.actor(observations)
        return [torch.log_softmax(part, -1) for part in logits.split(self.action_sizes, -1)]

    @torch.no_grad()
    def act(self, observation: Tensor, generator: torch.Generator) -> tuple[list[int], Tensor]:
        """Sample one action per machine for one observation; returns (action, (M,) its log-probs)."""
        parts = self.log_probs(observation.unsqueeze(0))
        action = [int(torch.multinomial(lp[0].exp(), 1, generator=generator)) for lp in parts]
        return action, torch.stack([lp[0, a] for lp, a in zip(parts, action)])

    def evaluate(self, observations: Tensor, post_observations: Tensor, actions: Tensor):
        """(B, M) log-probs and entropies of `actions` (B, M), and the critics' (B,) values."""
        parts = self.log_probs(observations)
        logp = torch.stack([lp.gather(-1, actions[:, m:m + 1]).squeeze(-1) for m, lp in enumerate(parts)], -1)
        entropy = torch.stack([-(lp.exp() * lp).sum(-1) for lp in parts], -1)
        return logp, entropy, self.critic(observations).squeeze(-1), self.post_critic(post_observations).squeeze(-1)
