"""Atomic checkpoints: model, optimizer, scheduler, RNG states (via accelerate) and the step.

A checkpoint is written to `step-N.tmp` and renamed to `step-N` only when complete, so an
interruption while saving never leaves a checkpoint that looks whole but is not.
"""
from __future__ import annotations

import json
import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

STATE_FILE = "trainer_state.json"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(accelerator, run_dir: Path, step: int, state: dict, keep: int) -> Path:
    final = checkpoint_dir(run_dir) / f"step-{step:07d}"
    partial = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def save_interrupted(accelerator, run_dir: Path, completed: int, start_step: int, metrics: dict, keep: int,
                     in_step: bool = False) -> None:
    """Nothing is lost on Ctrl-C or SIGTERM: the last completed step is saved, and --resume continues it.
    A stop within a step (a second Ctrl-C) may leave that step half-applied, so nothing is saved then."""
    if in_step:
        if accelerator.is_main_process:
            print(f"\nstopped within step {completed + 1}: not saved; --resume continues from the last checkpoint")
        return
    if completed > start_step:
        path = save_checkpoint(accelerator, run_dir, completed, {"metrics": metrics, "interrupted": True}, max(keep, 1))
        if accelerator.is_main_process:
            print(f"\ninterrupted: saved {path}; continue with --resume")


def start_step(accelerator, run_dir: Path, resume: str | bool | None) -> int:
    """Where a run starts: 0, or the step of the checkpoint `resume` names, with its state loaded. The
    metrics logged after that step are dropped (a resumed run logs them again); a fresh run starts a
    fresh metrics file."""
    from preftune.train.metrics import truncate_metrics

    main = accelerator.is_main_process
    checkpoint = resolve_resume(run_dir, resume)
    if checkpoint is None:
        if main and (Path(run_dir) / "metrics.jsonl").exists():
            (Path(run_dir) / "metrics.jsonl").unlink()
        return 0
    step = load_checkpoint(accelerator, checkpoint)["step"]
    if main:
        truncate_metrics(run_dir, step)
    return step


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = checkpoint_dir(run_dir)
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.endswith(".tmp")
                  and (p / STATE_FILE).exists())


def resolve_resume(run_dir: Path, resume: str | bool | None) -> Path | None:
    """`resume=True` picks the latest complete checkpoint of the run; a path picks that one."""
    if not resume:
        return None
    if resume is True or resume == "latest":
        found = list_checkpoints(run_dir)
        if not found:
            raise FileNotFoundError(f"--resume: no complete checkpoint under {checkpoint_dir(run_dir)}")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"--resume: {path} is not a complete checkpoint (no {STATE_FILE})")
    return path


def load_checkpoint(accelerator, path: Path) -> dict:
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text())


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT (Ctrl-C) or SIGTERM; the command exits with the conventional 128 + signal
    number (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(f"{signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + signum


@contextmanager
def sigterm_as_interrupt():
    """Treat SIGTERM (a scheduler's preemption, `kill`) like Ctrl-C: raise `Interrupted` at once, for work
    whose state is saved in whole units anyway (online iterations, bench cells). Only the main thread can
    set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StopRequests:
    """SIGINT (Ctrl-C) and SIGTERM while the training loop runs: the optimizer step in progress is finished,
    and `check`, called after every step, raises `Interrupted` so that the loop saves that step and stops.
    Stopping only between steps is what makes a resumed run exact (a stop between the micro-batches of a
    step would save accelerate's accumulation counter mid-cycle, or weights half-way through an update), and
    under torchrun every process stops after the same step (`check` asks them all), so they save together.
    A second Ctrl-C stops at once, without saving the step in progress. Only the main thread can set
    handlers; elsewhere this does nothing."""

    def __init__(self, announce: bool = True):
        self.announce = announce
        self.signum = 0
        self.previous: dict = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.request) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def request(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now
        if not self.signum and self.announce:
            print(f"\n{signal.Signals(signum).name}: stopping after the step in progress, which is saved"
                  + (" (Ctrl-C again stops at once without saving it)" if signum == signal.SIGINT else ""),
                  file=sys.stderr, flush=True)
        self.signum = self.signum or signum

    def check(self, accelerator) -> None:
        """Between steps: raise Interrupted if this process, or any other, has been asked to stop."""
        signum = self.signum
        if accelerator.num_processes > 1:
            import torch

            signum = int(accelerator.gather(torch.tensor([signum], device=accelerator.device)).max())
        if signum:
            raise Interrupted(signum)
