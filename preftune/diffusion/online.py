"""Online data for the diffusion trainer: rollouts of the current (or lagging) model, scored by the reward.

- PairRollouts (trajectory-pairs, D3PO): two trajectories per condition from one shared x_T, labelled by
  Pareto dominance of their rewards; every stochastic step of the pair is trained on, the steps in a
  random order per pair, gradients accumulated over them into one optimizer step (diffusion.md §2).
- GroupRollouts (trajectories: DDPO, Flow-GRPO; sample-groups: AWM): G samples per condition, rewards
  normalised per condition into advantages; step methods train on stored transitions with their
  sampling log-probs as pi_old, AWM on the final samples only (§8).
- ReplayBuffer (expert-online, Diffusion-DRO): a lagging copy of the policy, synced every N steps, adds
  a rollout of states (with its own predictions) each step to a FIFO buffer; the trainer pairs a random
  stored state with an expert sample (§3).

Every draw comes from a generator seeded by (seed, step, process, purpose), and the state a source
carries across steps (a rollout in use, the buffer, the lagging weights, counters) is checkpointed, so a
resumed run continues exactly.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor

from preftune.diffusion.batches import Batch, generator
from preftune.diffusion.methods.common import group_advantages
from preftune.diffusion.methods.d3po import pareto_preference
from preftune.diffusion.offline import condition_key, stack_conditions
from preftune.diffusion.sampling import sample


def sampler_settings(schedule, rollout, deterministic: bool = False) -> tuple[str, float]:
    """(sampler, noise) from the rollout config: auto = DDIM (eta 1) for DDPM models, the flow SDE (0.7)
    for flow models; AWM's auto is deterministic (DDIM eta 0 / flow ODE)."""
    sampler = rollout.sampler
    if sampler == "auto":
        sampler = "ddim" if schedule.kind == "ddpm" else ("ode" if deterministic else "sde")
    noise = rollout.noise
    if noise < 0:
        noise = 0.0 if deterministic and sampler == "ddim" else (1.0 if sampler == "ddim" else 0.7)
    return sampler, noise


class OnlineSource:
    stateful = True

    def __init__(self, kind: str, model, reward, cfg, process_index: int = 0, prompts: list | None = None):
        self.kind, self.model, self.reward, self.cfg = kind, model, reward, cfg
        self.rollout_cfg, self.process_index, self.prompts = cfg.rollout, process_index, prompts
        self.seed = cfg.train.seed
        self.reward_evaluations = 0
        self.current: dict | None = None     # the rollout in use (several updates per rollout)
        self.reward_mean = float("nan")

    def g(self, step: int, purpose: str) -> torch.Generator:
        return generator(self.seed, step, self.process_index, purpose)

    def conditions(self, n: int, g: torch.Generator):
        """Raw conditions of one rollout: captions drawn from the prompts, or the toy's own conditions."""
        if self.prompts:
            return [self.prompts[int(i)] for i in torch.randint(len(self.prompts), (n,), generator=g)]
        return self.model.task.sample_conditions(n, g) if self.model.task is not None else None

    def score(self, x0: Tensor, conditions) -> Tensor:
        self.reward_evaluations += len(x0)
        rewards = self.reward(self.model.decode(x0), conditions)
        self.reward_mean = float(rewards.float().mean())
        return rewards

    def roll(self, network, n: int, conditions, g, keep: str, x_T: Tensor | None = None, deterministic=False):
        sampler, noise = sampler_settings(self.model.schedule, self.rollout_cfg, deterministic)
        cond = self.model.condition(conditions) if conditions is not None else None
        uncond = self.model.null_condition(n) if self.rollout_cfg.guidance != 1.0 else None
        was_training = network.training
        network.eval()
        out = sample(self.model.call(network), self.model.schedule, (n, *self.model.sample_shape), cond,
                     steps=self.rollout_cfg.steps, sampler=sampler, noise=noise, generator=g, x_T=x_T, keep=keep,
                     guidance=self.rollout_cfg.guidance, uncond=uncond)
        network.train(was_training)
        return out, cond

    def state_dict(self) -> dict:
        return {"reward_evaluations": self.reward_evaluations, "current": self.current, "reward_mean": self.reward_mean}

    def load_state_dict(self, state: dict) -> None:
        self.reward_evaluations, self.current = state["reward_evaluations"], state["current"]
        self.reward_mean = state["reward_mean"]

    def _step_order(self, steps: int, n: int, g) -> Tensor:
        """(n, S') per-example random order of the stochastic steps, truncated to timestep_fraction."""
        keep = max(1, round(self.rollout_cfg.timestep_fraction * steps))
        return torch.stack([torch.randperm(steps, generator=g)[:keep] for _ in range(n)])


