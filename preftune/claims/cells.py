"""One offline cell: train an arm at one setting on one seed's shared data, score it on one split.

A search seed's cell is scored on the validation prompts, a final seed's on the test prompts. The
result is cached as JSON (cells/<arm>/<setting>/seed<k>.json), so an interrupted run resumes; the
model is kept only when another arm or row reads it (TGDPO's guidance, beam search, probes).
"""
from __future__ import annotations

import json
import shutil
import time
import traceback
from pathlib import Path

from preftune.claims.arms import SFT_ON_CHOSEN, SFT_THEN_DPO, Arm, cell_id, get_arm, setting_key
from preftune.claims.assets import assets_of, baselines_path, eval_options, preference_rows, split_prompts, \
    start_model, task_of, task_setting
from preftune.claims.config import ClaimsConfig
from preftune.config import RunConfig, from_dict


def cell_path(cfg: ClaimsConfig, arm_name: str, setting: dict, seed: int) -> Path:
    return cfg.run_dir / "cells" / f"{cell_id(arm_name, setting, seed)}.json"


def model_dir(cfg: ClaimsConfig, arm_name: str, setting: dict, seed: int) -> Path:
    """The run directory of a cell's training (its model in ./model when kept)."""
    return cfg.run_dir / "models" / arm_name / setting_key(setting) / f"seed{seed}"


def split_of(cfg: ClaimsConfig, seed: int) -> str:
    return "validation" if seed in cfg.search_seeds else "test"


def arm_rows(cfg: ClaimsConfig, arm: Arm, seed: int) -> list[dict]:
    """The rows the arm trains on, all cut from the same samples of the (task, seed)."""
    if arm.rows == "listwise":
        return preference_rows(cfg, arm.task, seed, "listwise")
    pairs = preference_rows(cfg, arm.task, seed, "best-worst")
    if arm.loss == SFT_ON_CHOSEN:  # the same pairs' chosen responses, as demonstrations
        return [{"prompt": r["prompt"], "completion": r["chosen"]} for r in pairs]
    return pairs


def run_config(cfg: ClaimsConfig, arm: Arm, setting: dict, seed: int, start: str, aux_paths: dict,
               loss: dict | str | None = None, steps: int | None = None, name: str = "run") -> RunConfig:
    """The RunConfig of one training stage of a cell."""
    hyper = {k: v for k, v in setting.items() if k != "lr"}
    budget = cfg.preference
    data = {"source": f"task:{arm.task}", "max_length": task_setting(cfg, arm.task, "max_length", 32),
            "max_prompt_length": task_setting(cfg, arm.task, "max_prompt_length", 16), **arm.data,
            "task": {"options": task_setting(cfg, arm.task, "options", {}) or {},
                     "labeller": task_setting(cfg, arm.task, "labeller", {}) or {}}}
    spec = {"name": name, "output_dir": str(model_dir(cfg, arm.name, setting, seed) / "{name}"),
            "model": {"name_or_path": start},
            "loss": loss if loss is not None else {arm.loss: {**arm.fixed, **hyper}},
            "aux_models": aux_paths, "data": data,
            "train": {"steps": steps or budget.steps, "batch_size": budget.batch_size, "lr": setting["lr"],
                      "warmup_ratio": budget.warmup_ratio, "seed": seed, "progress": False, "log_every": 10,
                      "checkpoint_every": 0, "eval_every": 0},
            "diagnostics": {"every": 0, **arm.diagnostics}}
    if arm.curriculum:
        spec["curriculum"] = dict(arm.curriculum)
    if loss == "sft":
        spec["reference"] = "none"
        spec["data"] = {k: v for k, v in data.items() if k not in ("extra_columns", "extra_responses")}
    return from_dict(RunConfig, spec)


