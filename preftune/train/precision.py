"""Mixed precision as accelerate does it: fp32 master weights, 16-bit compute under autocast.

`model.dtype` is the dtype a model is loaded in, kept in where it is frozen (a reference copy, a
LoRA base model) and saved in. The weights the optimizer steps are another matter: AdamW moves a
weight by about lr per step, and at preference-tuning learning rates (5e-7) that is far below
half a bf16 ulp of a typical weight (|w| = 0.02 has an ulp of 1.2e-4), so stepping bf16 weights
rounds almost every update away. Trainable weights held in a 16-bit dtype are therefore kept in
fp32 (the "master weights" of accelerate's mixed precision, which expects fp32 parameters and
autocast, `train.precision: bf16`, for the compute). A full fine-tune then holds 16 bytes per
parameter (fp32 weight, gradient and two AdamW moments) instead of 8; a frozen reference copy stays
at 2 (bf16), and LoRA keeps the base model in 16 bits (peft already holds adapters in fp32).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

HALF = (torch.bfloat16, torch.float16)


def fp32_master_weights(model: nn.Module) -> int:
    """Give every trainable 16-bit parameter fp32 storage (the same Parameter object, so optimizers and
    adapters built on it keep working); returns how many parameters changed dtype."""
    upcast = 0
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype in HALF:
            parameter.data = parameter.data.float()
            upcast += 1
    return upcast


def state_dict_in(state: dict, dtype: torch.dtype) -> dict:
    """The floating-point tensors of a state dict cast to `dtype` (the dtype a model is saved in)."""
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in state.items()}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def save_in_dtype(model, path: Path, dtype: torch.dtype, state_dict: dict | None = None, **save_kwargs) -> str:
    """save_pretrained with the weights in `dtype` (model.dtype: a model trained on fp32 master weights is
    saved in the dtype it was loaded in) and config.json saying so (transformers writes the dtype of the
    model in memory there, not that of the weights it saved). A LoRA policy saves its adapters as peft
    holds them (fp32). Returns the dtype of the saved weights."""
    from preftune.models import is_peft_model

    state = state_dict if state_dict is not None else model.state_dict()
    if is_peft_model(model):
        model.save_pretrained(str(path), state_dict=state, **save_kwargs)
        return next((dtype_name(v.dtype) for k, v in state.items() if "lora_" in k and v.is_floating_point()),
                    dtype_name(dtype))
    model.save_pretrained(str(path), state_dict=state_dict_in(state, dtype), **save_kwargs)
    config = Path(path) / "config.json"
    settings = json.loads(config.read_text())
    settings["dtype"] = dtype_name(dtype)
    config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return dtype_name(dtype)