def _take(values: Tensor, order: Tensor) -> Tensor:
    """values (N, S, ...) at per-row step indices order (N,) -> (N, ...)."""
    return values[torch.arange(len(order)), order]


class PairRollouts(OnlineSource):
    def micro_batches(self, step: int, device, network) -> list[Batch]:
        p = self.rollout_cfg.prompts
        g = self.g(step, "rollout")
        conditions = self.conditions(p, g)
        x_T = torch.randn((p, *self.model.sample_shape), generator=g).repeat_interleave(2, dim=0)
        both = None if conditions is None else (conditions if isinstance(conditions, Tensor) else
                                                 [c for c in conditions for _ in range(2)])
        if isinstance(both, Tensor):
            both = both.repeat_interleave(2, dim=0)
        trajectory, _ = self.roll(network, 2 * p, both, g, keep="steps", x_T=x_T.to(device))
        rewards = self.score(trajectory.x0, both)
        preference = pareto_preference(rewards.reshape(p, 2, *rewards.shape[1:]))
        steps = {k: v.reshape(p, 2, *v.shape[1:]) for k, v in trajectory.step_tensors().items()}
        cond = self.model.condition(conditions, device) if conditions is not None else None
        order = self._step_order(steps["t"].shape[2], p, self.g(step, "order"))
        batches = []
        for j in range(order.shape[1]):
            at = order[:, j]
            pick = {k: v[torch.arange(p), :, at] for k, v in steps.items() if k != "logp"}
            batches.append(Batch(self.kind, cond=cond, steps=pick, extras={"preference": preference.to(device)}))
        return batches


