"""Value and reward models: a causal-LM backbone with a linear head of K outputs (K = 1 for a critic).

`ValueModel.from_pretrained(path)` takes a directory written by `save_pretrained` (the backbone, saved
by transformers, and the head in `value_head.pt` with `value_head.json`), or any causal LM / backbone
(a hub id, the built-in tiny model, a policy's directory), which then gets a fresh zero head (the
official OREO critic starts from a zero head; V = 0 everywhere). A `ValueHead` alone sits on the
policy's own backbone when `value.shared_backbone` is set.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

HEAD_WEIGHTS, HEAD_CONFIG = "value_head.pt", "value_head.json"


class ValueHead(nn.Module):
    """hidden states (..., H) -> (..., K) values; zero-initialised."""

    def __init__(self, hidden_size: int, outputs: int = 1, names: list[str] | None = None):
        super().__init__()
        self.linear = nn.Linear(hidden_size, outputs)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.names = list(names) if names else [f"value_{k}" for k in range(outputs)]

    def forward(self, hidden: Tensor) -> Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype))

    def config(self) -> dict:
        return {"hidden_size": self.linear.in_features, "outputs": self.linear.out_features, "names": self.names}


def hidden_size_of(model) -> int:
    config = model.config
    return getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or config.d_model


class ValueModel(nn.Module):
    """A backbone (transformers AutoModel, no LM head) and a ValueHead: values at every position."""

    def __init__(self, backbone, head: ValueHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    @property
    def outputs(self) -> int:
        return self.head.linear.out_features

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(N, L, K) the head's values on the last hidden state of every position."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return self.head(hidden)

    @classmethod
    def from_pretrained(cls, name_or_path: str, outputs: int = 1, names: list[str] | None = None,
                        dtype: str = "float32", seed: int = 0, **loading) -> "ValueModel":
        """A saved value model, or a fresh zero head of `outputs` values on any causal LM's backbone.
        `loading`: trust_remote_code / allow_pickle, as for any model (models.load_pretrained)."""
        from transformers import AutoModel

        from preftune.models import (BUILTIN_TINY, build_tiny_model, build_tiny_tokenizer, load_pretrained, resolve_dtype,
                                     resolve_model_name)

        path = resolve_model_name(name_or_path)
        if path == BUILTIN_TINY:
            backbone = build_tiny_model(build_tiny_tokenizer(), seed=seed).model.to(resolve_dtype(dtype))
        else:
            backbone = load_pretrained(AutoModel, path, dtype=resolve_dtype(dtype), **loading)
        config_file = Path(path) / HEAD_CONFIG
        if config_file.exists():
            config = json.loads(config_file.read_text())
            head = ValueHead(config["hidden_size"], config["outputs"], config["names"])
            head.load_state_dict(torch.load(Path(path) / HEAD_WEIGHTS, weights_only=True))
        else:
            head = ValueHead(hidden_size_of(backbone), outputs, names)
        return cls(backbone, head)

    @classmethod
    def from_policy(cls, policy, outputs: int = 1, names: list[str] | None = None) -> "ValueModel":
        """A copy of a causal LM's backbone (its `base_model`, without the LM head) under a fresh zero head."""
        import copy

        backbone = copy.deepcopy(policy.base_model)
        backbone.requires_grad_(True)
        return cls(backbone, ValueHead(hidden_size_of(backbone), outputs, names))

    def save_pretrained(self, path: str | Path, tokenizer=None) -> Path:
        path = Path(path)
        self.backbone.save_pretrained(str(path))
        save_head(self.head, path)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
        return path


def save_head(head: ValueHead, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), path / HEAD_WEIGHTS)
    (path / HEAD_CONFIG).write_text(json.dumps(head.config(), indent=1))


def last_token_values(values: Tensor, attention_mask: Tensor) -> Tensor:
    """(N, K) the values at each row's last real token (right padding): a reward model's score of the text."""
    last = attention_mask.long().sum(-1) - 1
    return values[torch.arange(values.shape[0], device=values.device), last]
