"""The models an RL run needs beside its policy, made once before the first iteration and kept in the
run directory so that --resume reuses them: the frozen reference, the critic or value head, the reward
model (given, or learned from scored samples for mo_grpo), and RTO's DPO policy (given, or trained
with `preftune train`'s own loop on the task's pairs from the starting policy)."""
from __future__ import annotations

from pathlib import Path

from preftune.rl.context import RLContext
from preftune.rl.rewards import aspect_names, train_reward_model
from preftune.rl.value_model import ValueHead, ValueModel, hidden_size_of


def prepare_models(ctx: RLContext, algorithm: str, policy_path: str, dpo_path: str | None = None) -> None:
    """Fill ctx with the models the method needs (dpo_path: RTO's DPO policy, from `dpo_policy_path`)."""
    from preftune.models import load_causal_lm, make_reference

    cfg, device = ctx.cfg, ctx.device
    if ctx.objective.needs_reference and algorithm != "dapo":  # DAPO's pi_ref is the policy at each iteration's start
        ctx.reference = make_reference("model", ctx.policy, policy_path, cfg.model.dtype, True, cfg.train.seed,
                                       **cfg.model.loading).frozen
        ctx.reference.to(device)
    if ctx.wants("values") or algorithm == "dapo":
        if cfg.value.shared_backbone and ctx.wants("values"):
            ctx.value_head = ValueHead(hidden_size_of(ctx.policy)).to(device)
        elif cfg.value.name_or_path == "policy":
            ctx.value_model = ValueModel.from_policy(ctx.policy).to(device)
        else:
            ctx.value_model = ValueModel.from_pretrained(cfg.value.name_or_path, dtype=cfg.model.dtype,
                                                       **cfg.model.loading).to(device)
    if cfg.reward.source in ("aspects", "learned") or (cfg.reward.source == "task" and getattr(ctx.task, "objectives", None)):
        ctx.aspect_names = aspect_names(ctx.task, cfg)
    if cfg.reward.source == "learned":
        ctx.reward_model = train_reward_model(cfg, ctx.task, ctx.policy, ctx.tokenizer, ctx.run_dir / "reward_model",
                                              device).eval().requires_grad_(False)
    elif cfg.reward.source == "model":
        if not cfg.reward.path:
            raise ValueError("reward.source: model needs reward.path (a value model saved by preftune)")
        ctx.reward_model = ValueModel.from_pretrained(cfg.reward.path, **cfg.model.loading).to(device).eval().requires_grad_(False)
        ctx.aspect_names = ctx.reward_model.head.names
    if ctx.wants("dpo"):
        ctx.dpo_model = load_causal_lm(dpo_path, cfg.model.dtype, cfg.train.seed, **cfg.model.loading).to(device).eval().requires_grad_(False)


def dpo_policy_path(cfg, policy_path: str) -> str:
    """RTO's pi_dpo: the configured model, or (`auto`) DPO from the starting policy on pairs of its own
    samples labelled by the task's gold score (`task:<name>` data of `preftune train`), trained in
    RUN_DIR/dpo by the offline loop before the RL run sets up its accelerator; reused when already there."""
    from preftune.config import DataConfig, RunConfig, TaskDataConfig, TrainConfig
    from preftune.train.runner import run_training

    d = cfg.dpo
    if d.path != "auto":
        return d.path
    root = cfg.run_dir / "dpo"
    if (root / "model" / "config.json").exists():
        return root / "model"
    run = RunConfig(name="dpo", output_dir=str(root), model=cfg.model.__class__(name_or_path=policy_path,
                                                                                dtype=cfg.model.dtype),
                    loss={"dpo": {"beta": d.beta}}, reference="model",
                    data=DataConfig(source=f"task:{cfg.task}", kind="pairwise", max_length=128, max_prompt_length=64,
                                    task=TaskDataConfig(options=dict(cfg.task_options), prompts=max(1, d.steps * d.batch_size // 2),
                                                        samples_per_prompt=d.samples_per_prompt,
                                                        max_new_tokens=cfg.rollout.max_new_tokens)),
                    train=TrainConfig(steps=d.steps, batch_size=d.batch_size, lr=d.lr, warmup_ratio=0.1, schedule="cosine",
                                      seed=cfg.train.seed, progress=cfg.train.progress))
    run_training(run)
    return str(root / "model")
