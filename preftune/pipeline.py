"""The whole job on a built-in task: base model -> SFT -> on-policy pairs -> preference training -> evaluation.

`preftune quickstart` runs it with the defaults below (configs/quickstart.yaml spells them out).
Each stage is an ordinary `train` run with its own run directory, so every stage can also be
run by hand with `preftune sft` / `preftune train` and the same settings.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from preftune.config import (DataConfig, RunConfig, TaskDataConfig, TrainConfig, from_dict, merge_recipe,
                             read_recipe, to_dict, with_overrides)
from preftune.models import BUILTIN_TINY, load_causal_lm, load_tokenizer, save_tiny_model
from preftune.tasks import get_task
from preftune.train.builtin_models import SHORT_SEQUENCES, arithmetic_sft_recipe
from preftune.config import NamedRun


def _default_preference() -> RunConfig:
    return RunConfig(
        name="preference", loss={"dpo": {"beta": 1.0}},
        data=DataConfig(source="task:arithmetic", task=TaskDataConfig(samples_per_prompt=4, max_new_tokens=8),
                        **SHORT_SEQUENCES),
        train=TrainConfig(steps=300, batch_size=32, lr=1e-4, warmup_ratio=0.1, schedule="linear"))


@dataclass
class EvalConfig:
    prompts: int | None = None          # held-out prompts (None: the whole test split)
    samples_per_prompt: int = 4
    temperature: float = 1.0            # 1.0 keeps the KL estimate unbiased
    max_new_tokens: int = 8
    seed: int = 1234


@dataclass
class PipelineConfig(NamedRun):
    name: str = "quickstart"
    output_dir: str = "runs/{name}"
    task: str = "arithmetic"
    task_options: dict = field(default_factory=dict)
    base_model: str = BUILTIN_TINY      # builtin:tiny is built and saved with save_pretrained first
    skip_sft: bool = False              # start preference training from base_model directly
    sft: RunConfig = field(default_factory=arithmetic_sft_recipe)
    preference: RunConfig = field(default_factory=_default_preference)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_pipeline_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Defaults, then the YAML file, then `--key=value` overrides (e.g. --preference.loss=simpo)."""
    data = to_dict(PipelineConfig())
    if path is not None:
        merge_recipe(data, read_recipe(path, "a pipeline recipe"))
    return with_overrides(PipelineConfig, data, overrides)


def stage_config(stage: RunConfig, cfg: PipelineConfig, model: str, name: str) -> RunConfig:
    """A stage's RunConfig with the pipeline's model, run directory and task filled in."""
    data = to_dict(stage)
    data["name"] = name
    data["output_dir"] = str(cfg.run_dir / "{name}")
    data["model"]["name_or_path"] = model
    if data["data"]["source"].startswith("task:"):
        data["data"]["source"] = f"task:{cfg.task}"
        data["data"]["task"]["options"] = {**cfg.task_options, **data["data"]["task"]["options"]}
    return from_dict(RunConfig, data)


def run_sft_stage(cfg: PipelineConfig, progress: bool = True, log=print, timings: dict | None = None) -> str:
    """Stages 1-2: build the base model (when built-in) and supervised fine-tuning; returns the SFT model path."""
    from preftune.train.runner import run_training

    started = time.perf_counter()
    timings = {} if timings is None else timings
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    base = cfg.base_model
    if base == BUILTIN_TINY:
        log(f"[1/4] building the built-in tiny model -> {cfg.run_dir / 'base'}")
        base = str(save_tiny_model(cfg.run_dir / "base", seed=cfg.sft.train.seed))
    timings["base"] = time.perf_counter() - started
    if cfg.skip_sft:
        timings["sft"] = 0.0
        return base
    log("[2/4] supervised fine-tuning on task demonstrations")
    sft_cfg = stage_config(cfg.sft, cfg, base, "sft")
    sft_cfg.train.progress = progress
    sft_model = str(run_training(sft_cfg) / "model")
    timings["sft"] = time.perf_counter() - started - timings["base"]
    return sft_model


