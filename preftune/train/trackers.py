"""Experiment trackers through accelerate's own tracking (`train.report_to`), beside metrics.jsonl.

Every logged dict goes to metrics.jsonl and, through `accelerator.log`, to every tracker named in
`train.report_to` (TensorBoard by default; wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab,
trackio: whatever accelerate supports and is installed), so the metric names are the same
everywhere. TensorBoard writes to RUN_DIR/tensorboard; trackers that keep files of their own
write under RUN_DIR/trackers. A resumed run tells TensorBoard to drop what the interrupted run
logged after the checkpoint (`purge_step`), so replayed steps are not shown twice.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

DEFAULT = ("tensorboard",)


def tracker_setup(report_to, run_dir: Path) -> dict[str, Any]:
    """Accelerator keyword arguments (`log_with`, `project_config`) for the trackers in `report_to`.

    TensorBoard is a dependency, but a bare image may lack it: then it is left out with a warning.
    Any other tracker the user names must be installed; if it is not, the error says how to get it.
    """
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, TensorBoardTracker
    from accelerate.utils import ProjectConfiguration

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    names = [] if names in (["none"], ["None"]) else names
    unknown = sorted(set(names) - set(LOGGER_TYPE_TO_CLASS))
    if unknown:
        raise ValueError(f"train.report_to: unknown tracker {unknown}; accelerate supports "
                         f"{sorted(LOGGER_TYPE_TO_CLASS)} (or 'none')")
    log_with: list = []
    for name in names:
        if not _available(name):
            if name == "tensorboard":
                warnings.warn("tensorboard is not installed: metrics go to metrics.jsonl only")
                continue
            raise ValueError(f"train.report_to names {name!r}, which is not installed: pip install {name}")
        # TensorBoard logs to RUN_DIR/tensorboard whatever the project is called.
        log_with.append(TensorBoardTracker("tensorboard", str(run_dir)) if name == "tensorboard" else name)
    return {"log_with": log_with or None,
            "project_config": ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(Path(run_dir) / "trackers"))}


def _available(name: str) -> bool:
    from accelerate.utils import imports

    check = getattr(imports, f"is_{name}_available", None)
    return bool(check()) if check is not None else True


def start_trackers(accelerator, project: str, config: dict, resumed_at: int = 0) -> None:
    """Start the trackers (on the main process) with the run's recipe, flattened, as their configuration."""
    if not accelerator.log_with:
        return
    from accelerate.tracking import TensorBoardTracker

    for tracker in accelerator.log_with:
        if isinstance(tracker, TensorBoardTracker) and resumed_at:
            tracker.init_kwargs["purge_step"] = resumed_at + 1  # forget the steps this run logs again
    accelerator.init_trackers(project, config=flatten(config))


def stop_trackers(accelerator) -> None:
    """Finish every tracker; unlike `accelerator.end_training`, the process group stays."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-5}} -> {"train.lr": 1e-5}; lists and mappings as JSON text (trackers take scalars)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (bool, int, float, str)) or value is None:
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat
