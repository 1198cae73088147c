"""Typed configuration of an online run (`preftune online --config configs/online/<method>.yaml`).

Same rules as config.py: every key is declared with its type and default, unknown keys and wrong
types are errors that name the key, `--section.key=value` overrides apply on top of the YAML.
Settings left at "auto" take the method's default schedule (train/online_schedule.py, METHOD_DEFAULTS).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union


from preftune.config import (ConfigError, ModelConfig, TrainConfig, merge_recipe, read_recipe, to_dict,
                             with_overrides)
from preftune.judges import check_judge_options
from preftune.config import NamedRun


@dataclass
class WarmStartConfig:
    """Supervised fine-tuning on the task's demonstrations before iteration 0, so the initial policy
    answers within the task (the SFT policy pi_ref). Trained once and cached by its settings."""

    enabled: bool = False
    demonstrations: int = 4096
    noise: float = 0.0
    steps: int = 400
    batch_size: int = 32
    lr: float = 1e-3


@dataclass
class SamplerConfig:
    samples_per_prompt: int = 4          # k responses per prompt from the current policy
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                       # 0: no top-k filter
    max_new_tokens: int = 16
    batch_size: int = 64


@dataclass
class JudgeConfig:
    kind: str = "task"                   # task | reward_model | pairwise_model | llm
    labels: str = "probability"          # probability (the judge's P) | bernoulli (a binary winner drawn from it)
    options: dict = field(default_factory=dict)  # e.g. {path: ...} or {base_url, model, timeout, max_retries,
                                                 #       max_concurrency, instructions}; the key from the env
    max_failure_rate: float = 0.2        # a round of judging whose failed + unparseable requests exceed this
                                         # fraction stops the run (with the counts and the first error)


@dataclass
class PairsConfig:
    builder: str = "auto"                # auto | best_worst | all_pairs | tournament | dno_margin | opponent
    margin: float = 1 / 3                # all_pairs: |P - 1/2| above it; dno_margin: score gap at least it
    min_positive: float = 0.5            # dno_margin: a positive wins against at least this fraction
    replay: float = 0.0                  # DNO-Prct replay: this fraction of pairs from t-1, half as many from t-2, ...


@dataclass
class FastSlowConfig:
    enabled: Union[bool, str] = "auto"   # two LoRA adapters, fast and slow (OFS-DPO); auto: on for ofs_dpo
    slow_lr_ratio: float = 0.25          # slow learning rate = ratio x train.lr
    swap: bool = False                   # exchange the roles when the slow module's DPO loss is lower [R]
    cofs: bool = False                   # COFS-DPO [R]: at the end of each domain after the first, the fast
                                         # adapter becomes w x (previous domain's) + (1 - w) x (this domain's),
                                         # w on a grid minimising its DPO loss on a replay memory of the domains
    cofs_memory: int = 32                # replay rows per domain (from the domain's last iteration)


@dataclass
class ScheduleConfig:
    reference: str = "auto"              # auto | fixed (pi_ref) | previous (pi_t, refreshed each iteration)
    phases: str = "auto"                 # auto | single | extragradient (EGPO) | mirror_prox (Nash-MP)
    momentum: Union[float, str] = "auto"  # APO's alpha; 0 disables
    opponent_samples: Union[int, str] = "auto"  # samples of the opponent policy per prompt (Nash-MP)
    reset_optimizer: bool = True         # a fresh optimizer each iteration (phases share one)
    fast_slow: FastSlowConfig = field(default_factory=FastSlowConfig)


@dataclass
class OnlineEvalConfig:
    prompts: int = 32                    # held-out prompts
    split: str = "test"                  # which held-out prompts: test, or validation (a task that has one,
                                         # e.g. intransitive with task_options.validation_fraction)
    samples_per_prompt: int = 4          # for the sampled win-rate against the initial policy
    gap_beta: float = 0.1                # beta of the KL-regularised duality gap (reference: the initial policy)
    temperature: float = 1.0


@dataclass
class OnlineConfig(NamedRun):
    name: str = "online"
    output_dir: str = "runs/{name}"
    task: str = "intransitive"
    task_options: dict = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    loss: Union[str, dict] = "sppo"
    iterations: int = 3
    prompts_per_iteration: int = 64
    domains: list[dict] = field(default_factory=list)  # a domain-shift sequence: task_options overrides, one per
                                                 # domain, each for an equal share of the iterations
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=20, batch_size=16, lr=1e-4,
                                                                    warmup_ratio=0.0, schedule="constant"))
    eval: OnlineEvalConfig = field(default_factory=OnlineEvalConfig)


def load_online_config(path: str | Path | None = None, overrides: list[str] | None = None) -> OnlineConfig:
    """Defaults, then the YAML recipe, then `--key=value` overrides. `train` keys are per iteration."""
    data = to_dict(OnlineConfig())
    if path is not None:  # a recipe's loss and free-form options replace the defaults, never merge
        merge_recipe(data, read_recipe(path, "an online recipe"), replaced=("loss", "options", "task_options"))
    cfg = with_overrides(OnlineConfig, data, overrides)
    try:  # a misspelt judge option fails now, listing the valid ones, not when the judge is built
        check_judge_options(cfg.judge.kind, cfg.judge.options)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if cfg.eval.split not in ("test", "validation"):
        raise ConfigError(f"eval.split must be 'test' or 'validation', got {cfg.eval.split!r}")
    return cfg
