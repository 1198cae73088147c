"""One cell of the bench: a method recipe trained from one starting point on one (task, seed),
then evaluated by the task's gold reward; its result is cached as JSON."""
from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

from preftune.bench.assets import assets_dir, preference_rows
from preftune.bench.config import BenchConfig
from preftune.config import RunConfig, from_dict, load_config, to_dict


def cell_id(cell: dict) -> str:
    return f"{cell['task']}/{cell['start']}/{cell['method']}/seed{cell['seed']}"


def cell_path(cfg: BenchConfig, cell: dict) -> Path:
    return cfg.run_dir / "cells" / f"{cell_id(cell)}.json"


def cell_run_config(cfg: BenchConfig, cell: dict, assets: dict):
    """The recipe's RunConfig with the bench's model, data, lengths, budget and seed."""
    recipe = load_config(cell["recipe"], [f"--loss={cell['loss']}"] if cell.get("loss") else None)
    settings = cfg.task_settings(cell["task"])
    start_model = starting_model(cell, assets)
    data = to_dict(recipe)
    data["name"] = cell["method"]
    data["output_dir"] = str(cell_run_dir(cfg, {**cell, "method": "{name}"}))
    data["model"]["name_or_path"] = start_model
    data["aux_models"] = {name: aux_model(cfg, cell, name, assets) for name in data["aux_models"]}
    data["data"].update(source=f"task:{cell['task']}", max_length=settings.max_length,
                        max_prompt_length=settings.max_prompt_length, eval_source=None, eval_fraction=0.0, limit=None)
    data["data"]["task"].update(options=settings.options, labeller=settings.labeller)
    data["train"].update(steps=cfg.preference.steps, batch_size=cfg.preference.batch_size, grad_accum=1,
                         seed=cell["seed"], progress=False, log_every=5, checkpoint_every=0, eval_every=0)
    if cfg.preference.lr is not None:
        data["train"]["lr"] = cfg.preference.lr
    data["diagnostics"]["every"] = 0
    return from_dict(RunConfig, data)


# Auxiliary models by role. TGDPO's `guidance` is, as in its paper and configs/methods/tgdpo.yaml, a
# DPO-trained model: the bench's own `dpo` run of the same task, start and seed, so guided methods
# run after the others and the `dpo` runs keep their models. Any other auxiliary model (BRAIn's
# `proposal_logps`) is the model that sampled the responses: the SFT model, for both starts.
GUIDANCE_METHOD = "dpo"
GUIDED_BY_DPO = ("guidance",)


def starting_model(cell: dict, assets: dict) -> str:
    """The model a cell's preference training starts from: its (task, seed)'s SFT or base model."""
    return assets["sft_model"] if cell["start"] == "sft" else assets["base_model"]


def aux_model(cfg: BenchConfig, cell: dict, name: str, assets: dict) -> str:
    """The model behind auxiliary model `name` of a cell (see GUIDED_BY_DPO)."""
    if name in GUIDED_BY_DPO:
        return guidance_model(cfg, cell, starting_model(cell, assets))
    return str(assets["sft_model"])


def guidance_model(cfg: BenchConfig, cell: dict, start_model: str) -> str:
    """The model an auxiliary-model method reads: the same (task, start, seed)'s dpo run, or, when
    the bench runs no dpo, the starting model (which makes TGDPO train as DPO; the table says so)."""
    dpo_cell = {**cell, "method": GUIDANCE_METHOD}
    model = cell_run_dir(cfg, dpo_cell) / "model"
    return str(model) if (model / "config.json").exists() else start_model


def cell_run_dir(cfg: BenchConfig, cell: dict) -> Path:
    return cfg.run_dir / "runs" / cell["task"] / cell["start"] / f"seed{cell['seed']}" / cell["method"]


def needs_dpo_guidance(recipe: str) -> bool:
    return any(name in GUIDED_BY_DPO for name in load_config(recipe).aux_models)


def rows_pairing(run_cfg) -> str:
    """Which rows a recipe trains on: scored lists for listwise objectives and for curricula (which
    cut ranked lists into pairs themselves), else its pairing."""
    from preftune.methods import build_objective

    if (build_objective(run_cfg.loss).input_kind == "listwise" or run_cfg.data.kind == "listwise"
            or run_cfg.curriculum.pairs):
        return "listwise"
    return run_cfg.data.task.pairing


def run_cell(cfg_dict: dict, cell: dict) -> dict:
    """Train one method from one starting point on one (task, seed) and evaluate it; cached as JSON."""
    import shutil

    import torch

    from preftune.eval.task_eval import evaluate_on_task
    from preftune.models import load_causal_lm, load_tokenizer
    from preftune.tasks import get_task
    from preftune.train.runner import run_training

    cfg = from_dict(BenchConfig, cfg_dict)
    path = cell_path(cfg, cell)
    if path.exists():
        return json.loads(path.read_text())
    result = {k: cell[k] for k in ("task", "start", "method", "seed", "recipe", "loss")}
    try:
        assets = json.loads((assets_dir(cfg, cell["task"], cell["seed"]) / "assets.json").read_text())
        run_cfg = cell_run_config(cfg, cell, assets)
        rows, data_stats = preference_rows(cfg, assets, rows_pairing(run_cfg))
        started, cpu_started = time.perf_counter(), time.process_time()
        run_dir = run_training(run_cfg, data_source=rows)
        train_seconds = time.perf_counter() - started
        summary = json.loads((run_dir / "train_summary.json").read_text())
        settings = cfg.task_settings(cell["task"])
        task = get_task(cell["task"], **settings.options)
        start_model = run_cfg.model.name_or_path
        tokenizer = load_tokenizer(start_model)
        policy, start = load_causal_lm(str(run_dir / "model")), load_causal_lm(start_model)
        baseline = torch.tensor(json.loads(Path(assets["baseline_scores"]).read_text()), dtype=torch.float64)
        metrics = evaluate_on_task(policy, tokenizer, task, task.prompts("test", cfg.eval.prompts), reference=start,
                                   baseline_scores=baseline, samples_per_prompt=cfg.eval.samples_per_prompt,
                                   max_new_tokens=settings.max_new_tokens, seed=cfg.eval.seed + cell["seed"],
                                   batch_size=cfg.eval.batch_size, progress=False)
        result.update(status="ok", objective=summary["objective"], metrics=metrics, data=data_stats,
                      train_seconds=round(train_seconds, 2), cpu_seconds=round(time.process_time() - cpu_started, 2),
                      final_train_metrics={k: v for k, v in summary["final_train_metrics"].items()
                                           if k in ("loss", "accuracy", "margin")})
        result["aux_models"] = {k: str(v) for k, v in run_cfg.aux_models.items()}
        if not cfg.keep_models and cell["method"] != GUIDANCE_METHOD:
            shutil.rmtree(run_dir / "model", ignore_errors=True)
    except Exception as error:  # a method that cannot run here is a row of the table, not a crash
        result.update(status="error", error=f"{type(error).__name__}: {error}",
                      traceback=traceback.format_exc(limit=4))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result
