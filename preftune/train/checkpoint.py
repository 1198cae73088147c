"""Atomic checkpoints: model, optimizer, scheduler, RNG states (via accelerate) and the step.

A checkpoint is written to `step-N.tmp` and renamed to `step-N` only when complete, so an
interruption while saving never leaves a checkpoint that looks whole but is not.
"""
from __future__ import annotations

import json
import shutil
import signal
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


def save_interrupted(accelerator, run_dir: Path, completed: int, start_step: int, metrics: dict, keep: int) -> None:
    """Nothing is lost on Ctrl-C or SIGTERM: the last completed step is saved, and --resume continues it."""
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


@contextmanager
def sigterm_as_interrupt():
    """Treat SIGTERM (a scheduler's preemption, `kill`) like Ctrl-C while training, so the
    loop saves the last completed step before stopping. Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
