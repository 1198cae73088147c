"""The method registry: what the trainer, `preftune methods` and `preftune verify` know of a method.

A method is a pure function `fn(policy, [reference], *, <data extras>, <hyperparameters>)`
returning a `MethodOutput`. `register` records the facts the trainer needs (does it need a
reference model, per-token log-probs, which data columns), the catalogue seed it implements,
the survey taxonomy tags, and its status. Hyperparameters are the keyword-only arguments with
defaults, so the signature is the single source of truth for names and defaults.

Methods of other families live beside their loops, in a `methods` subpackage of the family
(`preftune/rl/methods/`, `preftune/diffusion/methods/`) that registers its losses here when
imported. METHOD_PACKAGES names those subpackages, and importing preftune.methods imports them
(`load_method_packages`), skipping a family that does not exist; the registry never imports a loop.
"""
from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from preftune.methods.hyperparameters import check_hyperparameter

# "rollout": sampled responses (K = 1, or K candidate steps) with their per-token quantities as extras;
# the reinforcement-learning losses of preftune/rl/methods take it (preftune rl, not preftune train).
# The diffusion kinds are the data units of preftune/diffusion/methods (diffusion.md §11): each names
# what one training example holds, and `preftune diffusion train` builds its records from it.
DIFFUSION_INPUT_KINDS = ("image-pairs", "image-lists", "unpaired", "condition-pairs", "segment-pairs",
                         "expert-online", "trajectory-pairs", "trajectories", "sample-groups")
INPUT_KINDS = ("pairwise", "pointwise", "listwise", "any", "rollout") + DIFFUSION_INPUT_KINDS
STATUSES = ("stable", "experimental")
# The four axes of "A Survey of DPO" (Liu et al. 2025, offline.md §18).
TAXONOMY_AXES = ("data_strategy", "learning_framework", "constraint_mechanism", "model_property")
# The keyword argument through which a stateful method receives its running state (methods/state.py).
STATE_ARGUMENT = "state"


@dataclass
class CheckResult:
    """One line of `preftune verify`: a property of a method measured in the tabular engine.

    bound "=" (default): measured is expected within tolerance. "<=" / ">=": measured is at most /
    at least expected (a rate below its bound, an iterate that keeps cycling); the error is then
    how far it falls on the wrong side, 0 when the bound holds.
    """

    method: str
    property: str
    expected: float
    measured: float
    tolerance: float
    passed: bool | None = None  # None: computed from the error and the tolerance
    bound: str = "="

    def __post_init__(self) -> None:
        if self.bound not in ("=", "<=", ">="):
            raise ValueError(f"a check's bound is '=', '<=' or '>=', got {self.bound!r}")
        if self.passed is None:
            self.passed = bool(self.error <= self.tolerance)

    @property
    def error(self) -> float:
        if math.isnan(self.measured) or math.isnan(self.expected):
            return math.nan
        if self.bound == "<=":
            return max(0.0, self.measured - self.expected)
        if self.bound == ">=":
            return max(0.0, self.expected - self.measured)
        return abs(self.measured - self.expected)


@dataclass
class MethodSpec:
    name: str
    fn: Callable
    seed: str | None
    family: str
    input_kind: str
    needs_reference: bool
    needs_token_logps: bool
    extras: tuple[str, ...]
    taxonomy: dict[str, list[str]]
    status: str
    paper: str
    reconstructed: str | None = None
    no_check_reason: str | None = None
    state_factory: Callable[[], Any] | None = None  # running state, or batch statistics over processes (methods/state.py)
    check: Callable[..., list[CheckResult]] | None = field(default=None, repr=False)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """Keyword-only arguments with defaults: the method's tunable knobs and their defaults.

        A stateful method's `state` argument is filled by the objective, never by a config.
        """
        return {p.name: p.default for p in inspect.signature(self.fn).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
                and not (self.state_factory is not None and p.name == STATE_ARGUMENT)}

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.fn) or ""
        return doc.splitlines()[0] if doc else ""

    def validate_params(self, params: dict[str, Any]) -> None:
        unknown = sorted(set(params) - set(self.hyperparameters))
        if unknown:
            valid = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items()) or "(none)"
            raise ValueError(f"method '{self.name}' has no hyperparameter {', '.join(map(repr, unknown))}; "
                             f"valid hyperparameters: {valid}")
        for name, value in params.items():  # the RL losses' names (gamma: a discount) follow other conventions
            check_hyperparameter(self.name, name, value, self.hyperparameters[name], ranges=self.family != "rl")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "family": self.family,
            "input_kind": self.input_kind,
            "needs_reference": self.needs_reference,
            "needs_token_logps": self.needs_token_logps,
            "extras": list(self.extras),
            "hyperparameters": {k: _jsonable(v) for k, v in self.hyperparameters.items()},
            "taxonomy": self.taxonomy,
            "status": self.status,
            "paper": self.paper,
            "reconstructed": self.reconstructed,
            "running_state": self.state_factory is not None and getattr(self.state_factory, "running", True),
            "tabular_check": "yes" if self.check else f"none: {self.no_check_reason}",
            "summary": self.summary,
        }


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool, type(None), list, dict)) else repr(value)


