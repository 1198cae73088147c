"""PPO and PDPPO on the stochastic lot-sizing environment (`preftune rl --config configs/rl/pdppo.yaml`).

Reads top to bottom like the other loops. Each update:

    make data  `episodes_per_update` whole episodes with the current policy; at every step the agent
               computes the post-decision state s^x from its observation and action (the known
               deterministic model) and keeps (s, s^x, a, log pi_old(a|s), V_old(s), V^x_old(s^x), r)
    update     normalised discounted Monte-Carlo returns; `epochs` full-batch gradient steps of the
               objective (pdppo; critic "state" is vanilla PPO), Adam with the actor's and the critics'
               learning rates
    evaluate   every `eval_every` updates, the exact expected return of the policy (stochastic and
               greedy) by dynamic programming over every state, against the instance's optimum

Sampling is seeded by (seed, update), so a resumed run makes the same episodes: checkpoints (through
accelerate, as `preftune train`) hold the model and optimizer only.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from preftune.config import to_dict
from preftune.methods import build_objective
from preftune.records import Logps
from preftune.rl.actor_critic import ActorCritic
from preftune.rl.advantages import discounted_returns
from preftune.rl.config import LotSizingRunConfig
from preftune.rl.lot_sizing import LotSizingEnv, feasible_actions, post_decision, small_instance
from preftune.rl.lot_sizing_dp import evaluate, solve, states
from preftune.train.checkpoint import load_checkpoint, resolve_resume, save_checkpoint, sigterm_as_interrupt
from preftune.train.metrics import MetricsLogger, truncate_metrics
from preftune.train.trackers import start_trackers


@dataclass
class Transitions:
    observations: torch.Tensor       # (N, D)
    post_observations: torch.Tensor  # (N, D)
    actions: torch.Tensor            # (N, M)
    logps: torch.Tensor              # (N, M) under the sampling policy
    values: torch.Tensor             # (N,) V_old(s)
    post_values: torch.Tensor        # (N,) V^x_old(s^x)
    rewards: list[float]
    dones: list[bool]
    episode_returns: list[float]


def per_token(values: torch.Tensor) -> Logps:
    """(N, M) per-machine log-probs as a record of N one-response examples with M 'tokens'."""
    return Logps.from_tokens(values.unsqueeze(1), torch.ones_like(values, dtype=torch.bool).unsqueeze(1))


@torch.no_grad()
def collect(env: LotSizingEnv, model: ActorCritic, episodes: int, seed: int) -> Transitions:
    """`episodes` whole episodes of the current policy, seeded by `seed` (environment and actions)."""
    generator = torch.Generator().manual_seed(seed)
    env.rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("obs", "post", "actions", "logps", "rewards", "dones")}
    episode_returns = []
    for _ in range(episodes):
        observation, done, total = env.reset(), False, 0.0
        while not done:
            obs = torch.as_tensor(observation)
            action, logp = model.act(obs, generator)
            inventory, setup = env.decode(observation)
            after, new_setup, _ = post_decision(env.instance, inventory, setup, action)
            rows["post"].append(torch.as_tensor(env.observation(after, new_setup)))
            rows["obs"].append(obs)
            rows["actions"].append(action)
            rows["logps"].append(logp)
            observation, reward, done, _ = env.step(action)
            rows["rewards"].append(reward)
            rows["dones"].append(done)
            total += reward
        episode_returns.append(total)
    observations, post = torch.stack(rows["obs"]), torch.stack(rows["post"])
    return Transitions(observations, post, torch.tensor(rows["actions"]), torch.stack(rows["logps"]),
                       model.critic(observations).squeeze(-1), model.post_critic(post).squeeze(-1),
                       rows["rewards"], rows["dones"], episode_returns)


def update(model: ActorCritic, optimizer, objective, batch: Transitions, cfg: LotSizingRunConfig) -> dict:
    """`cfg.epochs` full-batch steps of the objective on one update's transitions; the last step's metrics."""
    returns = torch.tensor(discounted_returns(batch.rewards, batch.dones, cfg.gamma), dtype=torch.float32)
    returns = (returns - returns.mean()) / (returns.std() + 1e-7)
    old = per_token(batch.logps)
    metrics: dict = {}
    for _ in range(cfg.epochs):
        logp, entropy, values, post_values = model.evaluate(batch.observations, batch.post_observations, batch.actions)
        out = objective(per_token(logp), None, {
            "old": old, "returns": returns, "values": values, "post_values": post_values, "old_values": batch.values,
            "old_post_values": batch.post_values, "entropy": entropy.unsqueeze(1)})
        optimizer.zero_grad()
        out.loss.mean().backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))
        optimizer.step()
        metrics = {"loss": float(out.loss.mean().detach()), "grad_norm": float(grad_norm),
                   **{k: float(v.float().mean()) for k, v in out.metrics.items()}}
    return metrics


@torch.no_grad()
def exact_returns(model: ActorCritic, env: LotSizingEnv, optimum: float) -> dict:
    """Expected undiscounted return of the policy and of its greedy version, exactly, with the gap to the optimum."""
    instance, every = env.instance, states(env.instance)
    actions = feasible_actions(instance)
    tables = {}
    for t in range(instance.horizon):
        observations = torch.as_tensor(np.stack([env.observation(inv, setup, t) for inv, setup in every]))
        parts = [lp.exp() for lp in model.log_probs(observations)]
        joint = torch.stack([torch.stack([parts[m][:, a[m]] for m in range(len(a))]).prod(0) for a in actions], -1)
        joint = joint / joint.sum(-1, keepdim=True)  # infeasible actions (none on the small instance) renormalised
        tables[t] = dict(zip(every, joint.tolist()))
    stochastic = evaluate(instance, lambda t, s: dict(zip(actions, tables[t][s])))
    greedy = evaluate(instance, lambda t, s: {actions[int(np.argmax(tables[t][s]))]: 1.0})
    return {"eval/expected_return": stochastic, "eval/greedy_return": greedy, "eval/optimum": optimum,
            "eval/gap": optimum - stochastic, "eval/greedy_gap": optimum - greedy}


def run_lot_sizing(cfg: LotSizingRunConfig, resume: str | bool | None = None,
                   on_update_end: Callable[[int, dict], None] | None = None) -> Path:
    """Train the actor-critic of `cfg`; returns the run directory (metrics.jsonl, rl_summary.json, model.pt)."""
    from accelerate.utils import set_seed

    from preftune.train.loop import make_accelerator, release_accelerator

    accelerator = make_accelerator(cfg)
    set_seed(cfg.train.seed)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    started = time.perf_counter()

    env = LotSizingEnv(small_instance(**cfg.instance), cfg.observe_time, cfg.train.seed)
    objective = build_objective(cfg.loss)
    model = ActorCritic(env.observation_size, env.instance.action_sizes, cfg.hidden)
    optimizer = torch.optim.Adam([{"params": model.actor.parameters(), "lr": cfg.train.lr},
                                  {"params": [*model.critic.parameters(), *model.post_critic.parameters()],
                                   "lr": cfg.critic_lr}], weight_decay=cfg.train.weight_decay, foreach=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    optimum = solve(env.instance).optimum

    start, checkpoint = 0, resolve_resume(run_dir, resume)
    if checkpoint is not None:
        start = load_checkpoint(accelerator, checkpoint)["step"]
        truncate_metrics(run_dir, start)
    elif (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()
    start_trackers(accelerator, cfg.name, to_dict(cfg), resumed_at=start)
    logger = MetricsLogger(run_dir, enabled=True, accelerator=accelerator)
    unwrapped = accelerator.unwrap_model(model)
    completed, last = start, {}
    try:
        with sigterm_as_interrupt():
            for step in tqdm(range(start, cfg.updates), initial=start, total=cfg.updates, disable=not cfg.train.progress,
                             desc=f"{objective.describe()} on lot-sizing", dynamic_ncols=True, mininterval=0.5):
                batch = collect(env, unwrapped, cfg.episodes_per_update, cfg.train.seed * 1_000_003 + step)
                last = {**update(unwrapped, optimizer, objective, batch, cfg),
                        "episode_return": float(np.mean(batch.episode_returns))}
                completed = step + 1
                if completed % cfg.eval_every == 0 or completed == cfg.updates:
                    last.update(exact_returns(unwrapped, env, optimum))
                logger.log(completed, last)
                if cfg.train.checkpoint_every and completed % cfg.train.checkpoint_every == 0:
                    save_checkpoint(accelerator, run_dir, completed, {"metrics": last}, cfg.train.keep_checkpoints)
                if on_update_end is not None:
                    on_update_end(completed, last)
    except KeyboardInterrupt:
        if completed > start:
            path = save_checkpoint(accelerator, run_dir, completed, {"metrics": last, "interrupted": True},
                                   max(cfg.train.keep_checkpoints, 1))
            print(f"\ninterrupted: saved {path}; continue with --resume")
        logger.close()
        release_accelerator()
        raise
    logger.close()
    torch.save(unwrapped.state_dict(), run_dir / "model.pt")
    summary = {"kind": "lot-sizing", "method": objective.describe(), "task": "lot-sizing", "updates": cfg.updates,
               "episodes": cfg.updates * cfg.episodes_per_update, "optimum": optimum,
               "final": {k: v for k, v in last.items() if k.startswith("eval/")},
               "wall_seconds": round(time.perf_counter() - started, 1)}
    (run_dir / "rl_summary.json").write_text(json.dumps(summary, indent=1))
    release_accelerator()
    return run_dir
