"""One online cell: an online recipe at one setting and seed, under the claims' online budget.

The recipe (configs/online/<method>.yaml) gives the method's schedule, pairs and judge; the claims
config gives every arm the same iterations, prompts, samples and optimizer steps, and the setting
gives the step size and learning rate. The task holds out validation guests (never trained on): a
search seed's run is evaluated on them, a final seed's on the test guests. The metrics are read from
the run's online_summary.json (exact game metrics of the policy's distribution over the answer set).
"""
from __future__ import annotations

import os
from pathlib import Path

from preftune.claims.arms import Arm
from preftune.claims.config import ClaimsConfig


def online_config(cfg: ClaimsConfig, arm: Arm, setting: dict, seed: int, split: str, run_dir: Path):
    from preftune.config import read_recipe
    from preftune.train.online_config import load_online_config

    recipe = read_recipe(arm.online["recipe"], "an online recipe")
    budget = cfg.online
    hyper = {k: v for k, v in setting.items() if k != "lr"}
    loss = recipe.get("loss", arm.loss)
    loss = {arm.loss: {**(loss.get(arm.loss) or {} if isinstance(loss, dict) else {}), **arm.fixed, **hyper}}
    domains = len(recipe.get("domains") or [])
    iterations = domains * budget.iterations_per_domain if domains else budget.iterations
    overrides = [f"--name={run_dir.name}", f"--output_dir={run_dir.parent}/{{name}}", f"--iterations={iterations}",
                 f"--prompts_per_iteration={budget.prompts_per_iteration}",
                 f"--sampler.samples_per_prompt={budget.samples_per_prompt}",
                 f"--train.steps={budget.steps}", f"--train.batch_size={budget.batch_size}",
                 f"--train.lr={setting['lr']}", f"--train.seed={seed}", "--train.progress=false",
                 f"--eval.split={split}",
                 f"--eval.prompts={budget.validation_prompts if split == 'validation' else budget.eval_prompts}",
                 f"--task_options.validation_fraction={validation_fraction(cfg)}"]
    if budget.warm_start_steps is not None:
        overrides.append(f"--warm_start.steps={budget.warm_start_steps}")
    config = load_online_config(arm.online["recipe"], overrides)
    config.loss = loss
    return config


def validation_fraction(cfg: ClaimsConfig) -> float:
    """The fraction of the intransitive task's 225 guests that holds out `validation_prompts` of them
    (half a guest above, so that the task's int() rounds to the count)."""
    return (cfg.online.validation_prompts + 0.5) / 225


def summary_metrics(summary: dict) -> dict:
    """The numbers the online rows judge, from online_summary.json."""
    rows = summary["iterations"]
    last = rows[-1]
    out = {k: v for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if len(rows) > 1 and "win_rate_vs_initial" in rows[1]:
        out["win_rate_vs_initial@1"] = rows[1]["win_rate_vs_initial"]
    domains = sorted({k.split("/")[0] for k in last if k.startswith("domain") and k.endswith("/duality_gap")})
    if domains:
        out["mean_domain_gap"] = sum(last[f"{d}/duality_gap"] for d in domains) / len(domains)
        end_of_first = rows[(len(rows) - 1) // len(domains)]   # the iteration that ends the first domain
        out["forgetting"] = last["domain0/duality_gap"] - end_of_first["domain0/duality_gap"]
    out["per_iteration"] = [{k: r.get(k) for k in ("iteration", "duality_gap", "win_rate_vs_initial",
                                                  *(f"{d}/duality_gap" for d in domains)) if k in r} for r in rows]
    return out


def run_online_cell(cfg: ClaimsConfig, arm: Arm, setting: dict, seed: int, split: str, run_dir: Path) -> dict:
    """Run the online recipe for the cell; returns (metrics, run directory)."""
    import json

    from preftune.train.online import run_online

    # The warm-start SFT models are cached with the run, not in the user's cache.
    os.environ["PREFTUNE_CACHE"] = str(cfg.run_dir / "cache")
    out = run_online(online_config(cfg, arm, setting, seed, split, run_dir))
    summary = json.loads((out / "online_summary.json").read_text())
    return summary_metrics(summary)
