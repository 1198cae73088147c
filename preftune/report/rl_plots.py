"""The curves of a `preftune rl` run for `preftune report`: reward, KL, per-aspect rewards, value loss and
accuracy against iteration (or, on lot-sizing, expected return against the DP optimum per update)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402

from preftune.report.plots import save_figure  # noqa: E402
from preftune.train.metrics import read_metrics  # noqa: E402

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


def plot_rl(run_dir: Path, path: Path) -> Path | None:
    """One panel per quantity the run logged; returns None when metrics.jsonl holds nothing to draw."""
    rows = read_metrics(run_dir)
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


def rl_section(page, run_dir: Path, plots: Path) -> None:
    """The report's section for an RL run: its summary, curves and per-iteration table."""
    summary = json.loads((run_dir / "rl_summary.json").read_text())
    page.heading(f"RL: {summary.get('method')} on {summary.get('task')}")
    if summary.get("kind") == "lot-sizing":
        page.mapping({"episodes": summary["episodes"], "DP optimum": summary["optimum"], **summary.get("final", {}),
                      "seconds": summary.get("wall_seconds")}, "run")
    else:
        page.mapping({"algorithm": summary.get("algorithm"), "iterations": len(summary["iterations"]) - 1,
                      "seconds": summary.get("wall_seconds")}, "run")
    page.image(plot_rl(run_dir, plots / f"{run_dir.name}_rl.png"), "reward, accuracy, KL, per-aspect rewards and "
               "value loss per iteration (iteration 0: the starting policy)")
    rows = summary.get("iterations", [])
    columns = [k for k in dict.fromkeys(k for r in rows for k in r)
               if k.startswith("eval/") and all(isinstance(r.get(k, 0.0), (int, float)) for r in rows)]
    if rows and columns:
        page.table(["iteration", *(c[5:] for c in columns)], [[r["iteration"], *(r.get(c) for c in columns)]
                                                               for r in rows], "held-out evaluation per iteration")
