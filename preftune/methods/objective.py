"""Weighted combinations of registered methods, e.g. `dpo + 0.2*sft`, as one callable."""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from torch import Tensor

from preftune.methods.registry import STATE_ARGUMENT, MethodSpec, get
from preftune.methods.state import CrossProcess
from preftune.records import Logps, MethodOutput


@dataclass
class Term:
    spec: MethodSpec
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    state: Any = None  # the running state of a stateful method (methods/state.py), one per term


class Objective:
    """The training objective: sum_i weight_i * method_i(...), per example.

    It tells the trainer what to compute (reference log-probs, per-token log-probs, data
    extras) as the union of what its terms declared. It also owns the state of its stateful terms
    (methods/state.py) and exposes it to the trainer: the processes to reduce batch statistics
    over, freezing during evaluation, and checkpointing of running statistics (`state_dict` /
    `load_state_dict`, as accelerate expects).
    """

    def __init__(self, terms: list[Term]):
        if not terms:
            raise ValueError("the objective needs at least one method")
        kinds = {t.spec.input_kind for t in terms} - {"any"}
        if len(kinds) > 1:
            raise ValueError("cannot combine methods that take different data kinds: " +
                             ", ".join(f"{t.spec.name} ({t.spec.input_kind})" for t in terms))
        self.terms = terms
        for term in terms:
            if term.state is None and term.spec.state_factory is not None:
                term.state = term.spec.state_factory()
        self.input_kind = kinds.pop() if kinds else "any"
        self.needs_reference = any(t.spec.needs_reference for t in terms)
        self.needs_token_logps = any(t.spec.needs_token_logps for t in terms)
        self.extras = tuple(sorted({e for t in terms for e in t.spec.extras}))

    @property
    def names(self) -> list[str]:
        return [t.spec.name for t in self.terms]

    # -- running state of stateful terms ------------------------------------------------------

    @property
    def has_state(self) -> bool:
        """Whether a term carries statistics from batch to batch (then the run checkpoints them)."""
        return bool(self._running())

    def _stateful(self) -> list[tuple[str, Any]]:
        return [(f"{i}:{t.spec.name}", t.state) for i, t in enumerate(self.terms) if t.state is not None]

    def _running(self) -> list[tuple[str, Any]]:
        return [(key, state) for key, state in self._stateful() if getattr(state, "running", True)]

    def set_processes(self, processes: CrossProcess) -> None:
        """Take every batch statistic over these processes (train/distributed.py builds them)."""
        for _, state in self._stateful():
            state.processes = processes

    def sync_state(self, sync: Callable[[Tensor], Tensor]) -> None:
        """Make every state sum its per-batch statistics over processes with `sync` (e.g. an all-reduce)."""
        self.set_processes(CrossProcess(sum=sync))

    @contextmanager
    def frozen_state(self) -> Iterator[None]:
        """Inside the block the states are read but never updated (evaluation)."""
        states = [state for _, state in self._stateful()]
        previous = [state.frozen for state in states]
        for state in states:
            state.frozen = True
        try:
            yield
        finally:
            for state, was in zip(states, previous):
                state.frozen = was

    def state_dict(self) -> dict[str, Any]:
        return {key: state.state_dict() for key, state in self._running()}

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        stateful = dict(self._running())
        if set(saved) != set(stateful):
            raise ValueError(f"checkpoint holds running state for {sorted(saved)}, "
                             f"objective {self.describe()} has {sorted(stateful)}")
        for key, state in stateful.items():
            state.load_state_dict(saved[key])

    def describe(self) -> str:
        return " + ".join((f"{t.weight:g}*" if t.weight != 1 else "") + t.spec.name +
                          (f"({', '.join(f'{k}={v}' for k, v in t.params.items())})" if t.params else "")
                          for t in self.terms)

    def __call__(self, policy: Logps, reference: Logps | None,
                 extras: Mapping[str, Tensor] | None = None) -> MethodOutput:
        extras = extras or {}
        missing = [e for e in self.extras if e not in extras]
        if missing:
            raise ValueError(f"objective {self.describe()} needs data columns {missing}, "
                             f"the batch has {sorted(extras)}")
        if self.needs_reference and reference is None:
            raise ValueError(f"objective {self.describe()} needs reference log-probs")
        total, rewards, metrics = None, None, {}
        for term in self.terms:
            args = (policy, reference) if term.spec.needs_reference else (policy,)
            running = {STATE_ARGUMENT: term.state} if term.state is not None else {}
            out = term.spec.fn(*args, **{e: extras[e] for e in term.spec.extras}, **term.params, **running)
            weighted = term.weight * out.loss
            total = weighted if total is None else total + weighted
            rewards = out.rewards if rewards is None else rewards
            prefix = f"{term.spec.name}/" if len(self.terms) > 1 else ""
            if len(self.terms) > 1:
                metrics[f"{prefix}loss"] = out.loss.detach()
            metrics.update({prefix + k: v for k, v in out.metrics.items()})
        return MethodOutput(loss=total, rewards=rewards, metrics=metrics)


_TERM = re.compile(r"^\s*(?:(?P<weight>[0-9.eE+-]+)\s*\*\s*)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*$")


def build_objective(loss: str | Mapping[str, Mapping[str, Any] | None]) -> Objective:
    """Build an objective from a config value.

    Either a string such as "dpo + 0.2*sft", or a mapping from method name to its
    hyperparameters, where the optional key `weight` sets the term's weight:
    {"dpo": {"beta": 0.1}, "sft": {"weight": 0.2}}.
    """
    if isinstance(loss, str):
        terms = []
        for part in loss.split("+"):
            match = _TERM.match(part)
            if not match:
                raise ValueError(f"cannot parse loss term {part!r} in {loss!r}; write e.g. 'dpo + 0.2*sft'")
            terms.append(Term(get(match["name"]), float(match["weight"] or 1.0)))
        return Objective(terms)
    terms = []
    for name, params in loss.items():
        params = dict(params or {})
        weight = float(params.pop("weight", 1.0))
        spec = get(name)
        spec.validate_params(params)
        terms.append(Term(spec, weight, params))
    return Objective(terms)
