"""The curve of an online run: duality gap and win-rate against the initial policy, per iteration."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [
    ("duality gap (0 at the Nash equilibrium)", ["duality_gap", "duality_gap_regularised"]),
    ("win-rate vs the initial policy", ["win_rate_vs_initial", "sampled_win_rate_vs_initial"]),
    ("answer-style distribution", ["style_probs"]),
]


def plot_online_curve(summary: dict, path: Path) -> Path:
    """One panel per quantity the iterations recorded (online_summary.json), iteration 0 = the initial policy."""
    rows = summary["iterations"]
    panels = [(title, [k for k in keys if any(k in r for r in rows)]) for title, keys in PANELS]
    panels = [(title, keys) for title, keys in panels if keys]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.3), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            points = [(r["iteration"], r[key]) for r in rows if key in r]
            if key == "style_probs":
                for k in range(len(points[0][1])):
                    ax.plot([x for x, _ in points], [v[k] for _, v in points], marker="o", label=f"style {k}")
            else:
                ax.plot(*zip(*points), marker="o", label=key.replace("_", " "))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        ax.legend(fontsize=7)
    fig.suptitle(f"{summary.get('method', '')} on {summary.get('task', '')}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
