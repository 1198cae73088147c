"""Rewards for generated samples: one protocol, the toy ground truths, and image scorers from local paths.

A reward is a callable `reward(samples, conditions) -> (N,) or (N, M)` on decoded samples (pixels in
[-1, 1] for images, the samples themselves for toys) and their raw conditions (captions, class ids,
controls). Higher is better. `build_reward(spec)` reads the config value:

- "toy": the toy task's own ground-truth reward (toys.py);
- "brightness" / "darkness": mean pixel value (or its negative): a reward any image model can be
  tuned on in a test, with no weights;
- {type: clip, path: DIR}: cosine similarity of CLIP image and caption embeddings (transformers'
  CLIPModel and processor loaded from a local directory);
- {type: pickscore, path: DIR}: the same with the model's logit scale (PickScore checkpoints are CLIP
  models);
- {type: aesthetic, path: DIR, head: FILE}: a linear head (weight, bias in a torch/safetensors file)
  on the normalised CLIP image embedding, the LAION-aesthetic construction.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor


class Reward(Protocol):
    name: str

    def __call__(self, samples: Tensor, conditions: Any) -> Tensor: ...


class ToyReward:
    def __init__(self, task):
        self.task, self.name = task, f"toy:{task.name}"

    def __call__(self, samples: Tensor, conditions: Any) -> Tensor:
        return self.task.reward(samples.float().cpu(), None if conditions is None else torch.as_tensor(conditions).cpu())


class Brightness:
    def __init__(self, sign: float = 1.0):
        self.sign, self.name = sign, "brightness" if sign > 0 else "darkness"

    def __call__(self, samples: Tensor, conditions: Any) -> Tensor:
        return self.sign * samples.float().flatten(1).mean(1).cpu()


class ClipScore:
    """Caption-image agreement under a CLIP model from a local directory (no download)."""

    def __init__(self, path: str, use_logit_scale: bool = False, device=None):
        from transformers import CLIPModel, CLIPProcessor

        if not Path(path).is_dir():
            raise FileNotFoundError(f"CLIP reward: {path} is not a directory with a saved CLIP model")
        self.model = CLIPModel.from_pretrained(path).eval().requires_grad_(False).to(device or "cpu")
        self.processor = CLIPProcessor.from_pretrained(path)
        self.use_logit_scale = use_logit_scale
        self.name = ("pickscore:" if use_logit_scale else "clip:") + str(path)

    def embed_images(self, samples: Tensor) -> Tensor:
        images = ((samples.float().clamp(-1, 1) + 1) / 2).cpu()
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        pixels = self.processor(images=list(images), return_tensors="pt", do_rescale=False)["pixel_values"]
        features = self.model.get_image_features(pixel_values=pixels.to(self.model.device))
        features = getattr(features, "pooler_output", features)
        return torch.nn.functional.normalize(features, dim=-1)

    @torch.no_grad()
    def __call__(self, samples: Tensor, conditions: Any) -> Tensor:
        text = self.processor(text=list(conditions), return_tensors="pt", padding=True, truncation=True)
        text_features = self.model.get_text_features(**{k: v.to(self.model.device) for k, v in text.items()})
        text_features = torch.nn.functional.normalize(getattr(text_features, "pooler_output", text_features), dim=-1)
        similarity = (self.embed_images(samples) * text_features).sum(-1)
        if self.use_logit_scale:
            similarity = self.model.logit_scale.exp() * similarity
        return similarity.float().cpu()


class AestheticScore(ClipScore):
    """A linear head on the normalised CLIP image embedding (weight (1, D), bias (1,))."""

    def __init__(self, path: str, head: str, device=None):
        super().__init__(path, device=device)
        head_path = Path(head)
        if head_path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(head_path))
        else:
            state = torch.load(str(head_path), map_location="cpu", weights_only=True)
        self.weight, self.bias = state["weight"].float(), state["bias"].float()
        self.name = f"aesthetic:{head}"

    @torch.no_grad()
    def __call__(self, samples: Tensor, conditions: Any) -> Tensor:
        return (self.embed_images(samples).cpu() @ self.weight.T + self.bias)[:, 0]


def build_reward(spec: Any, task=None, device=None) -> Reward:
    """A reward from its config value (see the module docstring)."""
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"reward must be a name or a mapping with a type, got {spec!r}")
    kind = spec["type"]
    if kind == "toy":
        if task is None:
            raise ValueError("reward: toy needs a toy model (builtin:toy-<name> or a directory with toy.json)")
        return ToyReward(task)
    if kind in ("brightness", "darkness"):
        return Brightness(1.0 if kind == "brightness" else -1.0)
    if kind in ("clip", "pickscore", "aesthetic"):
        if "path" not in spec:
            raise ValueError(f"reward {kind} needs `path`: a local directory with a saved CLIP model")
        if kind == "aesthetic":
            return AestheticScore(spec["path"], spec["head"], device)
        return ClipScore(spec["path"], use_logit_scale=kind == "pickscore", device=device)
    raise ValueError(f"unknown reward type {kind!r}: toy, brightness, darkness, clip, pickscore or aesthetic")
