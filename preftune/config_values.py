"""Allowed values of configuration keys, checked when a config is read (config.with_overrides):
each error names the key and the range or the values it allows."""
from __future__ import annotations

import dataclasses
from typing import Any



class ConfigError(ValueError):
    """A configuration that cannot run: an unknown key, a wrong type, a value out of range."""


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


# --------------------------------------------------------------------------- allowed values

def _at_least(low):
    return lambda v: v >= low


def _one_of(*values):
    return lambda v: v in values


_RATIO = (lambda v: 0 <= v <= 1, "in [0, 1]")
# Dotted key -> (test, allowed values as said in the error); None passes where the type allows it.
ALLOWED: dict[str, tuple[Any, str]] = {
    "train.steps": (_at_least(1), ">= 1 (or null: train.epochs over the data)"),
    "train.epochs": (lambda v: v > 0, "> 0"),
    "train.batch_size": (_at_least(1), ">= 1"), "train.grad_accum": (_at_least(1), ">= 1"),
    "train.lr": (lambda v: v > 0, "> 0"), "train.weight_decay": (_at_least(0), ">= 0"),
    "train.warmup_ratio": _RATIO, "train.max_grad_norm": (_at_least(0), ">= 0 (0 disables clipping)"),
    "train.log_every": (_at_least(1), ">= 1"), "train.checkpoint_every": (_at_least(0), ">= 0"),
    "train.keep_checkpoints": (_at_least(1), ">= 1"), "train.eval_every": (_at_least(0), ">= 0"),
    "train.schedule": (_one_of("linear", "cosine", "constant"), "linear, cosine or constant"),
    "train.precision": (_one_of("fp32", "bf16"), "fp32 or bf16"),
    "model.dtype": (_one_of("float32", "fp32", "bfloat16", "bf16", "float16", "fp16"),
                    "float32, bfloat16 or float16 (fp32, bf16, fp16)"),
    "model.lora.r": (_at_least(1), ">= 1"), "model.lora.alpha": (lambda v: v > 0, "> 0"),
    "model.lora.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "data.max_length": (_at_least(2), ">= 2"), "data.max_prompt_length": (_at_least(1), ">= 1"),
    "data.eval_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"), "data.limit": (_at_least(1), ">= 1 (or null: all rows)"),
    "data.kind": (_one_of("auto", "pairwise", "pointwise", "sft", "listwise"), "auto, pairwise, pointwise, sft or listwise"),
    "data.format": (_one_of("auto", "text", "chat", "hh", "sharegpt"), "auto, text, chat, hh or sharegpt"),
    "data.on_bad_row": (_one_of("error", "skip"), "error or skip"),
    "data.truncation": (_one_of("truncate", "drop", "error"), "truncate, drop or error"),
    "speed.logits_chunk_tokens": (_at_least(0), ">= 0"),
    "speed.reference_cache": (_one_of("auto", "on", "off", True, False), "auto, on or off"),
    "diagnostics.every": (_at_least(0), ">= 0"), "diagnostics.top_k": (_at_least(1), ">= 1"),
    # online runs (train/online_config.py)
    "iterations": (_at_least(1), ">= 1"), "prompts_per_iteration": (_at_least(1), ">= 1"),
    "sampler.samples_per_prompt": (_at_least(1), ">= 1"), "sampler.temperature": (lambda v: v > 0, "> 0"),
    "sampler.top_p": (lambda v: 0 < v <= 1, "in (0, 1]"), "sampler.top_k": (_at_least(0), ">= 0 (0: no top-k)"),
    "sampler.max_new_tokens": (_at_least(1), ">= 1"), "sampler.batch_size": (_at_least(1), ">= 1"),
    "judge.labels": (_one_of("probability", "bernoulli"), "probability or bernoulli"),
    "judge.max_failure_rate": _RATIO,
}


def check_values(config: Any, prefix: str = "") -> None:
    """Check every value that ALLOWED names (a key matches by its last sections, so a pipeline's
    `preference.train.lr` is checked as `train.lr`), the loss (methods, their hyperparameters and
    ranges) and the keys that depend on each other; each error names the key and what it allows. A
    section of another schema (the diffusion recipes' `data`) states its own rules in ALLOWED_VALUES
    (field -> (test, allowed values)), which take the place of ALLOWED's for its fields."""
    own = getattr(type(config), "ALLOWED_VALUES", {})
    for f in dataclasses.fields(config):
        key, value = _join(prefix, f.name), getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check_values(value, key)
            continue
        rule = own.get(f.name) or next((ALLOWED[k] for k in ALLOWED if key == k or key.endswith("." + k)), None)
        if rule is not None and value is not None and not rule[0](value):
            raise ConfigError(f"{key} must be {rule[1]}, got {value!r}")
        if f.name == "loss" and isinstance(value, (str, dict)):
            from preftune.methods.objective import build_objective

            try:
                build_objective(value)
            except (KeyError, ValueError) as error:
                message = str(error.args[0] if isinstance(error, KeyError) else error)
                raise ConfigError(message if message.startswith(f"{key}.") else f"{key}: {message}") from None
    if {"max_length", "max_prompt_length"} <= {f.name for f in dataclasses.fields(config)} \
            and config.max_prompt_length >= config.max_length:
        raise ConfigError(f"{_join(prefix, 'max_prompt_length')} ({config.max_prompt_length}) must be below "
                          f"{_join(prefix, 'max_length')} ({config.max_length})")
    if getattr(config, "columns", None) and isinstance(config.columns, dict):
        from preftune.data.layouts import check_columns

        try:
            check_columns(config.columns)
        except ValueError as error:
            raise ConfigError(str(error)) from None