def run_pipeline(cfg: PipelineConfig, progress: bool = True, log=print) -> dict:
    """Run every stage and return the summary (also written to RUN_DIR/summary.json)."""
    from preftune.eval.task_eval import evaluate_on_task
    from preftune.report.plots import plot_comparison, plot_training
    from preftune.train.metrics import read_metrics
    from preftune.train.runner import run_training

    started = time.perf_counter()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "pipeline.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    timings = {}

    sft_model = run_sft_stage(cfg, progress, log, timings)

    log(f"[3/4] preference training ({_describe_loss(cfg.preference.loss)}) on the SFT model's own samples, "
        f"labelled by the gold oracle")
    pref_cfg = stage_config(cfg.preference, cfg, sft_model, "preference")
    pref_cfg.train.progress = progress
    pref_dir = run_training(pref_cfg)
    timings["preference"] = time.perf_counter() - started - sum(timings.values())

    log("[4/4] evaluating on held-out prompts")
    task = get_task(cfg.task, **cfg.task_options)
    prompts = task.prompts("test", cfg.eval.prompts)
    loading = pref_cfg.model.loading  # with skip_sft, sft_model is the user's base model
    tokenizer = load_tokenizer(sft_model, pref_cfg.model.trust_remote_code)
    reference = load_causal_lm(sft_model, **loading)
    policy = load_causal_lm(str(pref_dir / "model"), **loading)
    options = dict(samples_per_prompt=cfg.eval.samples_per_prompt, temperature=cfg.eval.temperature,
                   max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.eval.seed, progress=progress)
    before = evaluate_on_task(reference, tokenizer, task, prompts, baseline=reference, reference=reference, **options)
    after = evaluate_on_task(policy, tokenizer, task, prompts, baseline=reference, reference=reference, **options)
    timings["eval"] = time.perf_counter() - started - sum(timings.values())

    train_summary = json.loads((pref_dir / "train_summary.json").read_text())
    summary = {
        "task": cfg.task, "objective": train_summary["objective"], "run_dir": str(run_dir),
        "before": before, "after": after,
        "gain": {k: after[k] - before[k] for k in ("gold_reward", "gold_reward_greedy", "win_rate")},
        "preference_data": train_summary["data"], "seconds": {k: round(v, 1) for k, v in timings.items()},
        "total_seconds": round(time.perf_counter() - started, 1),
        "models": {"sft": sft_model, "preference": str(pref_dir / "model")},
    }
    plots = run_dir / "plots"
    summary["plots"] = [str(plot_training(read_metrics(pref_dir), plots / "preference_training.png")),
                        str(plot_comparison(before, after, plots / "before_after.png",
                                            ("SFT", f"SFT + {train_summary['objective']}")))]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _describe_loss(loss) -> str:
    from preftune.methods import build_objective

    return build_objective(loss).describe()


ROWS = [("gold_reward", "gold accuracy (sampled)", "{:.3f}"), ("gold_reward_greedy", "gold accuracy (greedy)", "{:.3f}"),
        ("win_rate", "win-rate vs SFT", "{:.3f}"), ("kl", "KL to reference", "{:.3f}"),
        ("length", "mean response length", "{:.2f}")]


def format_table(summary: dict) -> str:
    """The before/after table the quickstart prints."""
    after_name = f"SFT + {summary['objective']}"
    width = max(len(r[1]) for r in ROWS) + 2
    lines = [f"{'':<{width}}{'SFT':>12}{after_name:>{max(14, len(after_name) + 2)}}{'change':>10}"]
    for key, label, fmt in ROWS:
        b, a = summary["before"][key], summary["after"][key]
        lines.append(f"{label:<{width}}{fmt.format(b):>12}{fmt.format(a):>{max(14, len(after_name) + 2)}}"
                     f"{(a - b):>+10.3f}")
    return "\n".join(lines)
