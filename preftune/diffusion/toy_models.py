"""The toy denoiser, a diffusers `ModelMixin`, and its pretraining from scratch, cached (diffusion.md §12).

`ToyDenoiser` is an MLP (3 x 128 by default) with a sinusoidal time embedding and an optional class
or control embedding. It subclasses diffusers' ModelMixin/ConfigMixin, so it saves and loads with
save_pretrained/from_pretrained and trains through exactly the code path of a UNet2DConditionModel:
a toy base model is a directory with `denoiser/`, `scheduler/` (a DDPMScheduler or a
FlowMatchEulerDiscreteScheduler) and `toy.json` (its task). `builtin:toy-<name>` names the recipes of
TOY_MODELS, trained once (tens of seconds on 2 cores) into $PREFTUNE_CACHE and reused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import ConfigMixin, DDPMScheduler, FlowMatchEulerDiscreteScheduler, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from preftune.diffusion.primitives import denoise_error
from preftune.diffusion.schedules import Schedule
from preftune.diffusion.toys import ToyModelConfig, get_task


@dataclass
class ToyOutput:
    sample: torch.Tensor


class ToyDenoiser(ModelMixin, ConfigMixin):
    """f(x_t, t, c): an MLP on the flattened sample, the time embedding and the condition embedding."""

    @register_to_config
    def __init__(self, sample_shape: tuple = (2,), hidden: int = 128, layers: int = 3, num_classes: int = 0,
                 control_dim: int = 0, time_dim: int = 32, time_scale: float = 1000.0):
        super().__init__()
        features = math.prod(sample_shape)
        self.time_in = nn.Linear(time_dim, hidden)
        self.class_in = nn.Embedding(num_classes + 1, hidden) if num_classes else None   # last index: null class
        self.control_in = nn.Linear(control_dim, hidden) if control_dim else None
        self.input = nn.Linear(features, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.output = nn.Linear(hidden, features)

    def embed_time(self, timestep: torch.Tensor, batch: int, device) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=device).float().reshape(-1).expand(batch) / self.config.time_scale
        half = self.config.time_dim // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=device).float() / half)
        angles = 1000.0 * t[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None,
                control: torch.Tensor | None = None, return_dict: bool = True):
        batch = sample.shape[0]
        time = self.embed_time(timestep, batch, sample.device).to(sample.dtype)  # a bf16 network: bf16 in
        h = self.input(sample.flatten(1)) + self.time_in(time)
        if self.class_in is not None:
            labels = (torch.full((batch,), self.config.num_classes, device=sample.device) if class_labels is None
                      else class_labels.long())
            h = h + self.class_in(labels)
        if self.control_in is not None and control is not None:
            h = h + self.control_in(control.to(h.dtype))
        for block in self.blocks:
            h = h + nn.functional.silu(block(nn.functional.silu(h)))
        out = self.output(nn.functional.silu(h)).reshape(sample.shape)
        return ToyOutput(out) if return_dict else (out,)


# --------------------------------------------------------------------------- named base models

TOY_MODELS = {
    "gmm": ToyModelConfig(task="gmm"),
    "gmm-flow": ToyModelConfig(task="gmm", parameterization="flow"),
    "gmm-cond-flow": ToyModelConfig(task="gmm-cond", parameterization="flow"),
    "gmm-cond": ToyModelConfig(task="gmm-cond"),
    "gmm-underfit": ToyModelConfig(task="gmm", hidden=32, layers=1, steps=300),
    "gmm-video": ToyModelConfig(task="gmm-video", parameterization="flow", hidden=256),
    "gmm-control": ToyModelConfig(task="gmm-control", control_jitter=0.3),
    "digits": ToyModelConfig(task="digits", timesteps=200, hidden=256, steps=6000, batch_size=256, lr=1e-3),
}


def make_scheduler(cfg: ToyModelConfig):
    if cfg.parameterization == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    return DDPMScheduler(num_train_timesteps=cfg.timesteps, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                         prediction_type=cfg.parameterization, clip_sample=False)


def build_network(cfg: ToyModelConfig) -> ToyDenoiser:
    task = get_task(cfg.task)
    torch.manual_seed(cfg.seed)
    return ToyDenoiser(sample_shape=tuple(task.shape), hidden=cfg.hidden, layers=cfg.layers,
                       num_classes=task.num_classes, control_dim=task.control_dim,
                       time_scale=1000.0 if cfg.parameterization == "flow" else float(cfg.timesteps))


def condition_kwargs(task, conditions) -> dict:
    """The network's keyword arguments for a batch of raw toy conditions (None: unconditional)."""
    if conditions is None:
        return {}
    return {"class_labels": conditions} if task.num_classes else {"control": conditions}


