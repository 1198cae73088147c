"""The online loop: iterations of sample -> judge -> build -> update (online.md; ARCHITECTURE.md).

Reads top to bottom like train/loop.py. One iteration t:

    begin    snapshot pi_t as "previous"; the reference is "initial" (pi_ref) or "previous" (pi_t);
             MNPO's history shifts
    collect  k samples per prompt from the current policy (KV-cached, batched, seeded by t), an
             opponent's samples if the method plays one, the judge's verdicts, the pair builder's
             rows, and the rows' log-probs under every frozen snapshot the objective needs
             (reference, previous, history), computed once for the iteration
    update   train.steps optimizer steps on those rows. Extragradient (EGPO) and mirror prox
             (Nash-MP) run two phases from one anchor: a half step, then the weights and optimizer
             state go back to the anchor and the full step is taken on data from, or against,
             the half-step policy. OFS-DPO steps a fast and a slow LoRA adapter together.
    end      APO's momentum; fast/slow swap; evaluation (exact duality gap on a task with a finite
             answer set, win-rate against the initial policy); iteration files; checkpoint

Everything an iteration produced stays in RUN_DIR/iterations/iter-NNN/ (samples.jsonl,
pairs.jsonl, metrics.jsonl); RUN_DIR/online_summary.json and online_curve.png hold the
per-iteration curve; RUN_DIR/checkpoints/iter-NNN the state after iteration NNN, from which
`--resume` restarts the iteration that was running when the run stopped.

The stages are functions of the run's state (online_state.py, with its checkpoints), one module each:
online_collect.py makes the data (with online_replay.py for rows of past iterations),
online_update.py updates on it, online_eval.py evaluates; online_schedule.py resolves the method's
schedule, online_hooks.py holds the snapshots and adapters, online_cofs.py COFS-DPO's combination,
online_judge.py counts the judge's rounds and stops a run whose judge fails.

A method declares what it needs as extras: data extras from the pair builder (win_rate,
soft_label) and policy extras, the log-probs of the rows under a named snapshot: `previous`
(pi_t), `history` (MNPO's past policies, a list), `slow` (OFS-DPO's slow adapter, live).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
import yaml

from preftune.config import DataConfig, RunConfig, TaskDataConfig, TrainConfig, to_dict
from preftune.config import LoraConfig as LoraSection
from preftune.judges import JudgeError, build_judge
from preftune.methods import build_objective
from preftune.tasks import get_task
from preftune.train.distributed import check_process_count, cross_process_ops, gathered, summed
from preftune.train.online_cofs import cofs_combine
from preftune.train.online_collect import collect
from preftune.train.online_config import OnlineConfig
from preftune.train.online_eval import evaluate
from preftune.train.checkpoint import sigterm_as_interrupt
from preftune.train.online_hooks import Anchor, FastSlowAdapters, PolicySnapshots, trainable_parameters
from preftune.train.online_judge import check_judge, counters_line, iteration_counts
from preftune.train.online_replay import iteration_dir
from preftune.train.online_schedule import (DATA_EXTRAS, GENERIC_DEFAULTS, METHOD_DEFAULTS, POLICY_EXTRAS, Schedule,
                                            history_players, resolve_schedule)
from preftune.train.online_state import OnlineLoop, latest_checkpoint
from preftune.train.online_update import update
from preftune.train.precision import fp32_master_weights, save_in_dtype

__all__ = ["DATA_EXTRAS", "GENERIC_DEFAULTS", "METHOD_DEFAULTS", "POLICY_EXTRAS", "OnlineLoop", "Schedule",
           "history_players", "iteration", "latest_checkpoint", "lora_config", "resolve_schedule", "run_online",
           "warm_start", "write_summary"]


# ----------------------------------------------------------------------------------------------- the run

def run_online(cfg: OnlineConfig, resume: bool = False,
               on_step_end: Callable[[int, int, dict], None] | None = None) -> Path:
    """Run the online loop of `cfg`; returns the run directory. resume: continue a stopped run at the
    iteration it stopped in. on_step_end(iteration, step, metrics) is called after every optimizer step."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from preftune.models import load_causal_lm, load_tokenizer, resolve_dtype
    from preftune.train.loop import release_accelerator

    # The warm start trains with the offline loop, which sets up (and releases) its own accelerator.
    model_path = warm_start(cfg) if cfg.warm_start.enabled else cfg.model.name_or_path
    release_accelerator()  # a run that ended in an error may have left its settings behind
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              mixed_precision={"fp32": "no", "bf16": "bf16"}[cfg.train.precision])
    check_process_count(accelerator)
    # Under several processes each samples and judges its share of the prompts and trains on its
    # slice of every batch of the gathered rows; the main process evaluates and writes (scaling.md).
    main = accelerator.is_main_process
    set_seed(cfg.train.seed)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if main:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    started = time.perf_counter()

    # --- the game: task, judge, objective and its schedule
    # One task per domain of a domain-shift sequence (one domain by default); a task's gold oracle
    # follows the domain, any other judge stays the same.
    tasks = [get_task(cfg.task, **{**cfg.task_options, **domain}) for domain in cfg.domains or [{}]]
    judges = [build_judge(cfg.judge.kind, task, **cfg.judge.options) for task in tasks] if cfg.judge.kind == "task" \
        else [build_judge(cfg.judge.kind, tasks[0], **cfg.judge.options)] * len(tasks)
    objective = build_objective(cfg.loss)
    objective.set_processes(cross_process_ops(accelerator))  # batch statistics over every process's rows
    schedule = resolve_schedule(cfg, objective)

    # --- the player: the (warm-started) model, its trainable weights and their snapshots
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    model = load_causal_lm(model_path, cfg.model.dtype, cfg.train.seed, tokenizer, **cfg.model.loading)
    fast_slow = None
    if schedule.fast_slow:
        fast_slow = FastSlowAdapters(model, lora_config(cfg.model.lora), cfg.schedule.fast_slow.slow_lr_ratio)
        model = fast_slow.model
    elif cfg.model.lora.enabled:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(cfg.model.lora))
    model.to(accelerator.device)
    fp32_master_weights(model)  # a 16-bit model trains on fp32 copies of its trainable weights (train/precision.py)
    snapshots = PolicySnapshots(trainable_parameters(model))
    snapshots.save("initial")
    parameters = fast_slow.parameter_groups(cfg.train.lr) if fast_slow else \
        [{"params": list(snapshots.parameters.values()), "lr": cfg.train.lr}]
    optimizer = torch.optim.AdamW(parameters, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    loop = OnlineLoop(cfg, tasks, judges, objective, schedule, model, tokenizer, snapshots, optimizer, fast_slow,
                      accelerator, on_step_end)

    # --- where to start: a fresh run, or the checkpoint of the last completed iteration
    summary = {"method": objective.describe(), "task": cfg.task, "schedule": schedule.__dict__, "iterations": []}
    start = 0
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None and (run_dir / "iterations").exists() and main:
        print("--resume: no completed iteration to resume from; starting at iteration 0")
    if checkpoint is not None:
        start = loop.load_state(checkpoint, summary)
        if main:
            print(f"resuming {run_dir} at iteration {start} (from {checkpoint.name})")
    else:
        for stale in ("iterations", "checkpoints") if main else ():
            shutil.rmtree(run_dir / stale, ignore_errors=True)
        with saved_when_stopped(run_dir, summary, started, main):
            summary["iterations"].append({"iteration": 0, **evaluate(loop, 0), "judge": iteration_counts(loop)})
            check_judge(loop, "the initial evaluation")
    if main:
        shutil.rmtree(iteration_dir(run_dir, start), ignore_errors=True)
    accelerator.wait_for_everyone()

    with sigterm_as_interrupt(), saved_when_stopped(run_dir, summary, started, main):  # completed iterations are saved
        for t in range(start, cfg.iterations):
            iteration_started = time.perf_counter()
            stats = iteration(loop, t)
            row = {"iteration": t + 1, **evaluate(loop, t + 1), **stats, "judge": iteration_counts(loop),
                   "seconds": round(time.perf_counter() - iteration_started, 2)}
            summary["iterations"].append(row)
            if main:
                write_summary(run_dir, summary, started)
                loop.save_state(t + 1, summary)
                print(f"iteration {t + 1}/{cfg.iterations}: " + ", ".join(
                    f"{k} {row[k]:.4f}" for k in ("duality_gap", "win_rate_vs_initial", "sampled_win_rate_vs_initial")
                    if k in row) + f" ({row['seconds']:.0f} s); " + counters_line(row["judge"]))
            accelerator.wait_for_everyone()
            check_judge(loop, f"iteration {t + 1}")  # after its checkpoint: the training it did is kept

    judged = [summed(gathered(accelerator, j.stats.as_dict())) for j in judges[:len(set(map(id, judges)))]]
    if main:
        save_in_dtype(model, run_dir / "model", resolve_dtype(cfg.model.dtype))
        tokenizer.save_pretrained(str(run_dir / "model"))
        summary.update(judge=judged, processes=accelerator.num_processes)
        write_summary(run_dir, summary, started)
    accelerator.wait_for_everyone()
    release_accelerator()
    return run_dir


def iteration(loop: OnlineLoop, t: int) -> dict:
    """Iteration t of the run: begin, collect, update (one or two phases), end; returns its statistics."""
    cfg, schedule, snapshots = loop.cfg, loop.schedule, loop.snapshots
    domain = loop.domain_of(t)
    loop.task, loop.judge = loop.tasks[domain], loop.judges[domain]
    loop.judge_round = {}
    directory = iteration_dir(loop.cfg.run_dir, t)
    directory.mkdir(parents=True, exist_ok=True)
    snapshots.save("previous")
    history = snapshots.shift_history(schedule.history) if schedule.history else []
    if cfg.schedule.reset_optimizer:
        loop.optimizer.state.clear()
    if schedule.momentum and "momentum" not in snapshots:
        snapshots.save("momentum", "initial")  # APO: theta^_0 = theta_0

    stats: dict = {}
    if schedule.phases == "single":
        examples = collect(loop, t, "full", directory, stats, history)
        update(loop, t, "full", examples, directory, stats)
    else:
        anchor = Anchor(snapshots, loop.optimizer)
        examples = collect(loop, t, "half", directory, stats, history)
        update(loop, t, "half", examples, directory, stats)
        snapshots.save("half")
        if schedule.phases == "extragradient":  # EGPO: the full step's data comes from theta_{t+1/2}
            examples = collect(loop, t, "full", directory, stats, history)
            anchor.restore()
        else:  # mirror prox: the full step samples the anchor pi_k and plays the half-step policy
            anchor.restore()
            examples = collect(loop, t, "full", directory, stats, history, opponent="half")
        update(loop, t, "full", examples, directory, stats)

    if schedule.momentum:
        snapshots.extrapolate("momentum", schedule.momentum)
    if loop.fast_slow and cfg.schedule.fast_slow.swap and \
            stats.get("full/slow_dpo_loss", math.inf) < stats.get("full/dpo_loss", -math.inf):
        loop.fast_slow.swap(loop.optimizer)
        stats["swapped"] = True
    if len(loop.tasks) > 1 and t == loop.last_iteration_of(domain):
        if cfg.schedule.fast_slow.cofs and domain > 0:
            stats.update(cofs_combine(loop, domain))
        snapshots.save(f"domain:{domain}")
    stats["domain"] = domain
    return stats


@contextmanager
def saved_when_stopped(run_dir: Path, summary: dict, started: float, main: bool = True):
    """A run stopped by its judge (JudgeError: a rejected key, too many failed requests) or by Ctrl-C / SIGTERM:
    every completed iteration has its checkpoint, so --resume continues; online_summary.json says why it stopped."""
    try:
        yield
    except JudgeError as error:
        if main:
            summary["stopped"] = str(error)
            write_summary(run_dir, summary, started)
        raise
    except KeyboardInterrupt:
        done = len(summary["iterations"]) - 1
        if main:
            print(f"\ninterrupted in iteration {done + 1}: {done} iterations are saved; --resume redoes iteration "
                  f"{done + 1} from its start", file=sys.stderr)
        raise


# ----------------------------------------------------------------------------------------------- helpers

def lora_config(section: LoraSection):
    from peft import LoraConfig

    return LoraConfig(r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout,
                      target_modules=section.target_modules, task_type="CAUSAL_LM")


def warm_start(cfg: OnlineConfig) -> str:
    """The SFT model the run starts from: the task's demonstrations, trained once with the offline
    loop and cached under $PREFTUNE_CACHE/online-warm-start/<hash of the settings>."""
    from preftune.train.runner import run_training

    w = cfg.warm_start
    # A sample of the demonstrations stands for the task's content: changing the task changes the key.
    settings = {"task": cfg.task, "options": cfg.task_options, "model": cfg.model.name_or_path,
                "dtype": cfg.model.dtype, "warm_start": to_dict(w), "seed": cfg.train.seed,
                "demonstrations": get_task(cfg.task, **cfg.task_options).demonstrations(16, w.noise, cfg.train.seed)}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(os.environ.get("PREFTUNE_CACHE", Path.home() / ".cache" / "preftune")) / "online-warm-start" / key
    if (root / "model" / "config.json").exists():
        return str(root / "model")
    run_training(RunConfig(name=f"warm-start-{key}", output_dir=str(root), loss="sft", reference="none",
                           model=replace(cfg.model, lora=LoraSection()),
                           data=DataConfig(source=f"task:{cfg.task}", kind="sft", max_length=64, max_prompt_length=32,
                                           task=TaskDataConfig(options=dict(cfg.task_options),
                                                               demonstrations=w.demonstrations, noise=w.noise)),
                           train=TrainConfig(steps=w.steps, batch_size=w.batch_size, lr=w.lr, warmup_ratio=0.1,
                                             schedule="cosine", seed=cfg.train.seed, progress=cfg.train.progress)))
    (root / "warm_start.json").write_text(json.dumps(settings, indent=1))
    return str(root / "model")


def write_summary(run_dir: Path, summary: dict, started: float) -> None:
    from preftune.report.online_plots import plot_online_curve

    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    (run_dir / "online_summary.json").write_text(json.dumps(summary, indent=1))
    plot_online_curve(summary, run_dir / "online_curve.png")
