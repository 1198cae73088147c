"""Built-in tasks with gold rewards: text tasks whose quality is computable, so gains are measurable."""
from __future__ import annotations

from preftune.tasks.base import Task, get_task, register_task, task_names
from preftune.tasks import arithmetic  # noqa: F401  (registers the task)
from preftune.tasks import intransitive  # noqa: F401  (registers the task)
from preftune.tasks import label_quality, length_bias, multistep, safety, two_objective  # noqa: F401

__all__ = ["Task", "get_task", "register_task", "task_names"]
