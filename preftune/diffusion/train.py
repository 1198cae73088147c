"""The diffusion training loop. Reads top to bottom: set up, then one optimizer step per iteration.

It shares the language loop's machinery: the accelerate setup, the batch plan, the LR schedule,
atomic checkpoints with exact resume, the metrics logger and the reference (a frozen copy, the
policy with its LoRA adapters disabled, or a model given by path). What differs is where a step's
micro-batches come from (offline.py for data, online.py for rollouts) and how records are built from
them (batches.py); the objective is the same `Objective` of registered methods.
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from preftune.config import to_dict
from preftune.diffusion.batches import INDEPENDENT_NOISE, INVERSION, NoisePlan, build_records, generator
from preftune.diffusion.config import DiffusionConfig
from preftune.methods import build_objective
from preftune.train.checkpoint import StopRequests, save_checkpoint, save_interrupted
from preftune.train.checkpoint import start_step as resume_at
from preftune.train.loop import clip_gradients, make_accelerator, release_accelerator
from preftune.train.distributed import configure_engine
from preftune.train.metrics import MetricsLogger, StepMetrics
from preftune.train.precision import dtype_name, fp32_master_weights
from preftune.train.schedules import lr_multiplier
from preftune.train.trackers import start_trackers

ONLINE_KINDS = ("trajectory-pairs", "trajectories", "sample-groups", "expert-online")
SUMMARY = "diffusion_summary.json"


def diffusion_objective(loss):
    objective = build_objective(loss)
    others = [t.spec.name for t in objective.terms if t.spec.family != "diffusion"]
    if others:
        raise ValueError(f"`preftune diffusion train` trains diffusion methods; {', '.join(others)} "
                         f"{'is' if len(others) == 1 else 'are'} not (see `preftune methods`)")
    return objective


def noise_plan(cfg: DiffusionConfig, objective, schedule, sampler_noise: float) -> NoisePlan:
    names = objective.names
    share = {"auto": not any(n in INDEPENDENT_NOISE for n in names), "yes": True, "no": False}
    if cfg.noise.share_noise not in share:
        raise ValueError(f"noise.share_noise must be auto, yes or no, got {cfg.noise.share_noise!r}")
    inversion = cfg.noise.inversion_steps
    if inversion < 0:
        inversion = max([INVERSION.get(n, 0) for n in names])
    time_distribution = cfg.noise.time
    return NoisePlan(schedule, share[cfg.noise.share_noise], time_distribution, inversion, cfg.noise.reduction,
                     cfg.rollout.draws, sampler_noise, keep_prediction="awm" in names)


def make_reference(cfg: DiffusionConfig, objective, network, model, dtype):
    """The language side's Reference: none, the LoRA-disabled policy, a frozen copy, or a model by path."""
    from preftune.models import Reference, make_reference as lm_reference

    if objective.needs_reference and cfg.reference not in ("auto", "model", "lora-disabled", "none"):
        from preftune.diffusion.models import load_diffusion_model

        return Reference("model", frozen=load_diffusion_model(cfg.reference, dtype,
                                                              allow_pickle=cfg.model.allow_pickle).network)
    return lm_reference(cfg.reference, network, cfg.model.name_or_path, cfg.model.dtype, objective.needs_reference)


