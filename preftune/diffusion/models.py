"""Loading a diffusion or flow model from a local directory, and calling any of them the same way.

Two layouts load with `from_pretrained`:
- a diffusers pipeline directory (model_index.json): the trainable network is its `unet` (SD1.5/SD2
  style UNet2DConditionModel) or `transformer` (SD3-style flow transformer); captions go through
  the pipeline's own `encode_prompt`, images through its VAE;
- a denoiser directory: `denoiser/` (any diffusers ModelMixin, e.g. the toy MLP or a bare UNet),
  `scheduler/`, and for a toy `toy.json` naming its task (conditions are class ids or controls).
`builtin:toy-<name>` resolves to a cached toy directory (toy_models.py).

Every network is called as `call(x_t, model_time, cond)` with `cond` a dict of keyword arguments
(encoder_hidden_states, pooled_projections, class_labels, control): the first argument's name
(`sample` for UNets, `hidden_states` for transformers) is read from the network's signature, so any
model with one of those call signatures works.
"""
from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from preftune.diffusion.schedules import Schedule

NETWORK_COMPONENTS = ("unet", "transformer")


def innermost(network: nn.Module) -> nn.Module:
    """The model under DDP/FSDP (`.module`) and peft (`.get_base_model()`) wrappers."""
    while True:
        if hasattr(network, "module") and isinstance(network.module, nn.Module):
            network = network.module
        elif hasattr(network, "get_base_model"):
            network = network.get_base_model()
        else:
            return network


def sample_argument(network: nn.Module) -> str:
    """The name of the noisy-sample argument of the network's forward: `sample` or `hidden_states`."""
    params = [p for p in inspect.signature(innermost(network).forward).parameters if p != "self"]
    return params[0]


def input_dtype(network: nn.Module) -> torch.dtype:
    """The dtype the network computes in: that of its first floating weight (under LoRA, the base's)."""
    return next((p.dtype for p in network.parameters() if p.is_floating_point()), torch.float32)


def network_call(network: nn.Module, argument: str) -> Callable[[Tensor, Tensor, Any], Tensor]:
    """The network as (x_t, time, cond) -> prediction. Floating inputs are cast to the network's dtype:
    samples are drawn in fp32, text encoders may run in bf16, and a frozen bf16 reference sits beside an
    fp32 policy (train/precision.py); under autocast torch casts per operation anyway."""
    def call(x_t: Tensor, time: Tensor, cond: dict | None) -> Tensor:
        dtype = input_dtype(network)
        cond = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in (cond or {}).items()}
        out = network(**{argument: x_t.to(dtype)}, timestep=time, **cond)
        return out.sample if hasattr(out, "sample") else out[0]
    return call