class GroupRollouts(OnlineSource):
    """G samples per condition; advantages per condition. Trajectories keep their steps (DDPO, Flow-GRPO);
    groups keep only the final samples (AWM)."""

    def rollout(self, step: int, device, network) -> dict:
        p, group = self.rollout_cfg.prompts, self.rollout_cfg.group_size
        g = self.g(step, "rollout")
        conditions = self.conditions(p, g)
        flat = None
        if conditions is not None:
            flat = (conditions.repeat_interleave(group, dim=0) if isinstance(conditions, Tensor)
                    else [c for c in conditions for _ in range(group)])
        keep = "steps" if self.kind == "trajectories" else None
        trajectory, _ = self.roll(network, p * group, flat, g, keep=keep, deterministic=self.kind == "sample-groups")
        rewards = self.score(trajectory.x0, flat)
        advantages = group_advantages(rewards.float(), torch.arange(p).repeat_interleave(group),
                                      clip=self.rollout_cfg.advantage_clip, global_std=self.rollout_cfg.global_std)
        if self.kind == "sample-groups":   # AWM: advantage_max = 1, A in [-1, 1]
            advantages = advantages / self.rollout_cfg.advantage_clip
        out = {"x0": trajectory.x0, "advantages": advantages, "conditions": flat,
               "order": torch.randperm(p * group, generator=self.g(step, "minibatches"))}
        if keep:
            out["steps"] = trajectory.step_tensors()
        return out

    def micro_batches(self, step: int, device, network) -> list[Batch]:
        updates = self.rollout_cfg.updates_per_rollout
        if step % updates == 0 or self.current is None:
            self.current = self.rollout(step, device, network)
        rollout = self.current
        n = len(rollout["x0"])
        part = rollout["order"][(step % updates) * n // updates:((step % updates) + 1) * n // updates]
        conditions = rollout["conditions"]
        picked = None if conditions is None else (conditions[part] if isinstance(conditions, Tensor)
                                                  else [conditions[i] for i in part.tolist()])
        cond = self.model.condition(picked, device) if picked is not None else None
        advantages = rollout["advantages"][part].to(device)
        if self.kind == "sample-groups":
            return [Batch(self.kind, cond=cond, x0=rollout["x0"][part][:, None].to(device),
                          extras={"advantages": advantages})]
        steps = {k: v[part] for k, v in rollout["steps"].items()}
        order = self._step_order(steps["t"].shape[1], len(part), self.g(step, "order"))
        batches = []
        for j in range(order.shape[1]):
            at = order[:, j]
            pick = {k: _take(v, at)[:, None].to(device) for k, v in steps.items() if k != "logp"}
            batches.append(Batch(self.kind, cond=cond, steps=pick,
                                 extras={"advantages": advantages, "old_logp": _take(steps["logp"], at).to(device)}))
        return batches


class ReplayBuffer(OnlineSource):
    """Diffusion-DRO's lagging sampler and FIFO buffer of its states, paired with expert samples."""

    def __init__(self, kind, model, reward, cfg, process_index=0, prompts=None, experts=None, network=None):
        super().__init__(kind, model, reward, cfg, process_index, prompts)
        if not experts:
            raise ValueError("diffusion_dro needs expert samples (data.source: unpaired expert images or toy)")
        self.experts = experts
        self.lagging = copy.deepcopy(network).requires_grad_(False)
        self.buffer: list[dict] = []
        by_condition = {}
        for i, ex in enumerate(experts):
            by_condition.setdefault(condition_key(ex.condition), []).append(i)
        self.by_condition = by_condition

    def micro_batches(self, step: int, device, network) -> list[Batch]:
        cfg = self.rollout_cfg
        if step % cfg.sync_every == 0:
            self.lagging.load_state_dict(_unwrap(network).state_dict())
        g = self.g(step, "rollout")
        conditions = self.conditions(cfg.prompts, g)
        trajectory, _ = self.roll(self.lagging, cfg.prompts, conditions, g, keep="states")
        self.buffer.append({"x": torch.stack(trajectory.states, 1).cpu(), "t": torch.stack(trajectory.times, 1).cpu(),
                            "target": torch.stack(trajectory.predictions, 1).cpu(), "conditions": conditions})
        self.buffer = self.buffer[-cfg.buffer_size:]
        b = self.cfg.train.batch_size
        pick = self.g(step, "draw")
        entries = torch.randint(len(self.buffer), (b,), generator=pick)
        rows = torch.randint(cfg.prompts, (b,), generator=pick)
        at = torch.randint(self.buffer[0]["t"].shape[1], (b,), generator=pick)
        states = {name: torch.stack([self.buffer[e][name][r, s] for e, r, s in zip(entries.tolist(), rows.tolist(), at.tolist())]).to(device)
                  for name in ("x", "t", "target")}
        raw = [None if self.buffer[e]["conditions"] is None else self.buffer[e]["conditions"][r]
               for e, r in zip(entries.tolist(), rows.tolist())]
        experts = []
        for c in raw:
            pool = self.by_condition.get(condition_key(c)) or range(len(self.experts))
            experts.append(self.experts[list(pool)[int(torch.randint(len(pool), (1,), generator=pick))]])
        x0 = torch.stack([ex.samples[0].load(self.model.pixel_shape) for ex in experts]).to(device)
        x0 = self.model.encode_images(x0)[:, None]
        raw_conditions = stack_conditions(experts)
        cond = self.model.condition(raw_conditions, device) if raw_conditions is not None else None
        return [Batch(self.kind, cond=cond, x0=x0, states={"x_t": states["x"], "t": states["t"], "target": states["target"]})]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "buffer": self.buffer, "lagging": self.lagging.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.buffer = state["buffer"]
        self.lagging.load_state_dict(state["lagging"])


def _unwrap(network):
    return network.module if hasattr(network, "module") else network


SOURCES = {"trajectory-pairs": PairRollouts, "trajectories": GroupRollouts, "sample-groups": GroupRollouts,
           "expert-online": ReplayBuffer}
