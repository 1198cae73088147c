"""The state of an online run, shared by its stages (collect, update, evaluate), and its checkpoints.

A checkpoint RUN_DIR/checkpoints/iter-NNN holds everything needed to continue after iteration NNN:
the trainable weights, every snapshot, the optimizer, the fast/slow roles, the initial policy's
evaluation, the summary so far and the RNG state; it is written atomically.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import torch

from preftune.methods import Objective
from preftune.train.online_config import OnlineConfig
from preftune.train.online_hooks import FastSlowAdapters, PolicySnapshots
from preftune.train.online_schedule import Schedule


class OnlineLoop:
    """The state of a run: the game (tasks, judges, objective, schedule), the player (model, snapshots,
    optimizer) and the prompts. The stages are functions of it (online_collect, online_update, online_eval)."""

    def __init__(self, cfg: OnlineConfig, tasks: list, judges: list, objective: Objective, schedule: Schedule, model,
                 tokenizer, snapshots: PolicySnapshots, optimizer, fast_slow: FastSlowAdapters | None, accelerator,
                 on_step_end=None):
        self.cfg, self.tasks, self.judges, self.objective, self.schedule = cfg, tasks, judges, objective, schedule
        self.task, self.judge = tasks[0], judges[0]
        if cfg.schedule.fast_slow.cofs and not (fast_slow and len(tasks) > 1):
            raise ValueError("schedule.fast_slow.cofs combines the fast adapters of successive domains: it needs "
                             "the fast/slow schedule and at least two `domains`")
        self.model, self.tokenizer, self.snapshots, self.optimizer = model, tokenizer, snapshots, optimizer
        self.fast_slow, self.accelerator, self.on_step_end = fast_slow, accelerator, on_step_end
        self.device = accelerator.device
        self.train_prompts = self.task.prompts("train")
        random.Random(cfg.train.seed).shuffle(self.train_prompts)
        self.eval_prompts = self.task.prompts(cfg.eval.split, cfg.eval.prompts)
        self.initial_eval: dict = {}
        self.judge_round: dict = {}  # the judge's counters in the current iteration (online_judge.py)

    def domain_of(self, t: int) -> int:
        """The domain of iteration t: the iterations are split into equal consecutive blocks."""
        return t * len(self.tasks) // self.cfg.iterations

    def last_iteration_of(self, domain: int) -> int:
        return max(t for t in range(self.cfg.iterations) if self.domain_of(t) == domain)

    def save_state(self, completed: int, summary: dict) -> None:
        """The state after `completed` iterations, written atomically (a .tmp directory renamed when whole)."""
        root = self.cfg.run_dir / "checkpoints"
        final = root / f"iter-{completed:03d}"
        partial = final.with_name(final.name + ".tmp")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        torch.save({"completed": completed, "weights": {k: p.detach().cpu() for k, p in self.snapshots.parameters.items()},
                    "snapshots": self.snapshots.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "fast_slow": (self.fast_slow.fast, self.fast_slow.slow) if self.fast_slow else None,
                    "initial_eval": self.initial_eval, "summary": summary, "rng": torch.get_rng_state()},
                   partial / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.endswith(".tmp"))[:-2]:
            shutil.rmtree(old)

    def load_state(self, path: Path, summary: dict) -> int:
        state = torch.load(path / "state.pt", weights_only=False)
        with torch.no_grad():
            for key, p in self.snapshots.parameters.items():
                p.copy_(state["weights"][key])
        self.snapshots.load_state_dict(state["snapshots"])
        if self.fast_slow and state["fast_slow"] and state["fast_slow"][0] != self.fast_slow.fast:
            self.fast_slow.swap(self.optimizer)
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.initial_eval = state["initial_eval"]
        summary.update(state["summary"])
        torch.set_rng_state(state["rng"])
        return state["completed"]


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = run_dir / "checkpoints"
    found = sorted(p for p in root.iterdir() if p.is_dir() and (p / "state.pt").exists()
                   and not p.name.endswith(".tmp")) if root.exists() else []
    return found[-1] if found else None