def pretrain(cfg: ToyModelConfig, out: Path, progress: bool = True) -> Path:
    """Train a toy denoiser from scratch on its task's data (plain denoising loss) and save it to `out`."""
    from tqdm.auto import tqdm

    task = get_task(cfg.task)
    network = build_network(cfg)
    scheduler = make_scheduler(cfg)
    schedule = Schedule.from_scheduler(scheduler)
    optimiser = torch.optim.Adam(network.parameters(), lr=cfg.lr)
    lr = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, cfg.steps)
    g = torch.Generator().manual_seed(cfg.seed)

    def model(x_t, time, cond):
        return network(x_t, time, **condition_kwargs(task, cond)).sample

    for _ in tqdm(range(cfg.steps), desc=f"pretrain toy {cfg.task} ({cfg.parameterization})", disable=not progress,
                  mininterval=1.0):
        x0, cond = task.sample_data(cfg.batch_size, g)
        if cond is not None and task.num_classes:
            drop = torch.rand(cfg.batch_size, generator=g) < cfg.condition_dropout
            cond = torch.where(drop, torch.full_like(cond, task.num_classes), cond)
        elif cond is not None and cfg.control_jitter:
            cond = cond + cfg.control_jitter * torch.randn(cond.shape, generator=g)
        t = schedule.sample_time(cfg.batch_size, g)
        eps = torch.randn(x0.shape, generator=g)
        error, _ = denoise_error(model, x0, cond, t, eps, schedule)
        optimiser.zero_grad()
        error.mean().backward()
        optimiser.step()
        lr.step()
    out.mkdir(parents=True, exist_ok=True)
    network.save_pretrained(out / "denoiser")
    scheduler.save_pretrained(out / "scheduler")
    (out / "toy.json").write_text(json.dumps({"task": cfg.task, "config": dataclasses.asdict(cfg)}, indent=1))
    return out


def toy_model_path(name: str) -> Path:
    """$PREFTUNE_CACHE/diffusion/toy-<name>-<fingerprint of its settings>."""
    import os

    from preftune import __version__

    if name not in TOY_MODELS:
        raise ValueError(f"unknown toy model builtin:toy-{name}; toy models: "
                         f"{', '.join('builtin:toy-' + n for n in TOY_MODELS)}")
    settings = json.dumps({"version": __version__, **dataclasses.asdict(TOY_MODELS[name])}, sort_keys=True)
    fingerprint = hashlib.sha256(settings.encode()).hexdigest()[:12]
    root = Path(os.environ.get("PREFTUNE_CACHE", Path.home() / ".cache" / "preftune"))
    return root / "diffusion" / f"toy-{name}-{fingerprint}"


def resolve_toy(name_or_path: str, progress: bool = True) -> str:
    """`builtin:toy-<name>` -> its cached directory (pretrained now if missing); anything else unchanged."""
    if not name_or_path.startswith("builtin:toy-"):
        return name_or_path
    from preftune.models import build_once

    name = name_or_path[len("builtin:toy-"):]
    path = toy_model_path(name)
    return str(build_once(path, "toy.json", lambda scratch: pretrain(TOY_MODELS[name], scratch, progress)))
