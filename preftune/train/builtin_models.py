"""The named built-in models that take a training run to make: `builtin:arithmetic-sft`.

`builtin:arithmetic-sft` is the built-in tiny model after the quickstart's SFT stage on the
arithmetic task's demonstrations (about a minute on 2 cores), trained once and cached in
$PREFTUNE_CACHE (default ~/.cache/preftune) in a folder named by a fingerprint of the SFT settings,
so a change of settings never reuses a stale model. Importing the preftune.train package registers
it with models.py, which resolves the name without importing this layer.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from preftune.config import DataConfig, RunConfig, TaskDataConfig, TrainConfig, to_dict
from preftune.models import BUILTIN_ARITHMETIC_SFT, build_once, register_builtin_model

# The quickstart's tokens are short: prompts such as "37+48=" and answers of a few digits.
SHORT_SEQUENCES = dict(max_length=32, max_prompt_length=16)


def arithmetic_sft_recipe() -> RunConfig:
    """The SFT stage of the quickstart (pipeline.py) and of builtin:arithmetic-sft."""
    return RunConfig(
        name="sft", loss="sft", reference="none",
        data=DataConfig(source="task:arithmetic", task=TaskDataConfig(demonstrations=38400, noise=0.1),
                        **SHORT_SEQUENCES),
        train=TrainConfig(steps=600, batch_size=64, lr=1e-3, warmup_ratio=0.1, schedule="cosine"))


def builtin_sft_path() -> Path:
    """Where `builtin:arithmetic-sft` is cached: a folder named by a fingerprint of the SFT settings."""
    from preftune import __version__

    settings = json.dumps({"version": __version__, "sft": to_dict(arithmetic_sft_recipe())}, sort_keys=True)
    fingerprint = hashlib.sha256(settings.encode()).hexdigest()[:12]
    root = Path(os.environ.get("PREFTUNE_CACHE", Path.home() / ".cache" / "preftune"))
    return root / f"arithmetic-sft-{fingerprint}" / "model"


def arithmetic_sft() -> str:
    """The directory of builtin:arithmetic-sft, training it first if needed (once, under a lock)."""
    return str(build_once(builtin_sft_path(), "config.json", lambda scratch: train_arithmetic_sft(scratch / "sft-build")))


def train_arithmetic_sft(folder: Path, progress: bool = True) -> Path:
    """The tiny model saved under `folder`/base, then the SFT recipe on it; returns the model directory."""
    import dataclasses

    from preftune.models import save_tiny_model
    from preftune.train.runner import run_training

    recipe = arithmetic_sft_recipe()
    print(f"building {BUILTIN_ARITHMETIC_SFT}: the built-in tiny model after the quickstart's SFT stage -> {folder}")
    base = save_tiny_model(folder / "base", seed=recipe.train.seed)
    cfg = dataclasses.replace(recipe, output_dir=str(folder / "{name}"),
                              model=dataclasses.replace(recipe.model, name_or_path=str(base)),
                              train=dataclasses.replace(recipe.train, progress=progress))
    return run_training(cfg) / "model"


register_builtin_model(BUILTIN_ARITHMETIC_SFT, arithmetic_sft)
