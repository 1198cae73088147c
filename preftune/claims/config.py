"""The settings of `preftune claims`: seeds, splits, budgets, grids and the decision rule.

Everything that decides a verdict is here or in the row modules (each arm's β-equivalent grid),
and is fixed before the final run: configs/claims/full.yaml is the pre-registration, and its
digest (prereg.py) is written into claims.json and docs/claims.md, so a changed grid, seed set,
split or budget shows as a different digest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from preftune.config import ConfigError, merge_recipe, NamedRun, read_recipe, to_dict, with_overrides


@dataclass
class PreferenceBudget:
    """Every offline arm trains this many optimizer steps of this many examples (pairs, lists or
    triples of the same prompts), whatever its method: equal samples and equal steps."""

    steps: int = 150
    batch_size: int = 16
    warmup_ratio: float = 0.1


@dataclass
class SplitSettings:
    """Validation: the last `validation_prompts` prompts of each task's train split, never used for
    preference data (the search scores on them). Test: the task's test split, used only by the
    final runs at the chosen settings."""

    validation_prompts: int = 250
    test_prompts: int | None = None      # None: the whole test split
    samples_per_prompt: int = 4          # samples at temperature 1 per test prompt, for every metric
    validation_samples_per_prompt: int = 4   # per validation prompt (the search's score)
    eval_seed: int = 1234
    batch_size: int = 256


@dataclass
class OnlineBudget:
    """Every online arm: the same iterations, prompts, samples and optimizer steps."""

    iterations: int = 3
    iterations_per_domain: int = 2       # domain-shift sequences: this many iterations per domain
    prompts_per_iteration: int = 64
    steps: int = 20
    batch_size: int = 16
    samples_per_prompt: int = 4
    validation_prompts: int = 36         # intransitive guests held out of training, for the search
    eval_prompts: int = 45               # test guests of the final runs
    warm_start_steps: int | None = None  # None: the recipe's warm-start SFT (smoke runs shorten it)


@dataclass
class DecisionRule:
    """The smallest effect of interest δ per metric (stats.py: a superiority part fails when its
    interval lies below δ; a non-inferiority part holds when its interval lies above −δ)."""

    level: float = 0.95
    margins: dict = field(default_factory=lambda: {
        "gold_reward": 0.02,             # 2 points of accuracy (gold rewards lie in [0, 1])
        "win_rate": 0.02,
        "length": 0.5,                   # half a token
        "entropy": 0.1,                  # nats per response
        "attack_success_rate": 0.02,
        "log_likelihood": 0.1,           # nats per token
        "game": 0.005,                   # exact win-rates and duality gaps of the intransitive game
        "probe_accuracy": 0.02,
        "curvature": 0.0,                # the fitted over-optimisation curve's beta: any positive value
        "steps": 0.5,                    # evaluation intervals
    })


@dataclass
class ClaimsConfig(NamedRun):
    name: str = "claims"
    output_dir: str = "runs/{name}"
    rows: list[str] = field(default_factory=list)        # catalogue rows to run; empty: every row with an experiment
    search_seeds: list[int] = field(default_factory=lambda: [0])
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    lr_grid: list[float] = field(default_factory=lambda: [1.0e-5, 3.0e-5, 1.0e-4])   # every arm, offline and online
    grid_points: str = "all"             # all | middle (the smoke run: the middle point of every grid)
    workers: int = 2
    threads_per_worker: int = 1
    preference: PreferenceBudget = field(default_factory=PreferenceBudget)
    splits: SplitSettings = field(default_factory=SplitSettings)
    online: OnlineBudget = field(default_factory=OnlineBudget)
    decision: DecisionRule = field(default_factory=DecisionRule)
    # The shared assets, as in `preftune bench` (its BenchConfig fields): the base model of each seed,
    # SFT per task and seed, the SFT model's samples on the preference prompts.
    pretrain: dict = field(default_factory=dict)
    sft: dict = field(default_factory=dict)
    pairs: dict = field(default_factory=dict)
    tasks: dict = field(default_factory=dict)

    @property
    def all_seeds(self) -> list[int]:
        return sorted(set(self.search_seeds) | set(self.seeds))

    def margin(self, metric: str) -> float:
        if metric not in self.decision.margins:
            raise ConfigError(f"claims: no smallest effect of interest for {metric!r} in decision.margins")
        return float(self.decision.margins[metric])


def load_claims_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ClaimsConfig:
    """Defaults, then the YAML file, then `--key=value` overrides."""
    data = to_dict(ClaimsConfig())
    if path is not None:
        merge_recipe(data, read_recipe(path, "a claims config"), replaced=("tasks",))
    cfg = with_overrides(ClaimsConfig, data, overrides)
    if set(cfg.search_seeds) & set(cfg.seeds):
        raise ConfigError(f"claims: search seeds {cfg.search_seeds} and final seeds {cfg.seeds} must not overlap "
                          f"(the search never sees the final runs' data)")
    if len(cfg.seeds) < 2:
        raise ConfigError("claims: an interval over seeds needs at least 2 final seeds (the full run uses 5)")
    if cfg.grid_points not in ("all", "middle"):
        raise ConfigError(f"claims: grid_points must be 'all' or 'middle', got {cfg.grid_points!r}")
    check_tasks(cfg)
    return cfg


SPLIT_KEYS = ("pair_prompts", "validation_prompts", "test_prompts")   # per task, beside the bench's TaskSettings


def check_tasks(cfg: ClaimsConfig) -> None:
    """Every task is a built-in one and its settings are the bench's TaskSettings plus the split sizes."""
    from preftune.bench import TaskSettings
    from preftune.config import from_dict
    from preftune.tasks import task_names

    for name, settings in cfg.tasks.items():
        if name not in task_names():
            raise ConfigError(f"claims: unknown task {name!r}; built-in tasks: {', '.join(task_names())}")
        from_dict(TaskSettings, {k: v for k, v in (settings or {}).items() if k not in SPLIT_KEYS}, f"tasks.{name}")


__all__ = ["ClaimsConfig", "DecisionRule", "OnlineBudget", "PreferenceBudget", "SplitSettings", "load_claims_config"]
