"""Typed recipes of `preftune rl` (configs/rl/<method>.yaml), with `--section.key=value` overrides.

Same rules as preftune/config.py: every key is declared with its type and default; an unknown key or
a wrong type is an error naming the key. A recipe whose `task` is `lot-sizing` trains an MLP actor-critic
on the lot-sizing environment (LotSizingRunConfig); any other task trains a language model (RLConfig).
`train` holds the loop's settings as in `preftune train`; in an RL run `train.steps` / `train.epochs`
count optimizer steps / passes over one iteration's rollouts, and `train.checkpoint_every` counts
iterations (updates for lot-sizing).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from preftune.config import ConfigError, ModelConfig, NamedRun, TrainConfig, merge_recipe, read_recipe, to_dict, with_overrides
from preftune.train.online_config import WarmStartConfig


def rl_train_defaults(**overrides) -> TrainConfig:
    base = dict(epochs=1.0, batch_size=16, lr=1e-5, warmup_ratio=0.0, schedule="constant", checkpoint_every=1,
                max_grad_norm=1.0)
    return TrainConfig(**{**base, **overrides})


@dataclass
class RolloutConfig:
    """Sampling from the policy: prompts per iteration, G responses per prompt, decoding settings."""

    prompts_per_iteration: int = 32
    samples_per_prompt: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 24
    batch_size: int = 64


@dataclass
class ValueModelConfig:
    """The critic (value model) of ppo, rto, oreo and dapo_step: an LM backbone with a scalar head."""

    name_or_path: str = "policy"     # policy: a copy of the starting policy's backbone; or a saved value model / LM
    shared_backbone: bool = False    # the head on the policy's own backbone (one model; value loss reaches it)
    lr: float = 1e-4
    steps: int = 200                 # dapo_step: regression steps of its once-trained step critic
    batch_size: int = 32


@dataclass
class RewardConfig:
    """Where rewards come from (online.md §0 oracle adapters)."""

    source: str = "task"             # task: the task's gold score | aspects: the task's per-aspect gold scores |
                                     # model: a saved value model with K outputs (path) | learned: train a K-output
                                     # reward model on scored samples of the starting policy first (mo_grpo)
    path: str | None = None
    aspects: list[str] = field(default_factory=list)  # aspect names (default: all the task's objectives)
    samples: int = 512               # learned: scored samples the reward model trains on
    steps: int = 300
    lr: float = 3e-4
    batch_size: int = 32


@dataclass
class DpoModelConfig:
    """RTO's DPO policy: a saved model, or `auto` (DPO on the task's pairs from the starting policy, by
    `preftune train`'s own loop, stored in the run directory)."""

    path: str = "auto"
    beta: float = 0.1
    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 32
    samples_per_prompt: int = 4


@dataclass
class DapoConfig:
    states: int = 32                 # step prefixes per iteration (from sampled solutions)
    candidates: int = 4              # K next steps sampled per state
    completions: int = 8             # M Monte-Carlo completions per prefix for the critic's labels
    critic_prompts: int = 64         # prompts whose sampled solutions give the critic's prefixes
    critic_every_iteration: bool = False  # retrain the critic on the new pi_ref each iteration (iterative DAPO)


@dataclass
class OreoConfig:
    prompts: int = 256               # offline data: prompts, sampled once from the starting policy
    samples_per_prompt: int = 4
    beams: int = 4                   # value-guided step beam search at evaluation (0: off)


@dataclass
class MctsConfig:
    simulations: int = 8             # per committed step (x root_multiplier at the first)
    root_multiplier: int = 4
    children: int = 2
    depth_limit: int = 3
    exploration: float = 1.0
    node_value: str = "outcome"      # outcome (terminal +-1 only) | verifier (the task's step scores) | self_eval
    length_penalty: float = 1.25
    max_step_tokens: int = 16


@dataclass
class StepConfig:
    separator: str = ";"             # a reasoning step ends at this text ("\n\n" in real text) or at EOS


@dataclass
class RLEvalConfig:
    prompts: int = 64
    samples_per_prompt: int = 2
    temperature: float = 1.0
    max_new_tokens: int = 24


@dataclass
class RLConfig(NamedRun):
    name: str = "rl"
    output_dir: str = "runs/{name}"
    task: str = "multistep"
    task_options: dict = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    loss: Union[str, dict] = "grpo"
    iterations: int = 10
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=rl_train_defaults)
    value: ValueModelConfig = field(default_factory=ValueModelConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    steps: StepConfig = field(default_factory=StepConfig)
    dpo: DpoModelConfig = field(default_factory=DpoModelConfig)
    dapo: DapoConfig = field(default_factory=DapoConfig)
    oreo: OreoConfig = field(default_factory=OreoConfig)
    mcts: MctsConfig = field(default_factory=MctsConfig)
    eval: RLEvalConfig = field(default_factory=RLEvalConfig)


@dataclass
class LotSizingRunConfig(NamedRun):
    """PPO / PDPPO on the stochastic lot-sizing environment (preftune/rl/lot_sizing_train.py)."""

    name: str = "lot-sizing"
    output_dir: str = "runs/{name}"
    task: str = "lot-sizing"
    instance: dict = field(default_factory=dict)  # overrides of the small instance (lot_sizing.small_instance)
    observe_time: bool = True
    loss: Union[str, dict] = "pdppo"
    updates: int = 500
    episodes_per_update: int = 4     # the official update every 4 x max_ep_len steps
    epochs: int = 60                 # K full-batch epochs per update
    gamma: float = 0.99
    hidden: int = 128
    critic_lr: float = 1e-3
    eval_every: int = 50             # exact expected return of the policy (dynamic programming), in updates
    train: TrainConfig = field(default_factory=lambda: rl_train_defaults(lr=5.5e-4, weight_decay=1e-3,
                                                                         checkpoint_every=50))


def load_rl_config(path: str | Path | None = None, overrides: list[str] | None = None):
    """Defaults, then the YAML recipe, then `--key=value` overrides; the task decides the kind of run."""
    recipe = read_recipe(path, "an rl recipe") if path is not None else {}
    task = recipe.get("task", "multistep")
    for text in overrides or []:
        if text.startswith("--task="):
            task = text.split("=", 1)[1]
    cls = LotSizingRunConfig if task == "lot-sizing" else RLConfig
    data = to_dict(cls())
    merge_recipe(data, recipe, replaced=("loss", "task_options", "instance"))
    try:
        return with_overrides(cls, data, overrides)
    except ConfigError as error:
        raise ConfigError(f"{path or 'rl defaults'}: {error}") from None
