"""The bench's configuration (configs/bench/*.yaml) and its rows: method recipes, and registered
offline methods that have no recipe of their own."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from preftune.config import ConfigError, from_dict, load_config, merge_recipe, NamedRun, read_recipe, to_dict, with_overrides

STARTS = ("sft", "base")


@dataclass
class TaskSettings:
    """How one task runs in the bench: sequence lengths, demonstration noise, task and labeller options."""

    max_length: int = 32
    max_prompt_length: int = 16
    max_new_tokens: int = 8
    noise: float = 0.1                   # fraction of SFT demonstrations with a wrong answer
    sft_steps: int | None = None         # None: sft.steps (an easy task can take fewer)
    options: dict = field(default_factory=dict)
    labeller: dict = field(default_factory=dict)


@dataclass
class SftSettings:
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    demonstrations: int = 19200
    warmup_ratio: float = 0.1


@dataclass
class PretrainSettings:
    """The base model of each seed (see the module docstring, step 1)."""

    steps: int = 0                       # 0: the tiny model as initialised (random weights)
    batch_size: int = 64
    lr: float = 1e-3
    demonstrations_per_task: int = 4096  # per distinct set of demonstrations (tasks sharing one count once)
    noise: float = 0.5                   # fraction of those demonstrations with a wrong answer
    warmup_ratio: float = 0.1


@dataclass
class PreferenceSettings:
    steps: int = 60
    batch_size: int = 16
    lr: float | None = None              # None: each recipe's own learning rate


@dataclass
class PairSettings:
    prompts: int | None = 768            # train prompts sampled (None: all)
    samples_per_prompt: int = 4
    temperature: float = 1.0


@dataclass
class BenchEvalSettings:
    prompts: int | None = 100            # held-out prompts (None: the whole test split)
    samples_per_prompt: int = 2
    seed: int = 1234
    batch_size: int = 128                # sequences generated at once, here and for the preference samples


@dataclass
class BenchConfig(NamedRun):
    name: str = "bench"
    output_dir: str = "runs/{name}"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    tasks: dict = field(default_factory=lambda: {"arithmetic": {}})   # task name -> TaskSettings fields
    methods: list[str] = field(default_factory=list)                  # recipe names; empty: every recipe
    recipes: str = "configs/methods"
    starts: list[str] = field(default_factory=lambda: list(STARTS))   # sft: SFT then preference; base: no SFT
    workers: int = 2
    threads_per_worker: int = 1
    keep_models: bool = False
    sft: SftSettings = field(default_factory=SftSettings)
    preference: PreferenceSettings = field(default_factory=PreferenceSettings)
    pairs: PairSettings = field(default_factory=PairSettings)
    eval: BenchEvalSettings = field(default_factory=BenchEvalSettings)
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)

    def task_settings(self, task: str) -> TaskSettings:
        return from_dict(TaskSettings, self.tasks[task] or {}, f"tasks.{task}")


def load_bench_config(path: str | Path | None = None, overrides: list[str] | None = None) -> BenchConfig:
    """Defaults, then the YAML file, then `--key=value` overrides (e.g. --seeds=[0] --workers=1)."""
    data = to_dict(BenchConfig())
    if path is not None:  # the recipe's task list replaces the default one
        merge_recipe(data, read_recipe(path, "a bench config"), replaced=("tasks",))
    cfg = with_overrides(BenchConfig, data, overrides)
    from preftune.tasks import task_names

    for task in cfg.tasks:
        if task not in task_names():
            raise ConfigError(f"bench: unknown task {task!r}; built-in tasks: {', '.join(task_names())}")
        cfg.task_settings(task)  # checks its keys
    unknown = sorted(set(cfg.starts) - set(STARTS))
    if unknown or not cfg.starts:
        raise ConfigError(f"bench: starts must be a non-empty subset of {list(STARTS)}, got {cfg.starts}")
    if len(cfg.seeds) < 1:
        raise ConfigError("bench: give at least one seed")
    return cfg


@dataclass
class Entry:
    """One row of the table: a method recipe, or a registered method on the template recipe."""

    name: str
    recipe: str
    loss: str | None = None              # set: the template recipe with this loss (default hyperparameters)


def bench_entries(cfg: BenchConfig) -> list[Entry]:
    """Every recipe of cfg.recipes, then every registered offline method that no recipe trains on
    its own, on the template recipe (`dpo.yaml`'s settings, the method's default hyperparameters);
    only those named in cfg.methods when it is set."""
    from preftune.methods import all_methods, build_objective

    folder = Path(cfg.recipes)
    recipes = sorted(folder.glob("*.yaml"))
    template = folder / "dpo.yaml"
    if not template.exists():
        raise ConfigError(f"bench: the template recipe {template} is missing")
    entries = [Entry(p.stem, str(p)) for p in recipes]
    covered = set()
    for p in recipes:
        terms = build_objective(load_config(p).loss).terms
        if len(terms) == 1:
            covered.add(terms[0].spec.name)
    entries += [Entry(spec.name, str(template), spec.name) for spec in all_methods()
                if spec.family.startswith("offline") and spec.name not in covered
                and spec.name not in {e.name for e in entries}]
    if cfg.methods:
        by_name = {e.name: e for e in entries}
        missing = [m for m in cfg.methods if m not in by_name]
        if missing:
            raise ConfigError(f"bench: no recipe or offline method {missing[0]!r}; available: {', '.join(by_name)}")
        entries = [by_name[m] for m in cfg.methods]
    return entries
