"""Every method recipe in configs/methods/ parses, builds its objective, and trains a few steps.

The recipes start from builtin:arithmetic-sft; here a briefly fine-tuned tiny model stands in
(the `tiny_sft_model` fixture) and each run is cut to 2 steps on 96 prompts.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from preftune.config import load_config
from preftune.methods import build_objective

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs" / "methods").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_parses_and_builds_its_objective(recipe):
    cfg = load_config(recipe)
    objective = build_objective(cfg.loss)
    assert objective.terms, recipe
    assert cfg.data.source, f"{recipe.name} names no data source"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_trains_a_few_steps(recipe, tiny_sft_model, tmp_path):
    from preftune.train.runner import run_training

    overrides = [f"--output_dir={tmp_path}/{{name}}", f"--model.name_or_path={tiny_sft_model}",
                 "--train.steps=2", "--train.batch_size=4", "--train.progress=false",
                 "--data.task.prompts=96"]
    cfg = load_config(recipe, overrides)
    aux = {name: tiny_sft_model for name in cfg.aux_models}  # auxiliary models: the same stand-in
    if aux:
        cfg.aux_models = aux
    run_dir = run_training(cfg)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) for m in metrics)
    assert (run_dir / "model" / "config.json").exists()
