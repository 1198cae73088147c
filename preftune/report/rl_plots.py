"""The curves of a `preftune rl` run for `preftune report`: reward, KL, per-aspect rewards, value loss and
accuracy against iteration (or, on lot-sizing, expected return against the DP optimum per update)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402

from preftune.report.plots import save_figure  # noqa: E402

LM_PANELS = [
    ("reward", ["rollout/gold", "eval/gold_reward"], "rollout/predicted_"),
    ("accuracy (gold, held out)", ["eval/gold_reward_greedy", "eval/search_gold_reward", "train/accuracy"], None),
    ("KL to the reference", ["eval/kl", "train/kl"], None),
    ("per-aspect reward", [], "eval/aspect/"),
    ("value loss", ["train/value_loss", "critic/mse"], None),
]
LOT_SIZING_PANELS = [
    ("expected return (exact)", ["eval/expected_return", "eval/greedy_return", "eval/optimum", "episode_return"], None),
    ("value loss", ["value_loss"], None),
    ("entropy", ["entropy"], None),
]


def plot_rl(rows: list[dict], path: Path) -> Path | None:
    """One panel per quantity an RL run logged (its metrics.jsonl rows); None when there is nothing to draw."""
    lot_sizing = any("eval/expected_return" in r for r in rows)
    panels = []
    for title, keys, prefix in LOT_SIZING_PANELS if lot_sizing else LM_PANELS:
        found = [k for k in keys if any(k in r for r in rows)]
        if prefix:
            found += sorted({k for r in rows for k in r if k.startswith(prefix)})
        if found:
            panels.append((title, found))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.3), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, markersize=3, label=key)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("update" if lot_sizing else "iteration")
        ax.legend(fontsize=6)
    return save_figure(fig, path)
