"""A recipe's run: decide what it trains on, then train. What `preftune train` / `preftune sft` call.

The loop (loop.py) trains on prepared data and nothing else; this runner decides the data:

- a `curriculum:` section: a sequence of runs over pairs cut from ranked lists (curriculum.py),
  each stage an ordinary `train` on its own pairs;
- rows given in memory (`data_source`), or data.source: a file, a data set, `hf:owner/name`, or
  `task:<name>`, whose rows the task makes from the initial model (sources.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from preftune.config import RunConfig
from preftune.train.curriculum import train_curriculum
from preftune.train.loop import train
from preftune.train.sources import run_data


def run_training(cfg: RunConfig, resume: str | bool | None = None, data_source=None,
                 on_step_end: Callable[[int, dict], None] | None = None) -> Path:
    """Run the recipe `cfg`; returns the run directory.

    resume: True (latest checkpoint) or a checkpoint path. data_source: rows (a list of dicts, or a
    path) instead of cfg.data.source; ranked rows for a curriculum. on_step_end(step, metrics): called
    after every optimizer step (see `train`).
    """
    if cfg.curriculum.pairs:  # a sequence of runs over pairs cut from ranked lists (offline.md §4)
        return train_curriculum(cfg, resume=resume, data_source=data_source, on_step_end=on_step_end)
    return train(cfg, run_data(cfg, data_source), resume=resume, on_step_end=on_step_end)
