"""Learning-rate schedules: linear warmup, then linear decay, cosine decay, or constant."""
from __future__ import annotations

import math


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Factor applied to the base learning rate at optimizer step `step` (0-based)."""
    if schedule not in ("linear", "cosine", "constant"):
        raise ValueError(f"schedule must be linear, cosine or constant, got {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