@dataclass
class DiffusionModel:
    """A trainable network with its schedule and what turns raw conditions and images into its inputs."""

    network: nn.Module
    schedule: Schedule
    path: Path
    argument: str                   # the network's noisy-sample argument name
    sample_shape: tuple[int, ...]   # one x0 in the space the network denoises (latents for a VAE pipeline)
    task: Any = None                # a ToyTask for toy models
    pipeline: Any = None            # the diffusers pipeline (text encoders, VAE) for pipeline directories
    component: str = "denoiser"     # unet | transformer | denoiser
    frames: int = 0                 # a video network's frames per sample (its samples are (C, F, h, w))

    @property
    def pixel_shape(self) -> tuple[int, ...]:
        """One sample as the data hold it: images at the VAE's input resolution, else the network's shape."""
        vae = getattr(self.pipeline, "vae", None)
        if vae is None:
            return self.sample_shape
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        height, width = self.sample_shape[-2:]
        image = (vae.config.in_channels, height * factor, width * factor)
        return (self.frames, *image) if self.frames else image

    @property
    def frame_dim(self) -> int:
        """Where the frames are in a batch of samples: (N, F, ...) for toy videos, (N, C, F, h, w) for video networks."""
        return 2 if self.frames and self.pipeline is not None else 1

    @property
    def conditioning(self) -> str:
        if self.pipeline is not None:
            return "text"
        return "none" if self.task is None else self.task.condition_kind

    def call(self, network: nn.Module | None = None) -> Callable[[Tensor, Tensor, Any], Tensor]:
        return network_call(self.network if network is None else network, self.argument)

    @torch.no_grad()
    def condition(self, raw: Any, device=None) -> dict:
        """Network keyword arguments for a batch of raw conditions: captions (list of str), class ids or
        control vectors (tensors), or None (unconditional)."""
        if self.pipeline is not None:
            return encode_captions(self.pipeline, list(raw), device)
        if raw is None:
            return {}
        raw = torch.as_tensor(raw).to(device)
        return {"class_labels": raw.long()} if self.task is not None and self.task.num_classes else {"control": raw.float()}

    def null_condition(self, n: int, device=None) -> dict | None:
        """The unconditional input of classifier-free guidance: empty captions or the null class."""
        if self.pipeline is not None:
            return self.condition([""] * n, device)
        if self.task is not None and self.task.num_classes:
            return {"class_labels": torch.full((n,), self.task.num_classes, device=device)}
        return None

    def drop_conditions(self, cond: dict, drop: Tensor) -> dict:
        """Replace the conditions of the examples where `drop` is True by the unconditional ones
        (Diffusion-DPO's proportion_empty_prompts)."""
        if not bool(drop.any()):
            return cond
        null = self.null_condition(len(drop), drop.device)
        if null is None:
            return cond
        return {k: torch.where(drop.reshape(-1, *([1] * (v.dim() - 1))), null[k].to(v.dtype), v) for k, v in cond.items()}

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """Pixels in [-1, 1] -> the space the network denoises (the VAE's scaled latents, or as is)."""
        vae = getattr(self.pipeline, "vae", None)
        if vae is None:
            return images
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        if self.frames:   # (N, F, 3, H, W): each frame through the VAE, then (N, C, F, h, w)
            latents = vae.encode(images.flatten(0, 1).to(vae.dtype)).latent_dist.mean
            latents = latents.reshape(images.shape[0], self.frames, *latents.shape[1:]).transpose(1, 2)
        else:
            latents = vae.encode(images.to(vae.dtype)).latent_dist.mean
        return ((latents - shift) * vae.config.scaling_factor).float()

    @torch.no_grad()
    def decode(self, x0: Tensor) -> Tensor:
        """The inverse of encode_images: network space -> pixels in [-1, 1] (toys: the samples themselves)."""
        vae = getattr(self.pipeline, "vae", None)
        if vae is None:
            return x0
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        latents = x0.transpose(1, 2).flatten(0, 1) if self.frames else x0   # video: (N, C, F, h, w) -> frames
        pixels = vae.decode((latents / vae.config.scaling_factor + shift).to(vae.dtype)).sample.float().clamp(-1, 1)
        return pixels.reshape(x0.shape[0], self.frames, *pixels.shape[1:]) if self.frames else pixels


@torch.no_grad()
def encode_captions(pipeline, captions: list[str], device=None) -> dict:
    """Caption embeddings through the pipeline's own encode_prompt (SD1.5/SD2 UNets, SD3 transformers)."""
    device = device or pipeline.device
    if hasattr(pipeline, "transformer") and "prompt_3" in inspect.signature(pipeline.encode_prompt).parameters:
        embeds, _, pooled, _ = pipeline.encode_prompt(prompt=captions, prompt_2=None, prompt_3=None, device=device,
                                                      num_images_per_prompt=1, do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}
    embeds, _ = pipeline.encode_prompt(captions, device, 1, False)
    return {"encoder_hidden_states": embeds}


def _pickle_hint(path: Path, allow_pickle: bool, load, *args, **kwargs):
    """`load(*args, **kwargs)`; a directory holding only pickle (.bin) weights fails with one line naming
    the setting that allows them, rather than diffusers' error about missing safetensors."""
    try:
        return load(*args, **kwargs)
    except (OSError, ValueError) as error:
        if allow_pickle or not any(path.rglob("*.bin")) or "safetensors" not in str(error):
            raise
        raise ValueError(f"{path}: weights are pickle files (.bin), which can run code when read; set "
                         f"model.allow_pickle: true to load them (else convert them to safetensors)") from None


def dtype_argument(dtype: torch.dtype) -> dict:
    """from_pretrained's dtype keyword: `dtype` where diffusers has renamed `torch_dtype` (and warns on the old
    name), `torch_dtype` before; nothing for fp32, the default."""
    if dtype == torch.float32:
        return {}
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}


