"""Training: the offline loop (loop.py), its batch plan, schedules, checkpoints and metrics; the online loop.

Importing the package registers the built-in models that take a training run to make
(builtin_models.py: `builtin:arithmetic-sft`), so any training entry point can load them by name.
"""
from preftune.train import builtin_models  # noqa: F401  (registers builtin:arithmetic-sft)
