"""Arms: one method under one condition, searched on the validation split and then run on every seed.

An arm names a task of the claims config, a method (or one of the two-stage baselines below), its
β-equivalent grid and the hyperparameters held at the paper's defaults. Every arm shares the
config's learning-rate grid, budget and seeds, so a method and the baseline it is compared with get
the same search. Rows (rows/*.py) define arms with `arm(...)`; arms used by several rows (DPO on a
task) are defined once and shared, so their cells run once.

A cell is (arm, setting, seed): a search seed's cell is scored on the validation prompts, a final
seed's on the test prompts, never both.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

# Two-stage or non-preference baselines, trained by cells.py rather than by one registered method.
SFT_ON_CHOSEN = "sft_on_chosen"      # plain SFT on the chosen responses of the same pairs (ASFT's baseline)
SFT_THEN_DPO = "sft_then_dpo"        # SFT on the gold answers for half the steps, then DPO (TPO's baseline)
COMPOSITES = (SFT_ON_CHOSEN, SFT_THEN_DPO)


def betas(name: str, *values: float, **tied: Callable[[float], float]) -> tuple[dict, ...]:
    """A β-equivalent grid: one setting per value of `name`; `tied` parameters follow it
    (flex-DPO's beta_rejected = beta_chosen - 0.02)."""
    return tuple({name: v, **{k: f(v) for k, f in tied.items()}} for v in values)


DPO_BETAS = betas("beta", 0.1, 0.3, 1.0)     # every reference-anchored DPO-family arm


@dataclass(frozen=True)
class Arm:
    name: str                             # "<method>@<task>", e.g. dpo@length-bias
    task: str                             # a task of the claims config (lengths, labeller)
    loss: str                             # registered method, or one of COMPOSITES
    grid: tuple[dict, ...] = ({},)        # β-equivalent settings (the learning rate is the config's grid)
    fixed: dict = field(default_factory=dict)   # hyperparameters held at the paper's default
    start: str = "sft"                    # sft: from the task's SFT model; base: from the base model
    rows: str = "best-worst"              # best-worst pairs | listwise (scored lists of the same samples)
    data: dict = field(default_factory=dict)    # RunConfig.data additions (extra_columns, extra_responses)
    aux: dict = field(default_factory=dict)     # aux model -> "sft" or the name of an arm (same seed)
    curriculum: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)   # RunConfig.diagnostics (3D, over-optimisation rows)
    selection: str = "gold_reward"        # validation metric the search maximises ("-x": minimises x)
    extra_metrics: tuple[str, ...] = ()   # evaluation extras: "entropy"
    keep_model: bool = False              # other arms or rows read this arm's models
    search_as: str | None = None          # use this arm's chosen setting instead of a search of its own
    kind: str = "offline"                 # offline | online
    online: dict = field(default_factory=dict)  # online arms: recipe and schedule settings

    def preregistered(self) -> dict:
        """Everything about the arm that is fixed before the final run."""
        return {k: v for k, v in self.__dict__.items() if k not in ("keep_model",)}

    @property
    def depends_on(self) -> tuple[str, ...]:
        """Arms that must be settled first: those whose models it reads, and the one it takes its setting from."""
        return tuple(v for v in self.aux.values() if v != "sft") + ((self.search_as,) if self.search_as else ())


_ARMS: dict[str, Arm] = {}


def arm(name: str, task: str, loss: str, **settings) -> Arm:
    """Define (or, with identical settings, fetch) an arm; a name defined twice differently is an error."""
    made = Arm(name, task, loss, **settings)
    if name in _ARMS and _ARMS[name] != made:
        raise ValueError(f"claims: arm {name!r} is defined twice with different settings")
    _ARMS[name] = made
    return made


def get_arm(name: str) -> Arm:
    if name not in _ARMS:
        raise KeyError(f"claims: no arm {name!r}; arms: {', '.join(sorted(_ARMS))}")
    return _ARMS[name]


def all_arms() -> list[Arm]:
    return list(_ARMS.values())


def settings_of(arm: Arm, lr_grid: list[float], points: str = "all") -> list[dict]:
    """The arm's search grid: every β-equivalent setting x every learning rate (`middle`: the middle
    point of each, for the smoke run)."""
    grid, lrs = list(arm.grid), list(lr_grid)
    if points == "middle":
        grid, lrs = [grid[len(grid) // 2]], [lrs[len(lrs) // 2]]
    return [{**setting, "lr": lr} for setting in grid for lr in lrs]


def setting_key(setting: dict) -> str:
    """A readable, stable directory name for a setting: beta=0.1,lr=3e-05."""
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(setting.items()))


def cell_id(arm_name: str, setting: dict, seed: int) -> str:
    return f"{arm_name}/{setting_key(setting)}/seed{seed}"


def describe(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True)
