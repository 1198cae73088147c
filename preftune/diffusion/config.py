"""Typed recipes for `preftune diffusion train|sample|eval` (configs/diffusion/<method>.yaml).

The same machinery as the language-model recipes (preftune/config.py): every key is declared here
with its type and default, `--section.key=value` overrides apply on top, and an unknown key is an
error that lists the valid ones. `train` and `model.lora` are the language side's own sections.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Union

from preftune.config import LoraConfig, NamedRun, read_recipe, TrainConfig, with_overrides


@dataclass
class DiffusionModelConfig:
    name_or_path: str = "builtin:toy-gmm"   # a pipeline dir, a denoiser dir (denoiser/ + scheduler/), builtin:toy-<name>
    dtype: str = "float32"                  # weights: float32 or bfloat16
    frames: int = 0                         # video networks (UNet3DConditionModel): frames per sample
    allow_pickle: bool = False              # load .bin weights (a pickle can run code); else safetensors only
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class ToyDataConfig:
    """How offline rows are made when data.source is `toy`: samples of the base model scored by the toy's reward."""

    prompts: int = 256                   # conditions (one group of samples each; unconditional toys: groups)
    samples_per_prompt: int = 2          # pairs: 2; lists: k
    pairing: str = "best-worst"          # best-worst | random: two base samples ordered by reward (the same for k = 2);
                                         # structural: StructuralDPO pairs (flow models); control: CPO's draws as image pairs
    positives: int = 0                   # unpaired kinds: expert / positive / real samples (0: as many as pairs)
    label: str = "reward"                # unpaired: reward (top half positive) | target (the toy's own hit test) | data
    eta: float = 0.5                     # partial noising of structural pairs; the control shift of CPO's pairs
    steps: int = 20                      # sampler steps for the base samples


# The row kinds of preftune/diffusion/data.py (KINDS), listed here so that reading a recipe imports no torch.
DATA_KINDS = ("image-pairs", "image-lists", "unpaired", "condition-pairs", "segment-pairs", "prompts")


@dataclass
class DiffusionDataConfig:
    ALLOWED_VALUES: ClassVar[dict] = {"kind": (lambda v: v in ("auto", *DATA_KINDS), f"auto, {', '.join(DATA_KINDS)}")}
    source: str = "toy"                  # a file / datasets dir / hf:owner/name of `kind` rows, or `toy`
    kind: str = "auto"                   # auto: the objective's input kind (online kinds read prompts)
    eval_source: str | None = None       # held-out rows of the same kind (implicit accuracy)
    eval_fraction: float = 0.1           # or hold out this share of `source`
    image_root: str | None = None        # where relative image paths point (default: the data file's folder)
    on_bad_row: str = "error"            # error | skip
    split: str = "train"
    limit: int | None = None
    toy: ToyDataConfig = field(default_factory=ToyDataConfig)


@dataclass
class NoiseConfig:
    """How the (t, eps) of each training error are drawn (diffusion.md §0-§10)."""

    time: str = "uniform"                # uniform | logit_normal (DSO)
    share_noise: str = "auto"            # auto (per method: shared within an example except DSO/DDO) | yes | no
    inversion_steps: int = -1            # SmPO's ReNoise inversion grid K; -1: 5 for smpo, off otherwise
    condition_dropout: float = 0.0       # captions replaced by "" (Diffusion-DPO: 0.2)
    reduction: str = "mean"              # mean | sum over dims


@dataclass
class RolloutConfig:
    """Online methods: what is sampled each rollout and how it is turned into training examples."""

    prompts: int = 16                    # conditions per rollout
    group_size: int = 2                  # samples per condition (D3PO pairs 2; AWM/DDPO/GRPO groups)
    steps: int = 20                      # sampling steps
    sampler: str = "auto"                # auto (ddim for DDPM models, sde for flow) | ddim | sde | ode
    noise: float = -1.0                  # DDIM eta or flow noise level; -1: 1.0 (ddim), 0.7 (sde)
    guidance: float = 1.0                # classifier-free guidance scale
    updates_per_rollout: int = 1         # optimizer steps per rollout (>1: PPO's off-policy minibatches)
    timestep_fraction: float = 1.0       # share of a trajectory's steps trained on (step-level methods)
    draws: int = 6                       # AWM: fresh (t, eps) draws per sample
    buffer_size: int = 4                 # Diffusion-DRO: rollout batches kept (FIFO)
    sync_every: int = 16                 # Diffusion-DRO: the lagging sampler copies the policy every N steps
    global_std: bool = True              # advantages: std over all samples (Flow-GRPO, AWM) or per group
    advantage_clip: float = 5.0


@dataclass
class DiffusionEvalConfig:
    every: int = 0                       # steps between evaluations (0: start and end only)
    samples: int = 512                   # samples drawn for the reward / target / quality metrics
    steps: int = 20
    sampler: str = "auto"                # auto: deterministic (DDIM eta 0 / flow ODE)
    grid: int = 16                       # samples in the PNG grid (0: none)
    seed: int = 1234


@dataclass
class DiffusionConfig(NamedRun):
    name: str = "diffusion"
    output_dir: str = "runs/{name}"
    model: DiffusionModelConfig = field(default_factory=DiffusionModelConfig)
    reference: str = "auto"              # auto | model | lora-disabled | none | a path
    loss: Union[str, dict] = "diffusion_dpo"
    reward: Union[str, dict] = "toy"     # toy | brightness | darkness | {type: clip|pickscore|aesthetic, path: ...}
    data: DiffusionDataConfig = field(default_factory=DiffusionDataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, batch_size=32, steps=100, warmup_ratio=0.0,
                                                                     schedule="constant", weight_decay=0.0))
    eval: DiffusionEvalConfig = field(default_factory=DiffusionEvalConfig)


def load_diffusion_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DiffusionConfig:
    data = read_recipe(path, "a diffusion recipe") if path is not None else {}
    return with_overrides(DiffusionConfig, data, overrides)


def diffusion_keys() -> list[str]:
    from preftune.config import valid_keys

    return valid_keys(DiffusionConfig)
