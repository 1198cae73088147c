"""Training: the offline loop (loop.py), its batch plan, schedules, checkpoints and metrics."""