_REGISTRY: dict[str, MethodSpec] = {}

# Method packages outside preftune/methods/ (which imports its own files): each family keeps its pure
# losses in a `methods` subpackage that registers them here when imported. preftune/methods/__init__.py
# imports these after its own files, skipping a family that does not exist. They sit on the methods
# layer (tests/test_layers.py), and a family's own __init__.py must stay light (no loop imports),
# since importing its methods subpackage runs it first.
METHOD_PACKAGES = ("preftune.rl.methods", "preftune.diffusion.methods")


def load_method_packages(names: tuple[str, ...] = METHOD_PACKAGES) -> None:
    """Import every family method package in `names` that exists, so that its methods are registered."""
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:  # the family (or its methods) is not there: nothing to register
            if not error.name or not (name == error.name or name.startswith(error.name + ".")):
                raise


def register(*, name: str, seed: str | None, family: str, input_kind: str, needs_reference: bool,
             taxonomy: dict[str, list[str]], paper: str, status: str = "experimental",
             needs_token_logps: bool = False, extras: tuple[str, ...] = (),
             reconstructed: str | None = None, no_check_reason: str | None = None,
             state: Callable[[], Any] | None = None):
    """Decorator that adds a method function to the registry (see the module docstring).

    state: a factory for the method's running state across batches, or `BatchStatistics` for a
    statistic of the current batch taken over all processes (methods/state.py); the function
    then takes a keyword-only argument `state=None`, filled by the objective.
    """

    def decorate(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"method '{name}' is registered twice")
        if input_kind not in INPUT_KINDS:
            raise ValueError(f"method '{name}': input_kind must be one of {INPUT_KINDS}")
        if status not in STATUSES:
            raise ValueError(f"method '{name}': status must be one of {STATUSES}")
        if set(taxonomy) != set(TAXONOMY_AXES):
            raise ValueError(f"method '{name}': taxonomy must have exactly the axes {TAXONOMY_AXES}")
        params = inspect.signature(fn).parameters.values()
        positional = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        expected = ["policy", "reference"] if needs_reference else ["policy"]
        if positional != expected:
            raise TypeError(f"method '{name}' must take positional arguments {expected}, got {positional}")
        required = {p.name for p in params
                    if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty}
        if required != set(extras):
            raise TypeError(f"method '{name}': keyword-only arguments without defaults {sorted(required)} "
                            f"must be exactly the declared extras {sorted(extras)}")
        if state is not None and not any(p.name == STATE_ARGUMENT and p.kind is inspect.Parameter.KEYWORD_ONLY
                                         and p.default is None for p in params):
            raise TypeError(f"method '{name}' declares a running state, so it must take a keyword-only "
                            f"argument `{STATE_ARGUMENT}=None`")
        _REGISTRY[name] = MethodSpec(
            name=name, fn=fn, seed=seed, family=family, input_kind=input_kind,
            needs_reference=needs_reference, needs_token_logps=needs_token_logps, extras=tuple(extras),
            taxonomy=taxonomy, status=status, paper=paper, reconstructed=reconstructed,
            no_check_reason=no_check_reason, state_factory=state)
        return fn

    return decorate


def tabular_check(name: str):
    """Decorator for a method's exact tabular check, written beside the method in its file.

    The check takes one optional argument, `fn`, the loss function to check (default: the
    registered one), and returns a list of CheckResult. `preftune verify` calls it with no
    argument; mutation tests pass a deliberately broken copy of the loss and expect a failure.
    """

    def decorate(check: Callable[..., list[CheckResult]]) -> Callable[..., list[CheckResult]]:
        spec = get(name)
        if spec.check is not None:
            raise ValueError(f"method '{name}' already has a tabular check")
        spec.check = check
        return check

    return decorate


def get(name: str) -> MethodSpec:
    if name not in _REGISTRY:
        raise KeyError(f"unknown method '{name}'; registered methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def all_methods() -> list[MethodSpec]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def taxonomy(data_strategy=(), learning_framework=(), constraint_mechanism=(), model_property=()):
    """Build the survey-taxonomy tag dict; each argument is a list of short tags."""
    return {"data_strategy": list(data_strategy), "learning_framework": list(learning_framework),
            "constraint_mechanism": list(constraint_mechanism), "model_property": list(model_property)}
