"""The offline training loop. Reads top to bottom: set up, then one optimizer step per iteration.

One process on CPU by default; the same code runs under `accelerate launch` (DDP, FSDP,
DeepSpeed) or `torchrun`. Each optimizer step runs `grad_accum` micro-batches per process;
gradients are averaged over processes, so a run on W processes with batch_size b matches a
1-process run with batch_size W*b.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
import yaml
from tqdm.auto import tqdm

from preftune.config import RunConfig, to_dict
from preftune.data.collate import collate
from preftune.data.prepare import PreparedData
from preftune.fastpath import FastPathOptions, batch_logps, capabilities
from preftune.hub import training_card, write_card
from preftune.methods import Objective, build_objective
from preftune.models import (LoraSettings, Reference, add_lora, load_causal_lm, load_tokenizer,
                             make_reference, resolve_dtype)
from preftune.reference_cache import cache_applies, prepare_reference_cache
from preftune.train.checkpoint import StopRequests, save_checkpoint, save_interrupted
from preftune.train.checkpoint import start_step as resume_at
from preftune.train.distributed import check_process_count, configure_engine, cross_process_ops, load_models_whole
from preftune.train.metrics import MetricsLogger, StepMetrics
from preftune.train.plan import BatchPlan, batches_by_group
from preftune.train.precision import dtype_name, fp32_master_weights, save_in_dtype
from preftune.train.trackers import start_trackers, tracker_setup
from preftune.train.schedules import lr_multiplier


def make_accelerator(cfg: RunConfig):
    from accelerate import Accelerator

    precisions = {"fp32": "no", "bf16": "bf16"}
    if cfg.train.precision not in precisions:
        raise ValueError(f"train.precision must be 'fp32' or 'bf16', got {cfg.train.precision!r}")
    # A run that ended in an error (a bad row, a failing judge) leaves its settings in accelerate's
    # process-wide state, and a later run asking for another precision would be refused: start clean.
    release_accelerator()
    # Without a GPU, accelerate only forms a multi-process (gloo) group under torchrun when told
    # to run on the CPU explicitly.
    accelerator = Accelerator(mixed_precision=precisions[cfg.train.precision],
                              gradient_accumulation_steps=cfg.train.grad_accum, cpu=not torch.cuda.is_available(),
                              **tracker_setup(cfg.train.report_to, cfg.run_dir))
    check_process_count(accelerator)
    load_models_whole(accelerator)  # until configure_engine, before prepare
    return accelerator


def train(cfg: RunConfig, data: PreparedData, resume: str | bool | None = None,
          on_step_end: Callable[[int, dict], None] | None = None) -> Path:
    """Train the policy described by `cfg` on `data`; returns the run directory.

    data: the run's tokenized examples (train/sources.py: `run_data(cfg, rows)`). Deciding what
    they are (a file, rows in memory, a task's on-policy pairs, a curriculum's stages) is the
    runner's job (train/runner.py: `run_training`, which takes a recipe as the CLI does).
    resume: True (latest checkpoint of the run) or a checkpoint path. on_step_end(step, metrics):
    called after every step (a KeyboardInterrupt raised there, Ctrl-C or SIGTERM saves a checkpoint
    before stopping).
    """
    from accelerate.utils import set_seed

    if not isinstance(data, PreparedData):
        raise TypeError("train(cfg, data) trains on prepared data (train.sources.run_data(cfg, rows)); to run a "
                        "recipe whose data is a file, a task or a curriculum, call "
                        "preftune.train.runner.run_training(cfg, resume=..., data_source=...)")
    if cfg.curriculum.pairs:
        raise ValueError("a curriculum is a sequence of runs (train/curriculum.py); run its recipe with "
                         "preftune.train.runner.run_training")
    accelerator = make_accelerator(cfg)
    set_seed(cfg.train.seed)
    run_dir = cfg.run_dir
    main = accelerator.is_main_process
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    # --- what to optimise: objective, policy, reference
    objective = build_objective(cfg.loss)
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    policy = load_causal_lm(cfg.model.name_or_path, cfg.model.dtype, cfg.train.seed, tokenizer, **cfg.model.loading)
    policy.to(accelerator.device)

    # --- in what order: the batch plan, a pure function of (seed, step)
    list_sizes = [len(ex.response_ids) for ex in data.train]  # lists of different K never share a batch
    plan = BatchPlan(len(data.train), cfg.train.batch_size, cfg.train.grad_accum, accelerator.num_processes,
                     cfg.train.seed, cfg.train.steps, cfg.train.epochs, cfg.train.shuffle,
                     tuple(list_sizes) if len(set(list_sizes)) > 1 else None)

    if cfg.model.lora.enabled:
        lora = cfg.model.lora
        policy = add_lora(policy, LoraSettings(lora.r, lora.alpha, lora.dropout, lora.target_modules))
    reference = make_reference(cfg.reference, policy, cfg.model.name_or_path, cfg.model.dtype,
                               objective.needs_reference, cfg.train.seed, **cfg.model.loading)
    if reference.frozen is not None:
        reference.frozen.to(accelerator.device)
    # After the reference copy (it stays in model.dtype): the weights AdamW steps are fp32 (train/precision.py).
    fp32_master_weights(policy)
    aux_models = load_aux_models(cfg, objective, accelerator.device)
    # Before the reference cache: diagnostics keep their own handle on a frozen reference model.
    monitor = None
    if cfg.diagnostics.every and main:  # eval/diagnostics.py: 3D-properties, top-k indicators, KL, ...
        from preftune.eval.diagnostics import monitor_for_run

        monitor, monitor_reference = monitor_for_run(cfg, data, tokenizer, policy, reference, accelerator.unwrap_model)
    fast = FastPathOptions.from_config(cfg.speed)
    reference_cache = {}
    if cache_applies(cfg.speed.reference_cache, objective.needs_reference, data.kind):
        reference_cache = cache_reference_logps(cfg, reference, data, plan, tokenizer, accelerator, objective, fast)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    warmup = int(cfg.train.warmup_ratio * plan.total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, plan.total_steps, warmup, cfg.train.schedule))
    configure_engine(accelerator, cfg.train.batch_size, cfg.train.grad_accum, cfg.train.max_grad_norm)
    # The scheduler is stepped by hand once per optimizer step (accelerate would step it once per
    # process), and registered so that checkpoints hold its state.
    policy, optimizer = accelerator.prepare(policy, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    # Batch statistics of methods (BCO's shift, beta-DPO's margins, KTO's z0) are taken over the
    # global batch, every process's share of it; running ones are saved with the checkpoint so
    # that --resume continues them.
    objective.set_processes(cross_process_ops(accelerator))
    if objective.has_state:
        accelerator.register_for_checkpointing(objective)

    start_step = resume_at(accelerator, run_dir, resume)

    start_trackers(accelerator, cfg.name, to_dict(cfg), resumed_at=start_step)
    logger = MetricsLogger(run_dir, enabled=main, accelerator=accelerator)
    bar = tqdm(total=plan.total_steps, initial=start_step, disable=not (main and cfg.train.progress),
               desc=f"train {objective.describe()}", dynamic_ncols=True, mininterval=0.5)
    def one_step(step: int) -> dict:
        """Optimizer step `step`: this process's micro-batches, one update; returns its metrics."""
        started = time.perf_counter()
        stats, tokens, grad_norm = StepMetrics(data.kind), 0, float("nan")
        for indices in plan.micro_batches(step, accelerator.process_index):
            batch = collate([data.train[i] for i in indices], tokenizer.pad_token_id,
                            example_ids=indices).to(accelerator.device)
            tokens += batch.num_tokens
            with accelerator.accumulate(policy):
                out, policy_logps = compute_objective(objective, policy, reference, batch, accelerator, aux_models,
                                                      fast)
                accelerator.backward(out.loss.mean())
                if accelerator.sync_gradients:
                    grad_norm = clip_gradients(accelerator, policy, cfg.train.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
            stats.add(out, policy_logps)
        metrics = stats.reduce(accelerator)
        metrics.update(grad_norm=grad_norm, lr=scheduler.get_last_lr()[0], epoch=plan.epoch_of(step + 1),
                       tokens_per_s=tokens * accelerator.num_processes / (time.perf_counter() - started))
        return metrics

    completed, last, in_step = start_step, {}, False
    if monitor is not None and start_step == 0:
        logger.log(0, monitor(accelerator.unwrap_model(policy), monitor_reference))
    try:
        # Ctrl-C and SIGTERM (a preempted job) stop the loop between steps, and the last step is saved.
        with StopRequests(announce=main) as stop:
            for step in range(start_step, plan.total_steps):
                in_step = True
                last = one_step(step)
                completed, in_step = step + 1, False
                if completed % cfg.train.log_every == 0 or completed == plan.total_steps:
                    logger.log(completed, last)
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.4f}", **({"acc": f"{last['accuracy']:.2f}"} if "accuracy" in last else {}))
                if cfg.train.checkpoint_every and completed % cfg.train.checkpoint_every == 0:
                    save_checkpoint(accelerator, run_dir, completed, {"metrics": last}, cfg.train.keep_checkpoints)
                if cfg.train.eval_every and data.eval and completed % cfg.train.eval_every == 0:
                    logger.log(completed, evaluate_objective(objective, policy, reference, data, tokenizer, accelerator,
                                                             cfg.train.batch_size, aux_models, fast))
                if monitor is not None and (completed % cfg.diagnostics.every == 0 or completed == plan.total_steps):
                    logger.log(completed, monitor(accelerator.unwrap_model(policy), monitor_reference))
                if on_step_end is not None:
                    on_step_end(completed, last)
                stop.check(accelerator)
    except KeyboardInterrupt:
        # Nothing is lost: the last completed step is saved, and `--resume` continues from it exactly. A
        # second Ctrl-C within a step stops at once; that step may be half-applied, so it is not saved.
        optimizer.zero_grad()
        save_interrupted(accelerator, run_dir, completed, start_step, last, cfg.train.keep_checkpoints, in_step)
        bar.close()
        logger.close()
        release_accelerator()
        raise
    bar.close()

    # --- held-out evaluation, final model and summary
    final_eval = evaluate_objective(objective, policy, reference, data, tokenizer, accelerator,
                                    cfg.train.batch_size, aux_models, fast) if data.eval else {}
    if final_eval:
        logger.log(plan.total_steps, final_eval)
    logger.close()
    saved_dtype = None
    if cfg.train.save_model:
        saved_dtype = save_model(accelerator, policy, tokenizer, run_dir / "model", resolve_dtype(cfg.model.dtype))
    if main:
        precision = {"model_dtype": dtype_name(resolve_dtype(cfg.model.dtype)),
                     "master_weights": dtype_name(trainable[0].dtype), "autocast": cfg.train.precision,
                     "saved_dtype": saved_dtype}
        summary = {"objective": objective.describe(), "steps": plan.total_steps, "epochs": plan.epoch_of(plan.total_steps),
                   "global_batch": plan.global_batch, "processes": accelerator.num_processes,
                   "reference": reference.kind, "reference_cache": reference_cache,
                   "precision": precision, "fast_paths": vars(capabilities(policy)), "final_train_metrics": last,
                   "eval": final_eval, "data": data.summary(),
                   "model_dir": str(run_dir / "model") if cfg.train.save_model else None,
                   **({"diagnostics": {"every": cfg.diagnostics.every, "examples": len(monitor.examples),
                                       "examples_from": monitor.source}} if monitor is not None else {})}
        (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=1))
        if cfg.train.save_model:
            write_card(run_dir / "model", training_card(cfg, summary))  # README.md: the model card (hub.py)
    accelerator.wait_for_everyone()
    release_accelerator()
    return run_dir