def make_source(cfg: DiffusionConfig, kind: str, model, network, reward, accelerator):
    """Where a step's micro-batches come from: rollouts for the online kinds, else the examples of a
    data file or made from the toy base model, in the order of the batch plan."""
    from preftune.diffusion.data import load_examples
    from preftune.diffusion.offline import OfflineSource, lists_to_pairs, pair_unpaired
    from preftune.diffusion.online import SOURCES
    from preftune.train.plan import BatchPlan

    data_kind = {"expert-online": "unpaired"}.get(kind, kind) if cfg.data.kind == "auto" else cfg.data.kind
    examples, report = [], {}
    if cfg.data.source == "toy":
        from preftune.diffusion.toy_data import toy_examples

        if model.task is None:
            raise ValueError("data.source: toy needs a toy model (builtin:toy-<name>)")
        if kind not in ONLINE_KINDS or kind == "expert-online":
            examples = toy_examples(data_kind if kind != "expert-online" else kind, cfg.data.toy, model, network, reward,
                                    cfg.train.seed)
    elif cfg.data.source:
        wanted = "prompts" if kind in ONLINE_KINDS and kind != "expert-online" else data_kind
        examples, loaded = load_examples(cfg.data.source, wanted, cfg.data.on_bad_row, cfg.data.split, cfg.data.limit,
                                         cfg.data.image_root)
        report = loaded.as_dict()
    if kind in ONLINE_KINDS:
        prompts = [ex.condition for ex in examples if isinstance(ex.condition, str)] or None  # captions to sample
        extra = {"experts": [ex for ex in examples if ex.extras.get("label", True)], "network": network} \
            if kind == "expert-online" else {}
        source = SOURCES[kind](kind, model, reward, cfg, accelerator.process_index, prompts, **extra)
        return source, [], report
    if data_kind == "unpaired":   # positives and negatives (DSO, DDO; or DPO on the same sets)
        examples = pair_unpaired(examples, cfg.train.seed)
    elif data_kind == "image-lists" and kind == "image-pairs":   # a pairwise method on ranked lists
        examples = lists_to_pairs(examples)
    if cfg.data.source == "toy":   # a file's rows are limited as they are read; toy rows once made
        examples = examples[: cfg.data.limit]
    held = int(round(cfg.data.eval_fraction * len(examples))) if len(examples) > 10 else 0
    order = torch.randperm(len(examples), generator=generator(cfg.train.seed, "held-out split")).tolist()
    eval_examples = [examples[i] for i in order[:held]]
    train_examples = [examples[i] for i in order[held:]]
    plan = BatchPlan(len(train_examples), cfg.train.batch_size, cfg.train.grad_accum, accelerator.num_processes,
                     cfg.train.seed, cfg.train.steps, cfg.train.epochs, cfg.train.shuffle)
    source = OfflineSource(kind, train_examples, model, plan, accelerator.process_index, cfg.noise.condition_dropout,
                           cfg.train.seed)
    return source, eval_examples, {**report, "train_examples": len(train_examples), "held_out": held}


