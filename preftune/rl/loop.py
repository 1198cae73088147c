"""The `preftune rl` loop: iterations of make data -> update -> evaluate. Reads top to bottom.

    set up     accelerate (train/loop.py's make_accelerator), the (warm-started) policy, the frozen
               reference, the critic or value head, reward / DPO / step-critic models the method needs
               (pretrain.py, stored in the run directory and reused on --resume)
    iteration  the method's data maker (rollouts, DAPO candidates, OREO's offline slice, MCTS pairs)
               makes rows from the current policy, seeded by (seed, iteration); update.py takes
               optimizer steps of the objective on them; evaluate.py scores the held-out prompts
    after it   metrics.jsonl + TensorBoard (train/metrics.py), an atomic checkpoint of the models and
               the optimizer (train/checkpoint.py, as `preftune train`), rl_summary.json

Because every iteration's data is a pure function of the weights at its start and (seed, iteration),
a run stopped anywhere and resumed from its last checkpoint gives the same weights as an uninterrupted
run. A `task: lot-sizing` recipe runs lot_sizing_train.py instead.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch
import yaml

from preftune.config import to_dict
from preftune.methods import build_objective
from preftune.rl.config import LotSizingRunConfig, RLConfig
from preftune.rl.context import RLContext
from preftune.train.checkpoint import load_checkpoint, resolve_resume, save_checkpoint, sigterm_as_interrupt
from preftune.train.metrics import MetricsLogger, truncate_metrics
from preftune.train.trackers import start_trackers

# Which data maker serves an objective (by its first term).
ALGORITHMS = {"grpo": "rollouts", "mo_grpo": "rollouts", "ppo": "rollouts", "rto": "rollouts",
              "dapo_step": "dapo", "oreo": "oreo", "mcts_dpo": "mcts"}


def algorithm_of(objective) -> str:
    name = objective.terms[0].spec.name
    if name not in ALGORITHMS:
        raise ValueError(f"`preftune rl` trains {sorted(ALGORITHMS)} (and pdppo with task: lot-sizing); "
                         f"{name} is trained by `preftune train` or `preftune online`")
    return ALGORITHMS[name]


def make_maker(kind: str, ctx: RLContext):
    if kind == "rollouts":
        from preftune.rl.data_rollouts import RolloutMaker
        return RolloutMaker(ctx)
    if kind == "dapo":
        from preftune.rl.data_dapo import DapoMaker
        return DapoMaker(ctx)
    if kind == "oreo":
        from preftune.rl.data_oreo import OreoMaker
        return OreoMaker(ctx)
    from preftune.rl.data_mcts import MctsMaker
    return MctsMaker(ctx)


def run_rl(cfg: RLConfig | LotSizingRunConfig, resume: str | bool | None = None,
           on_step_end: Callable[[int, int, dict], None] | None = None) -> Path:
    """Run `cfg`; returns the run directory. on_step_end(iteration, step, metrics) after every optimizer
    step (a KeyboardInterrupt raised there, or Ctrl-C, keeps the last completed iteration's checkpoint)."""
    if isinstance(cfg, LotSizingRunConfig):
        from preftune.rl.lot_sizing_train import run_lot_sizing
        return run_lot_sizing(cfg, resume, None if on_step_end is None else lambda u, m: on_step_end(u, 0, m))
    from accelerate.utils import set_seed

    from preftune.models import load_causal_lm, load_tokenizer
    from preftune.rl.evaluate import evaluate
    from preftune.rl.pretrain import dpo_policy_path, prepare_models
    from preftune.rl.update import update
    from preftune.tasks import get_task
    from preftune.train.loop import make_accelerator, release_accelerator
    from preftune.train.online import warm_start

    # --- set up: the policy, what the method needs beside it, one optimizer for everything trained.
    # The warm start and RTO's DPO model train with the offline loop, which sets up (and releases) its
    # own accelerator: they come first.
    objective = build_objective(cfg.loss)
    kind = algorithm_of(objective)
    if cfg.train.grad_accum != 1:
        raise ValueError("preftune rl takes one micro-batch per optimizer step: leave train.grad_accum at 1 and "
                         "set train.batch_size")
    model_path = warm_start(cfg) if cfg.warm_start.enabled else cfg.model.name_or_path
    dpo_path = dpo_policy_path(cfg, model_path) if "dpo" in objective.extras else None
    accelerator = make_accelerator(cfg)
    if accelerator.num_processes > 1:
        raise NotImplementedError("preftune rl runs in one process (one GPU or the CPU); sampling is not sharded yet")
    set_seed(cfg.train.seed)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    started = time.perf_counter()
    task = get_task(cfg.task, **cfg.task_options)
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    policy = load_causal_lm(model_path, cfg.model.dtype, cfg.train.seed, tokenizer, **cfg.model.loading).to(accelerator.device)
    ctx = RLContext(cfg, task, tokenizer, policy, objective, accelerator.device, run_dir)
    prepare_models(ctx, kind, model_path, dpo_path)
    trained = [m for m in (ctx.value_model, ctx.value_head) if m is not None and ctx.wants("values")]
    groups = [{"params": [p for p in policy.parameters() if p.requires_grad], "lr": cfg.train.lr}]
    groups += [{"params": list(m.parameters()), "lr": cfg.value.lr} for m in trained]
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.train.weight_decay)
    prepared = accelerator.prepare(policy, *trained, optimizer)
    policy, optimizer = prepared[0], prepared[-1]
    ctx.policy = policy
    if trained and ctx.value_model is not None:
        ctx.value_model = prepared[1]
    maker = make_maker(kind, ctx)

    # --- where to start
    summary = {"kind": "rl", "method": objective.describe(), "task": cfg.task, "algorithm": kind, "iterations": []}
    start, checkpoint = 0, resolve_resume(run_dir, resume)
    if checkpoint is not None:
        start = load_checkpoint(accelerator, checkpoint)["step"]
        truncate_metrics(run_dir, start)
        summary = json.loads((run_dir / "rl_summary.json").read_text())
        summary["iterations"] = [row for row in summary["iterations"] if row["iteration"] <= start]
    elif (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()
    start_trackers(accelerator, cfg.name, to_dict(cfg), resumed_at=start)
    logger = MetricsLogger(run_dir, enabled=True, accelerator=accelerator)
    reference = ctx.reference
    search = kind == "oreo"
    if checkpoint is None:
        initial = evaluate(ctx, reference, search)
        logger.log(0, initial)
        summary["iterations"].append({"iteration": 0, **initial})

    # --- iterations: make data -> update -> evaluate
    completed = start
    try:
        with sigterm_as_interrupt():
            for t in range(start, cfg.iterations):
                began = time.perf_counter()
                rows, units, stats = maker.make(t)
                stats.update(update(ctx, rows, units, t, policy, optimizer, accelerator,
                                    None if on_step_end is None else lambda s, m: on_step_end(t + 1, s, m)))
                stats.update(evaluate(ctx, reference, search))
                stats["seconds"] = round(time.perf_counter() - began, 2)
                completed = t + 1
                logger.log(completed, stats)
                summary["iterations"].append({"iteration": completed, **stats})
                write_summary(run_dir, summary, started)
                if cfg.train.checkpoint_every and completed % cfg.train.checkpoint_every == 0:
                    save_checkpoint(accelerator, run_dir, completed, {"iteration": completed}, cfg.train.keep_checkpoints)
                print(f"iteration {completed}/{cfg.iterations}: gold {stats['eval/gold_reward']:.4f} "
                      f"(greedy {stats['eval/gold_reward_greedy']:.4f}), {stats['seconds']:.0f} s", flush=True)
    except KeyboardInterrupt:
        logger.close()
        release_accelerator()
        print(f"\ninterrupted after iteration {completed}; `--resume` continues from the last checkpoint")
        raise
    logger.close()
    save_models(ctx, accelerator, run_dir)
    write_summary(run_dir, summary, started)
    release_accelerator()
    return run_dir


def save_models(ctx: RLContext, accelerator, run_dir: Path) -> None:
    """The policy in RUN_DIR/model and the trained critic in RUN_DIR/value_model, both with save_pretrained."""
    from preftune.rl.value_model import save_head

    policy = accelerator.unwrap_model(ctx.policy)
    policy.save_pretrained(str(run_dir / "model"))
    ctx.tokenizer.save_pretrained(str(run_dir / "model"))
    if ctx.value_model is not None and ctx.wants("values"):
        accelerator.unwrap_model(ctx.value_model).save_pretrained(run_dir / "value_model", ctx.tokenizer)
    if ctx.value_head is not None:
        save_head(ctx.value_head, run_dir / "model")


def write_summary(run_dir: Path, summary: dict, started: float) -> None:
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    (run_dir / "rl_summary.json").write_text(json.dumps(summary, indent=1))
