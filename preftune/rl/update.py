"""Update on one iteration's rows: optimizer steps of the objective, with the live extras it asks for.

The order of the rows is a pure function of (seed, iteration) (train/plan.py's BatchPlan over update
units: single rows, or whole groups for GRPO), so a resumed iteration takes the same steps. Per step:
collate, one policy forward (log-probs; entropy, full distributions or hidden states when asked), the
critic's values with gradient, the exact KL against the frozen reference, the objective, one
optimizer step over the policy's and the critic's parameters (two learning rates, one optimizer).
"""
from __future__ import annotations

from typing import Callable

import torch

from preftune.rl.context import RLContext
from preftune.rl.forward import exact_kl, next_token_log_probs, policy_forward, value_forward
from preftune.rl.rows import LOGPS_KEYS, Row, RowBatch, collate_rows
from preftune.train.metrics import StepMetrics
from preftune.train.plan import BatchPlan

PER_TOKEN_TENSORS = ("old_values", "step_ids")


def step_extras(ctx: RLContext, rb: RowBatch, forward) -> dict:
    """The objective's extras for one batch: frozen ones from the rows, live ones from forward passes."""
    extras: dict = {}
    for key in ctx.objective.extras:
        if key in LOGPS_KEYS:
            extras[key] = rb.logps(key)
        elif key in PER_TOKEN_TENSORS:
            extras[key] = rb.tokens[key]
        elif key in rb.values:
            extras[key] = rb.values[key]
    if ctx.wants("values"):
        if ctx.value_head is not None:
            extras["values"] = ctx.value_head(forward.hidden)[..., 0]
        else:
            extras["values"] = value_forward(ctx.value_model, rb.batch, rb.mask)[..., 0]
    if ctx.wants("token_kl"):
        extras["token_kl"] = exact_kl(forward.log_probs, next_token_log_probs(ctx.reference, rb.batch), rb.mask)
    if ctx.wants("entropy"):
        extras["entropy"] = forward.entropy
    missing = [k for k in ctx.objective.extras if k not in extras]
    if missing:
        raise ValueError(f"the rows lack the extras {missing} that {ctx.objective.describe()} needs")
    return extras


def update(ctx: RLContext, rows: list[Row], units: list[list[int]], t: int, policy, optimizer, accelerator,
           on_step: Callable[[int, dict], None] | None = None) -> dict:
    """cfg.train.steps optimizer steps (or train.epochs over the units) on `rows`; the mean of their metrics."""
    train = ctx.cfg.train
    if not units:
        return {"train/steps": 0}
    per_unit = max(1, len(units[0]))
    batch_units = max(1, min(train.batch_size // per_unit, len(units)))
    plan = BatchPlan(len(units), batch_units, 1, 1, ctx.seed(t, 2), train.steps, train.epochs)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    totals: dict[str, float] = {}
    policy.train()
    for step in range(plan.total_steps):
        indices = [i for u in plan.step_indices(step) for i in units[u]]
        rb = collate_rows([rows[i] for i in indices], ctx.pad).to(ctx.device)
        with accelerator.autocast():
            forward = policy_forward(policy, rb.batch, entropy=ctx.wants("entropy"), distribution=ctx.wants("token_kl"),
                                     hidden=ctx.value_head is not None and ctx.wants("values"))
            reference = rb.logps("reference") if ctx.objective.needs_reference else None
            out = ctx.objective(forward.logps, reference, step_extras(ctx, rb, forward))
        accelerator.backward(out.loss.mean())
        max_norm = train.max_grad_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm and max_norm > 0 else float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stats = StepMetrics("rollout")
        stats.add(out, forward.logps)
        metrics = {**stats.reduce(accelerator), "grad_norm": float(grad_norm)}
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + value / plan.total_steps
        if on_step is not None:
            on_step(step + 1, metrics)
    return {f"train/{k}": v for k, v in totals.items()} | {"train/steps": plan.total_steps}