def train_diffusion(cfg: DiffusionConfig, resume: str | bool | None = None, on_step_end=None) -> Path:
    """Train the diffusion model of `cfg`; returns the run directory (model/, metrics.jsonl, samples/)."""
    from accelerate.utils import set_seed

    from preftune.diffusion.evaluate import Evaluator
    from preftune.diffusion.models import load_diffusion_model, reference_call, save_network
    from preftune.diffusion.online import sampler_settings
    from preftune.diffusion.rewards import build_reward
    from preftune.models import LoraSettings, add_lora, resolve_dtype

    if cfg.train.grad_accum != 1 and diffusion_objective(cfg.loss).input_kind in ONLINE_KINDS:
        raise ValueError("online diffusion methods accumulate over a rollout's steps; leave train.grad_accum at 1")
    accelerator = make_accelerator(cfg)
    set_seed(cfg.train.seed)
    run_dir, main = cfg.run_dir, accelerator.is_main_process
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    # --- what to optimise: objective, network, reference
    objective = diffusion_objective(cfg.loss)
    kind = objective.input_kind
    dtype = resolve_dtype(cfg.model.dtype)
    model = load_diffusion_model(cfg.model.name_or_path, dtype, progress=main and cfg.train.progress,
                                 frames=cfg.model.frames, allow_pickle=cfg.model.allow_pickle)
    network = model.network
    if model.pipeline is not None:
        model.pipeline.to(accelerator.device)
    network.to(accelerator.device)
    if cfg.model.lora.enabled:
        lora = cfg.model.lora
        network = add_lora(network, LoraSettings(lora.r, lora.alpha, lora.dropout, lora.target_modules), task_type=None)
    reference = make_reference(cfg, objective, network, model, dtype)
    if reference.frozen is not None:
        reference.frozen.to(accelerator.device)
    # After the reference copy (it stays in model.dtype): AdamW steps fp32 master weights, as on the
    # language side (train/precision.py); a bf16 network stepped directly rounds small updates away.
    fp32_master_weights(network)
    reward = build_reward(cfg.reward, model.task, accelerator.device)
    sampler, sampler_noise = sampler_settings(model.schedule, cfg.rollout)
    plan = noise_plan(cfg, objective, model.schedule, sampler_noise)
    plan.frame_dim = model.frame_dim

    # --- on what data
    source, eval_examples, data_report = make_source(cfg, kind, model, network, reward, accelerator)
    total_steps = getattr(getattr(source, "plan", None), "total_steps", None) or cfg.train.steps
    if not total_steps:
        raise ValueError("set train.steps (online methods have no epochs)")
    trainable = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    warmup = int(cfg.train.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, total_steps, warmup, cfg.train.schedule))
    configure_engine(accelerator, cfg.train.batch_size, cfg.train.grad_accum, cfg.train.max_grad_norm)
    network, optimizer = accelerator.prepare(network, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if getattr(source, "stateful", False):
        accelerator.register_for_checkpointing(source)

    start_step = resume_at(accelerator, run_dir, resume)

    start_trackers(accelerator, cfg.name, to_dict(cfg), resumed_at=start_step)
    logger = MetricsLogger(run_dir, enabled=main, accelerator=accelerator)
    evaluator = Evaluator(cfg, model, reward, reference, eval_examples, accelerator) if main else None
    if evaluator is not None and start_step == 0:
        logger.log(0, evaluator(accelerator.unwrap_model(network), 0, run_dir))
    bar = tqdm(total=total_steps, initial=start_step, disable=not (main and cfg.train.progress),
               desc=f"diffusion {objective.describe()}", dynamic_ncols=True, mininterval=0.5)

    ref_call = reference_call(reference, model, accelerator.unwrap_model)

    def one_step(step: int) -> dict:
        """Optimizer step `step`: this process's micro-batches (gradients summed with equal weight), one update."""
        started = time.perf_counter()
        stats = StepMetrics(kind)
        batches = source.micro_batches(step, accelerator.device, network)
        for m, batch in enumerate(batches):
            g = generator(cfg.train.seed, step, m, accelerator.process_index, "noise")
            last = m == len(batches) - 1
            with (accelerator.no_sync(network) if not last else nullcontext()):
                policy_record, reference_record = build_records(batch, model.call(network), ref_call, plan, g)
                out = objective(policy_record, reference_record, batch.extras)
                accelerator.backward(out.loss.mean() / (len(batches) if kind in ONLINE_KINDS else 1))
            stats.add(out, policy_record)
        grad_norm = clip_gradients(accelerator, network, cfg.train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        metrics = stats.reduce(accelerator)
        metrics.update(grad_norm=grad_norm, lr=scheduler.get_last_lr()[0], seconds=time.perf_counter() - started)
        if hasattr(source, "reward_evaluations"):
            metrics.update(reward_evaluations=source.reward_evaluations, rollout_reward=source.reward_mean)
        return metrics

    completed, last, in_step = start_step, {}, False
    try:
        # Ctrl-C and SIGTERM (a preempted job) stop the loop between steps, and the last step is saved.
        with StopRequests(announce=main) as stop:
            for step in range(start_step, total_steps):
                in_step = True
                last = one_step(step)
                completed, in_step = step + 1, False
                if completed % cfg.train.log_every == 0 or completed == total_steps:
                    logger.log(completed, last)
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.4f}")
                if cfg.train.checkpoint_every and completed % cfg.train.checkpoint_every == 0:
                    save_checkpoint(accelerator, run_dir, completed, {"metrics": last}, cfg.train.keep_checkpoints)
                if evaluator is not None and cfg.eval.every and completed % cfg.eval.every == 0 and completed < total_steps:
                    logger.log(completed, evaluator(accelerator.unwrap_model(network), completed, run_dir))
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

    final = evaluator(accelerator.unwrap_model(network), total_steps, run_dir) if evaluator is not None else {}
    if final:
        logger.log(total_steps, final)
    logger.close()
    accelerator.wait_for_everyone()
    if main:
        save_network(model, accelerator.unwrap_model(network), run_dir / "model", dtype)
        precision = {"model_dtype": dtype_name(dtype), "master_weights": dtype_name(trainable[0].dtype),
                     "autocast": cfg.train.precision, "saved_dtype": dtype_name(dtype)}
        summary = {"objective": objective.describe(), "kind": kind, "steps": total_steps, "model": cfg.model.name_or_path,
                   "precision": precision,
                   "reference": reference.kind, "reward": getattr(reward, "name", str(cfg.reward)),
                   "processes": accelerator.num_processes, "data": data_report, "final_train_metrics": last,
                   "eval": final, "initial_eval": evaluator.initial if evaluator is not None else {},
                   "model_dir": str(run_dir / "model")}
        (run_dir / SUMMARY).write_text(json.dumps(summary, indent=1))
    accelerator.wait_for_everyone()
    release_accelerator()
    return run_dir