def train_cell(cfg: ClaimsConfig, arm: Arm, setting: dict, seed: int, aux_paths: dict) -> Path:
    """Train the cell (one stage, or the two stages of SFT-then-DPO); returns the final run directory."""
    from preftune.train.runner import run_training as train

    assets = assets_of(cfg, arm.task, seed)
    start = start_model(assets, arm.start)
    rows = arm_rows(cfg, arm, seed)
    if arm.loss == SFT_ON_CHOSEN:
        return train(run_config(cfg, arm, setting, seed, start, {}, loss="sft"), data_source=rows)
    if arm.loss == SFT_THEN_DPO:  # equal steps in all: half SFT on the gold answers, half DPO on the pairs
        first = cfg.preference.steps // 2
        gold = [{"prompt": r["prompt"], "completion": r["gold"]} for r in rows]
        sft_dir = train(run_config(cfg, arm, setting, seed, start, {}, loss="sft", steps=first, name="sft"),
                        data_source=gold)
        hyper = {k: v for k, v in setting.items() if k != "lr"}
        return train(run_config(cfg, arm, setting, seed, str(sft_dir / "model"), {}, loss={"dpo": hyper},
                                steps=cfg.preference.steps - first), data_source=rows)
    steps = None
    if arm.curriculum:  # a curriculum trains train.steps per stage: the stages share the budget
        stages = cfg.pairs.get("samples_per_prompt", 4) - 1
        steps = max(1, cfg.preference.steps // stages)
    return train(run_config(cfg, arm, setting, seed, start, aux_paths, steps=steps), data_source=rows)


def evaluate_cell(cfg: ClaimsConfig, arm: Arm, seed: int, policy_dir: Path, split: str) -> dict:
    """Gold reward, win-rate against the SFT model's samples, KL to the starting model, length, the
    task's metrics, and the arm's extra metrics, on the split's prompts."""
    import torch

    from preftune.claims.metrics import sample_entropy
    from preftune.eval.task_eval import evaluate_on_task
    from preftune.models import load_causal_lm, load_tokenizer

    assets = assets_of(cfg, arm.task, seed)
    start = start_model(assets, arm.start)
    tokenizer = load_tokenizer(start)
    policy, reference = load_causal_lm(str(policy_dir)), load_causal_lm(start)
    baselines = json.loads(baselines_path(cfg, arm.task, seed).read_text())
    baseline = torch.tensor(baselines[split]["baseline_scores"], dtype=torch.float64)
    task, prompts = task_of(cfg, arm.task), split_prompts(cfg, arm.task, split)
    options = eval_options(cfg, arm.task, seed, split)
    metrics = evaluate_on_task(policy, tokenizer, task, prompts, reference=reference, baseline_scores=baseline,
                               progress=False, **options)
    if "entropy" in arm.extra_metrics:
        metrics.update(sample_entropy(policy, tokenizer, prompts, **options))
    return metrics


def diagnostics_ends(run_dir: Path) -> dict:
    """Each logged diagnostic at the first and the last step it was logged ("<key>@start", "<key>@end")."""
    from preftune.train.metrics import read_metrics

    rows = [r for r in read_metrics(run_dir) if any(k.startswith("diag/") for k in r)]
    if not rows:
        return {}
    ends = {}
    for key in sorted({k for r in rows for k in r if k.startswith("diag/")}):
        values = [r[key] for r in rows if key in r]
        ends[f"{key}@start"], ends[f"{key}@end"] = values[0], values[-1]
    return ends


def run_cell(cfg_dict: dict, arm_name: str, setting: dict, seed: int, aux_paths: dict) -> dict:
    """Train and score one cell unless its result is on disk; errors become a result, not a crash."""
    import preftune.claims.rows  # noqa: F401  (a worker process registers the arms)

    cfg = from_dict(ClaimsConfig, cfg_dict)
    path = cell_path(cfg, arm_name, setting, seed)
    if path.exists():
        return json.loads(path.read_text())
    arm, split = get_arm(arm_name), split_of(cfg, seed)
    result = {"arm": arm_name, "setting": setting, "seed": seed, "split": split, "aux_models": aux_paths}
    started, cpu = time.perf_counter(), time.process_time()
    try:
        if arm.kind == "online":
            from preftune.claims.online_cells import run_online_cell

            run_dir = model_dir(cfg, arm_name, setting, seed) / "run"
            result.update(metrics=run_online_cell(cfg, arm, setting, seed, split, run_dir))
        else:
            run_dir = train_cell(cfg, arm, setting, seed, aux_paths)
            result["train_seconds"] = round(time.perf_counter() - started, 2)
            summary = json.loads((run_dir / "train_summary.json").read_text())
            result["final_train_metrics"] = {k: v for k, v in summary.get("final_train_metrics", {}).items()
                                             if k in ("loss", "accuracy", "margin")}
            result["metrics"] = {**evaluate_cell(cfg, arm, seed, run_dir / "model", split), **diagnostics_ends(run_dir)}
        result.update(status="ok", run_dir=str(run_dir), seconds=round(time.perf_counter() - started, 2),
                      cpu_seconds=round(time.process_time() - cpu, 2))
        if not arm.keep_model:
            shutil.rmtree(run_dir / "model", ignore_errors=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # an online run's per-iteration states
    except Exception as error:  # noqa: BLE001  (a failed cell is reported in its row, never hidden)
        result.update(status="error", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc(limit=6))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result