def release_accelerator() -> None:
    """Forget this run's accelerate settings (mixed precision, accumulation) so that a later
    `train` in the same process may use others; the process group itself is kept."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def cache_reference_logps(cfg: RunConfig, reference: Reference, data, plan: BatchPlan, tokenizer, accelerator,
                          objective: Objective, fast: FastPathOptions) -> dict:
    """Serve the reference from a cache of its log-probs on every example the run uses (training
    examples of the plan, then all held-out ones, numbered after the training ones), computing
    what the cache lacks; the frozen reference model is released. Returns a summary."""
    examples = data.train + data.eval
    needed = plan.examples_used() + list(range(len(data.train), len(examples)))
    cache_dir = cfg.speed.reference_cache_dir or cfg.run_dir.parent / "reference-cache"
    table, summary = prepare_reference_cache(
        reference, examples, needed, cache_dir=cache_dir, precision=cfg.train.precision,
        token_level=objective.needs_token_logps, pad_token_id=tokenizer.pad_token_id,
        batch_size=cfg.train.batch_size, logps_fn=lambda model, batch, token_level: batch_logps(model, batch, token_level, fast),
        accelerator=accelerator, progress=accelerator.is_main_process and cfg.train.progress)
    reference.use_cache(table)
    return summary


def load_aux_models(cfg: RunConfig, objective: Objective, device) -> dict:
    """Frozen auxiliary models (e.g. TGDPO's guidance model) named in cfg.aux_models.

    A method receives the log-probs of the batch under the auxiliary model as its data extra of
    the same name, so every name must be one of the objective's declared extras.
    """
    unused = sorted(set(cfg.aux_models) - set(objective.extras))
    if unused:
        raise ValueError(f"aux_models {unused} are not data extras of {objective.describe()} "
                         f"(its extras: {list(objective.extras) or 'none'})")
    models = {}
    for name, path in cfg.aux_models.items():
        model = load_causal_lm(path, cfg.model.dtype, cfg.train.seed, **cfg.model.loading).to(device)
        models[name] = model.eval().requires_grad_(False)
    return models


def compute_objective(objective: Objective, policy, reference: Reference, batch, accelerator,
                      aux_models: dict | None = None, fast: FastPathOptions | None = None):
    """Reference and auxiliary log-probs (no grad), policy log-probs, then the per-example losses.

    The reference comes from its cache when it has one, else from a forward. Log-probs take the
    fast paths `fast` allows (all by default) where the model supports them (fastpath/).
    """
    reference_logps = None
    extras = dict(batch.extras)
    token_level = objective.needs_token_logps
    with torch.no_grad(), accelerator.autocast():
        if objective.needs_reference and reference.cache is not None:
            reference_logps = reference.cache.lookup(batch, token_level)
        elif objective.needs_reference:
            with reference.model(accelerator.unwrap_model) as ref_model:
                reference_logps = batch_logps(ref_model, batch, token_level, fast)
        for name, model in (aux_models or {}).items():
            extras[name] = batch_logps(model, batch, token_level, fast)
    policy_logps = batch_logps(policy, batch, token_level, fast)
    out = objective(policy_logps, reference_logps, extras)
    return out, policy_logps


def clip_gradients(accelerator, policy, max_norm: float) -> float:
    if max_norm and max_norm > 0:
        norm = accelerator.clip_grad_norm_(policy.parameters(), max_norm)
        return float("nan") if norm is None else float(norm)  # None: DeepSpeed before its first step
    norms = [p.grad.detach().norm() for p in policy.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


@torch.no_grad()
def evaluate_objective(objective, policy, reference, data, tokenizer, accelerator, batch_size: int,
                       aux_models: dict | None = None, fast: FastPathOptions | None = None) -> dict:
    """Loss and metrics on the held-out examples (each process takes every W-th batch).

    Running states of stateful methods are read, never updated, by held-out batches.
    """
    policy.eval()
    stats = StepMetrics(data.kind)
    batches = batches_by_group([len(ex.response_ids) for ex in data.eval], batch_size)
    # Every process runs the same number of forwards (collectives must match); a process whose
    # share ran out repeats the first batch and does not count it.
    per_process = math.ceil(len(batches) / accelerator.num_processes)
    with objective.frozen_state():
        for i in range(per_process):
            position = accelerator.process_index * per_process + i
            indices = batches[position] if position < len(batches) else batches[0]
            ids = [len(data.train) + j for j in indices]  # held-out ids follow the training ids (cache_reference_logps)
            batch = collate([data.eval[j] for j in indices], tokenizer.pad_token_id, example_ids=ids).to(accelerator.device)
            out, policy_logps = compute_objective(objective, policy, reference, batch, accelerator, aux_models, fast)
            stats.add(out, policy_logps, count=position < len(batches))
    policy.train()
    return {f"eval/{k}": v for k, v in stats.reduce(accelerator).items() if not math.isnan(v)}


def save_model(accelerator, policy, tokenizer, path: Path, dtype: torch.dtype) -> str:
    """save_pretrained of the unwrapped policy in model.dtype (a LoRA policy saves its adapter) and the
    tokenizer; returns the dtype of the saved weights."""
    accelerator.wait_for_everyone()
    state = accelerator.get_state_dict(policy)
    saved = dtype_name(dtype)
    if accelerator.is_main_process:
        saved = save_in_dtype(accelerator.unwrap_model(policy), path, dtype, state, save_function=accelerator.save)
        tokenizer.save_pretrained(str(path))
    accelerator.wait_for_everyone()
    return saved