def load_diffusion_model(name_or_path: str, dtype: torch.dtype = torch.float32, progress: bool = True,
                         frames: int = 0, allow_pickle: bool = False) -> DiffusionModel:
    """Load a pipeline directory, a denoiser directory or a builtin toy (see the module docstring).
    frames: the frames per sample of a video network (UNet3DConditionModel). Weights load from
    safetensors only unless allow_pickle (a .bin pickle can run code when read), as for language models."""
    import diffusers

    from preftune.diffusion.toy_models import resolve_toy

    path = Path(resolve_toy(name_or_path, progress))
    if not path.is_dir():
        raise FileNotFoundError(f"model {name_or_path!r}: no such directory (give a diffusers pipeline directory, "
                                f"a denoiser directory with denoiser/ and scheduler/, or builtin:toy-<name>)")
    if (path / "model_index.json").exists():
        index = json.loads((path / "model_index.json").read_text())
        absent = {k: None for k, v in index.items() if isinstance(v, list) and v and v[0] is None}  # e.g. SD3 without T5
        typed = {"use_safetensors": None if allow_pickle else True,
                 **dtype_argument(dtype)}
        pipeline = _pickle_hint(path, allow_pickle, diffusers.DiffusionPipeline.from_pretrained, str(path), **typed,
                                **absent)
        component = next((c for c in NETWORK_COMPONENTS if getattr(pipeline, c, None) is not None), None)
        if component is None:
            raise ValueError(f"{path}: the pipeline has neither a unet nor a transformer to train")
        network = getattr(pipeline, component)
        for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
            if getattr(pipeline, name, None) is not None:
                getattr(pipeline, name).requires_grad_(False).eval()
        schedule = Schedule.from_scheduler(pipeline.scheduler)
        config = network.config
        channels = config.get("in_channels")
        size = config.get("sample_size")
        video = "3D" in type(network).__name__
        if video and frames < 1:
            raise ValueError(f"{path}: {type(network).__name__} denoises videos: set model.frames (frames per sample)")
        shape = (channels, frames, size, size) if video else (channels, size, size)
        return DiffusionModel(network, schedule, path, sample_argument(network), shape, pipeline=pipeline,
                              component=component, frames=frames if video else 0)
    if not (path / "denoiser").is_dir() or not (path / "scheduler").is_dir():
        raise FileNotFoundError(f"{path}: not a model directory (no model_index.json, and no denoiser/ + scheduler/)")
    config = json.loads((path / "denoiser" / "config.json").read_text())
    cls = _network_class(config.get("_class_name", ""))
    network = _pickle_hint(path, allow_pickle, cls.from_pretrained, str(path / "denoiser"),
                           use_safetensors=None if allow_pickle else True,
                           **dtype_argument(dtype))
    scheduler_config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_pretrained(str(path / "scheduler"))
    task = None
    if (path / "toy.json").exists():
        from preftune.diffusion.toys import get_task

        task = get_task(json.loads((path / "toy.json").read_text())["task"])
    shape = tuple(task.shape) if task is not None else (network.config.in_channels, network.config.sample_size,
                                                        network.config.sample_size)
    return DiffusionModel(network, Schedule.from_scheduler(scheduler), path, sample_argument(network), shape, task=task)


def reference_call(reference, model: DiffusionModel, unwrap=lambda m: m):
    """The reference network (a preftune.models.Reference) as a call (x_t, time, cond) -> prediction,
    or None without a reference. A LoRA-disabled reference disables the adapters only for its own
    forward, so the policy's forward in the same step keeps them."""
    if reference.kind == "none":
        return None

    def call(x_t, time, cond):
        with reference.model(unwrap) as network:
            return model.call(network)(x_t, time, cond)
    return call


def _network_class(name: str):
    import diffusers

    from preftune.diffusion.toy_models import ToyDenoiser

    if name == "ToyDenoiser":
        return ToyDenoiser
    if not hasattr(diffusers, name):
        raise ValueError(f"denoiser class {name!r} is not a diffusers model class")
    return getattr(diffusers, name)


def save_network(model: DiffusionModel, network: nn.Module, out: Path, dtype: torch.dtype | None = None) -> Path:
    """Save a trained network where the same loader (and a diffusers pipeline) finds it, in `dtype` (the
    dtype it was loaded in; its fp32 master weights are rounded to it).

    A pipeline directory is copied with the network replaced (LoRA merged into the weights), so
    `DiffusionPipeline.from_pretrained(out)` samples from the tuned model; a denoiser directory keeps
    its scheduler and toy.json beside the new denoiser/.
    """
    import shutil

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model.path, out, ignore=shutil.ignore_patterns(model.component))
    base = network
    if hasattr(base, "merge_and_unload"):
        base = copy.deepcopy(base).merge_and_unload()
    if dtype is not None and any(p.dtype != dtype for p in base.parameters() if p.is_floating_point()):
        base = copy.deepcopy(base) if base is network else base
        for tensor in (*base.parameters(), *base.buffers()):   # not ModelMixin.to(), which warns for every model
            if tensor.is_floating_point():
                tensor.data = tensor.data.to(dtype)
    base.save_pretrained(str(out / model.component))
    return out
