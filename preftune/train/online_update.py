"""Update the policy on an iteration's rows: train.steps optimizer steps of the objective, the frozen
log-probs read from the rows, the policy's from a forward pass; OFS-DPO's slow adapter alongside."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from preftune.data.collate import collate
from preftune.data.tokenize import TokenizedExample
from preftune.logps import sequence_logps
from preftune.methods import Objective
from preftune.methods.dpo import dpo
from preftune.records import Logps
from preftune.train.distributed import average_gradients
from preftune.train.metrics import StepMetrics
from preftune.train.online_state import OnlineLoop
from preftune.train.plan import BatchPlan
from preftune.train.schedules import lr_multiplier


def update(loop: OnlineLoop, t: int, phase: str, examples: list[TokenizedExample], directory: Path, stats: dict) -> None:
    """cfg.train.steps optimizer steps (or train.epochs over the rows) of the objective on `examples`.

    Under W processes every process holds all the rows and takes its slice of each global batch
    of W x batch_size rows (train/plan.py), and the gradients are averaged before each step."""
    train, accelerator = loop.cfg.train, loop.accelerator
    world = accelerator.num_processes
    batch_size = min(train.batch_size, len(examples) // world)
    if batch_size == 0:
        stats[f"{phase}/steps"] = 0
        return
    plan = BatchPlan(len(examples), batch_size, 1, world, train.seed * 1_000_003 + 10 * t + (phase == "full"),
                     train.steps, train.epochs)
    loop.model.train()
    totals: dict[str, float] = {}
    bar = tqdm(range(plan.total_steps), desc=f"iter {t} train ({phase})", disable=not train.progress,
               dynamic_ncols=True, mininterval=0.5, leave=False)
    for step in bar:
        multiplier = lr_multiplier(step, plan.total_steps, int(train.warmup_ratio * plan.total_steps),
                                   train.schedule)
        for group in loop.optimizer.param_groups:
            group["lr"] = group["base_lr"] * multiplier
        indices = plan.micro_batches(step, accelerator.process_index)[0]
        batch = collate([examples[i] for i in indices], loop.tokenizer.pad_token_id).to(loop.device)
        metrics = optimizer_step(loop, batch)
        metrics["lr"] = multiplier * train.lr
        if accelerator.is_main_process:
            with (directory / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps({"phase": phase, "step": step + 1, **metrics}) + "\n")
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + value / plan.total_steps
        bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        if loop.on_step_end is not None:
            loop.on_step_end(t, step + 1, metrics)
    stats.update({f"{phase}/steps": plan.total_steps,
                  **{f"{phase}/{k}": round(v, 6) for k, v in totals.items() if k != "lr"}})


def optimizer_step(loop: OnlineLoop, batch) -> dict:
    """One optimizer step on one batch: frozen log-probs from the rows, the policy's from a forward pass."""
    stats = StepMetrics(loop.objective.input_kind)
    extras = {k: v for k, v in batch.extras.items() if not k.startswith("logps:")}
    with loop.accelerator.autocast():
        policy = sequence_logps(loop.model, batch)
        frozen = {k[len("logps:"):]: Logps(sum=v.to(policy.sum.dtype), length=policy.length)
                  for k, v in batch.extras.items() if k.startswith("logps:")}
        if "previous" in frozen:
            extras["previous"] = frozen["previous"]
        if loop.schedule.history:
            extras["history"] = [frozen[f"history:{j}"] for j in range(loop.schedule.history)]
        slow_loss = None
        if loop.fast_slow:
            extras["slow"], slow_loss = slow_module_loss(loop, batch, frozen["reference"])
        out = loop.objective(policy, frozen["reference"], extras)
        loss = out.loss.mean() + (slow_loss.mean() if slow_loss is not None else 0.0)
    loop.accelerator.backward(loss)
    max_norm = loop.cfg.train.max_grad_norm
    params = [p for g in loop.optimizer.param_groups for p in g["params"]]
    average_gradients(params, loop.accelerator)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    loop.optimizer.step()
    loop.optimizer.zero_grad(set_to_none=True)
    stats.add(out, policy)
    metrics = stats.reduce(loop.accelerator)
    metrics["grad_norm"] = float(grad_norm)
    if slow_loss is not None:
        metrics["slow_dpo_loss"] = float(slow_loss.detach().mean())
    return metrics


def slow_module_loss(loop: OnlineLoop, batch, reference: Logps):
    """OFS-DPO's slow adapter: its plain DPO loss (at the fast term's beta) and its detached log-probs."""
    with loop.fast_slow.active(loop.fast_slow.slow):
        slow = sequence_logps(loop.model, batch)
    return slow.detach(), dpo(slow, reference, beta=fast_term_beta(loop.objective)).loss


def fast_term_beta(objective: Objective) -> float:
    """The beta of the objective's first term (OFS-DPO's fast adapter), the slow adapter's and COFS's too."""
    term = objective.terms[0]
    return term.params.get("beta", term.spec.hyperparameters["beta"])
