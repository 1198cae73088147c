"""Plots a person would rather look at than read: training curves and before/after comparisons."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    """Write a figure as PNG (creating the folder) and free it. The saved area grows to take in long tick
    labels and titles, which tight_layout alone leaves cut off when they are wider than the figure."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


TRAINING_PANELS = [
    ("loss", ["loss"]),
    ("implicit-reward accuracy", ["accuracy"]),
    ("reward margin", ["margin"]),
    ("log-likelihood (chosen vs rejected)", ["logps/chosen", "logps/rejected"]),
]


def plot_training(metrics: list[dict], path: Path) -> Path:
    """Loss, accuracy, margin and chosen/rejected log-likelihood against step, from a run's metrics.jsonl
    rows (train.metrics.read_metrics)."""
    rows = [r for r in metrics if "loss" in r]
    panels = [(title, keys) for title, keys in TRAINING_PANELS if any(k in rows[0] for k in keys)] if rows else []
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4 * max(1, len(panels)), 3.2), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot(*zip(*points), label=key.split("/")[-1])
        ax.set_title(title)
        ax.set_xlabel("step")
        if len(keys) > 1:
            ax.legend()
    return save_figure(fig, path)


def plot_comparison(before: dict, after: dict, path: Path, names=("before", "after")) -> Path:
    """Side-by-side bars of the gold metrics, win-rate and KL of two evaluations."""
    keys = [k for k in ("gold_reward", "gold_reward_greedy", "win_rate", "kl") if k in before and k in after]
    labels = {"gold_reward": "gold reward\n(sampled)", "gold_reward_greedy": "gold reward\n(greedy)",
              "win_rate": "win-rate\nvs baseline", "kl": "KL to\nreference"}
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], [before[k] for k in keys], width=0.4, label=names[0])
    ax.bar([x + 0.2 for x in xs], [after[k] for k in keys], width=0.4, label=names[1])
    for x, k in zip(xs, keys):
        ax.text(x - 0.2, before[k], f"{before[k]:.2f}", ha="center", va="bottom", fontsize=8)
        ax.text(x + 0.2, after[k], f"{after[k]:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), [labels[k] for k in keys])
    ax.legend()
    return save_figure(fig, path)
