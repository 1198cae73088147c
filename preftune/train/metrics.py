"""Per-step metrics: averaged over micro-batches and processes, written to metrics.jsonl and the trackers."""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

from preftune.records import Logps, MethodOutput, response_names

__all__ = ["MetricsLogger", "StepMetrics", "read_metrics", "response_names", "truncate_metrics"]


class StepMetrics:
    """Accumulates example-weighted means of everything a step logs."""

    def __init__(self, kind: str):
        self.kind = kind
        self.sums: dict[str, float] = defaultdict(float)
        self.examples = 0

    def add(self, out: MethodOutput, policy: Logps, count: bool = True) -> None:
        """Add a micro-batch; with count=False only its metric names are registered (weight 0)."""
        b = out.loss.shape[0] if count else 0
        self.examples += b
        values = {"loss": out.loss.detach()}
        # A record says what it logs per response (the diffusion records: errors, step log-probs).
        per_response = (policy.loggable() if hasattr(policy, "loggable")
                        else {"logps": policy.sum.detach(), "length": policy.length})
        names = response_names(self.kind, next(iter(per_response.values())).shape[1])
        for i, name in enumerate(names):
            if i < out.rewards.shape[1]:
                values[f"rewards/{name}"] = out.rewards[:, i]
            for key, tensor in per_response.items():
                values[f"{key}/{name}"] = tensor[:, i]
        for key, value in out.metrics.items():
            values[key] = value
        for key, value in values.items():
            value = value.float()
            self.sums[key] += (float(value.sum()) if value.dim() else float(value) * b) if b else 0.0

    def reduce(self, accelerator) -> dict[str, float]:
        keys = sorted(self.sums)
        local = torch.tensor([self.sums[k] for k in keys] + [float(self.examples)],
                             dtype=torch.float64, device=accelerator.device)
        total = accelerator.reduce(local, reduction="sum") if accelerator.num_processes > 1 else local
        count = float(total[-1])
        return {k: float(total[i]) / count for i, k in enumerate(keys)}


class MetricsLogger:
    """metrics.jsonl (one JSON object per logged step, on the main process) and, through
    `accelerator.log`, every tracker of `train.report_to` (train/trackers.py), under the same names."""

    def __init__(self, run_dir: Path, enabled: bool, accelerator=None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.accelerator = accelerator

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.log(metrics, step=step)  # on the main process only
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")

    def close(self) -> None:
        if self.accelerator is not None:
            from preftune.train.trackers import stop_trackers

            stop_trackers(self.accelerator)


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [row for row, _ in parse_metrics(path)[0]] if path.exists() else []


def parse_metrics(path: Path) -> tuple[list[tuple[dict, str]], str | None]:
    """(row, line) for every logged line of a metrics.jsonl, and its torn last line if it has one (a process
    killed while writing it); a bad line anywhere else is an error naming it."""
    lines = path.read_text().splitlines()
    last = max((n for n, line in enumerate(lines, 1) if line.strip()), default=0)
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append((json.loads(line), line))
        except json.JSONDecodeError as error:
            if number == last:
                return rows, line
            raise ValueError(f"{path}:{number}: not a JSON object ({error.msg}); the file is damaged") from None
    return rows, None


def truncate_metrics(run_dir: Path, after_step: int) -> None:
    """Drop lines logged after `after_step` (a resumed run re-logs the steps it redoes), and a torn last line."""
    path = Path(run_dir) / "metrics.jsonl"
    if path.exists():
        rows, torn = parse_metrics(path)
        if torn is not None:
            print(f"{path}: dropped its torn last line (the run stopped while writing it): {torn[:60]!r}",
                  file=sys.stderr)
        path.write_text("".join(line + "\n" for row, line in rows if row["step"] <= after_step))
