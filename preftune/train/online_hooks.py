"""The schedule hooks of the online methods, on top of one mechanism: named snapshots of the trainable weights.

A snapshot is a copy of the parameters that training changes (the LoRA adapters of a LoRA
policy, every parameter otherwise). Swapping one into the model for a forward pass gives the
log-probs, or the samples, of a past policy without keeping a second model:

- reference refresh: the reference is the snapshot "initial" (pi_ref, fixed) or "previous" (pi_t,
  taken at the start of every iteration: SPPO, DNO, APO);
- history (MNPO): "history:0" = pi_t, "history:1" = pi_{t-1}, ... shifted every iteration;
- extragradient (EGPO) and mirror prox (Nash-MP): `Anchor` saves the weights and the optimizer
  state before the half step and restores both before the full step; the half-step policy stays
  available as the snapshot "half" (Nash-MP's opponent);
- momentum (APO): `extrapolate` moves the weights to theta^_{t+1} + alpha (theta^_{t+1} - theta^_t);
- fast/slow (OFS-DPO): `FastSlowAdapters`, two LoRA adapters on one base model trained at two
  learning rates, the slow one's log-probs feeding the fast one's chasing regulariser.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters an online run trains and snapshots: LoRA weights of a LoRA model (every adapter,
    whether active or not), else every parameter that requires a gradient."""
    named = dict(model.named_parameters())
    lora = {n: p for n, p in named.items() if "lora_" in n}
    return lora or {n: p for n, p in named.items() if p.requires_grad}


class PolicySnapshots:
    """Named copies of the trainable parameters, and the means to swap them in (see the module docstring)."""

    def __init__(self, parameters: dict[str, nn.Parameter]):
        self.parameters = parameters
        self.saved: dict[str, dict[str, torch.Tensor]] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.saved

    @torch.no_grad()
    def save(self, name: str, source: str | None = None) -> None:
        """Copy the model's current weights (or snapshot `source`) into snapshot `name`."""
        if source is not None:
            self.saved[name] = {k: v.clone() for k, v in self.saved[source].items()}
        else:
            self.saved[name] = {k: p.detach().clone() for k, p in self.parameters.items()}

    @torch.no_grad()
    def load(self, name: str) -> None:
        """Set the model's trainable weights to snapshot `name`."""
        for key, p in self.parameters.items():
            p.copy_(self.saved[name][key])

    @contextmanager
    def swapped(self, name: str) -> Iterator[None]:
        """Inside the block the model has snapshot `name`'s weights; afterwards its own again."""
        if name not in self.saved:
            raise KeyError(f"no snapshot {name!r}; have {sorted(self.saved)}")
        current = {k: p.detach().clone() for k, p in self.parameters.items()}
        self.load(name)
        try:
            yield
        finally:
            with torch.no_grad():
                for key, p in self.parameters.items():
                    p.copy_(current[key])

    def shift_history(self, players: int) -> list[str]:
        """MNPO's history at the start of an iteration: history:j <- history:j-1, history:0 <- the current
        weights; before a past exists the oldest available policy stands in (pi_{-1} = pi_0)."""
        names = [f"history:{j}" for j in range(players)]
        for j in range(players - 1, 0, -1):
            self.save(names[j], names[j - 1] if names[j - 1] in self.saved else None)
        self.save(names[0])
        return names

    @torch.no_grad()
    def extrapolate(self, previous: str, alpha: float) -> None:
        """APO (online.md §7): with theta^ the weights just trained and `previous` = theta^ of the last
        iteration, move to theta^ + alpha (theta^ - previous) and store theta^ as the new `previous`."""
        trained = {k: p.detach().clone() for k, p in self.parameters.items()}
        for key, p in self.parameters.items():
            p.add_(alpha * (trained[key] - self.saved[previous][key]))
        self.saved[previous] = trained

    def state_dict(self) -> dict:
        return {name: {k: v.cpu() for k, v in weights.items()} for name, weights in self.saved.items()}

    def load_state_dict(self, state: dict) -> None:
        device = next(iter(self.parameters.values())).device
        self.saved = {name: {k: v.to(device) for k, v in weights.items()} for name, weights in state.items()}


class Anchor:
    """Extragradient / mirror prox: remember the weights and the optimizer state at the start of an
    iteration, and go back to both before the full step (online.md §4: 'restore theta_t and its
    optimiser state'; §5b: both proximal steps start from the anchor pi_k)."""

    def __init__(self, snapshots: PolicySnapshots, optimizer: torch.optim.Optimizer):
        self.snapshots, self.optimizer = snapshots, optimizer
        snapshots.save("anchor")
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())

    def restore(self) -> None:
        self.snapshots.load("anchor")
        self.optimizer.load_state_dict(self.optimizer_state)


class FastSlowAdapters:
    """OFS-DPO's two LoRA modules on one frozen base (online.md §8): `fast` and `slow` adapter names,
    the slow one trained at slow_lr_ratio x the learning rate. `swap` exchanges the roles [R]."""

    def __init__(self, model, lora_config, slow_lr_ratio: float):
        from peft import get_peft_model

        self.model = get_peft_model(model, copy.deepcopy(lora_config), adapter_name="a")
        self.model.add_adapter("b", copy.deepcopy(lora_config))
        self.fast, self.slow = "a", "b"
        self.slow_lr_ratio = slow_lr_ratio
        self.activate(self.fast)

    def adapter_parameters(self, adapter: str) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if f".{adapter}." in n and "lora_" in n]

    def parameter_groups(self, lr: float) -> list[dict]:
        return [{"params": self.adapter_parameters(self.fast), "lr": lr, "role": "fast"},
                {"params": self.adapter_parameters(self.slow), "lr": lr * self.slow_lr_ratio, "role": "slow"}]

    def activate(self, adapter: str) -> None:
        """Forward passes use `adapter` from now on; both adapters stay trainable. peft's set_adapter makes
        only the active one trainable, and a weight that stops requiring a gradient before backward() gets
        none: the slow adapter, whose forward runs inside `active`, would never train."""
        self.model.set_adapter(adapter)
        for p in self.adapter_parameters(self.fast) + self.adapter_parameters(self.slow):
            p.requires_grad_(True)

    @contextmanager
    def active(self, adapter: str) -> Iterator[None]:
        """Forward passes inside the block use `adapter`; afterwards the fast one again."""
        self.activate(adapter)
        try:
            yield
        finally:
            self.activate(self.fast)

    def swap(self, optimizer: torch.optim.Optimizer) -> None:
        """Exchange the roles: the slow adapter becomes the fast one, and the learning rates follow."""
        self.fast, self.slow = self.slow, self.fast
        groups = {g["role"]: g for g in optimizer.param_groups}
        groups["fast"]["params"], groups["slow"]["params"] = groups["slow"]["params"], groups["fast"]["params"]
        self.activate(self.fast)
