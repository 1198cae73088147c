"""Plots of `preftune claims`: every judged effect with its 95% interval, and the verdicts per family.

Effects of different units share one axis by dividing by each part's smallest effect of interest
δ: a superiority part holds when its interval lies right of 0 and fails when it lies left of 1 (δ);
a non-inferiority part holds when its interval lies right of −1.
"""
from __future__ import annotations

from pathlib import Path

from preftune.report.plots import plt, save_figure

COLOURS = {"holds": "#2a7d2a", "fails": "#b22222", "open": "#777777", "reported": "#4a6fa5"}
VERDICT_COLOURS = {"reproduced": "#2a7d2a", "not reproduced": "#b22222", "inconclusive": "#999999"}


def measured_parts(report: dict) -> list[tuple[str, dict]]:
    """(row, part) for every part with an interval, in table order."""
    return [(row["row"], part) for row in report["rows"] for part in row.get("parts", [])
            if part.get("interval") is not None]


def plot_effects(report: dict, path: Path) -> Path | None:
    """A forest plot: each measured part's mean and 95% interval in units of its δ (reported parts, which
    have no δ of their own, in their raw unit, marked as such)."""
    parts = measured_parts(report)
    if not parts:
        return None
    fig, ax = plt.subplots(figsize=(8.5, 0.32 * len(parts) + 1.4))
    labels = []
    for y, (row, part) in enumerate(reversed(parts)):
        interval, margin = part["interval"], part["margin"] or 1.0
        scale = 1.0 if part["kind"] == "reported" else margin
        low, mean, high = (interval[k] / scale for k in ("low", "mean", "high"))
        colour = COLOURS.get(part["judgement"], "#777777")
        ax.plot([low, high], [y, y], color=colour, linewidth=2)
        ax.plot([mean], [y], marker="o", color=colour, markersize=5)
        labels.append(f"{row}: {part['label']}" + (" [raw]" if part["kind"] == "reported" else ""))
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.axvline(-1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_yticks(range(len(parts)), [label[:70] for label in labels], fontsize=7)
    ax.set_xlabel("effect / δ (95% interval over seeds); dashed: δ, dotted: −δ", fontsize=8)
    ax.set_title("Claims: every measured part (green holds, red fails, grey open, blue reported)", fontsize=9)
    return save_figure(fig, path)


def plot_verdicts(report: dict, path: Path) -> Path | None:
    """Stacked bars: reproduced / not reproduced / inconclusive rows per family."""
    families = list(dict.fromkeys(row["family"] for row in report["rows"]))
    if not families:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.0))
    bottoms = [0] * len(families)
    for verdict, colour in VERDICT_COLOURS.items():
        counts = [sum(r["verdict"] == verdict for r in report["rows"] if r["family"] == f) for f in families]
        ax.bar(families, counts, bottom=bottoms, color=colour, label=verdict)
        bottoms = [b + c for b, c in zip(bottoms, counts)]
    ax.set_ylabel("catalogue rows")
    ax.legend(fontsize=8)
    ax.set_title("Verdicts per family", fontsize=9)
    return save_figure(fig, path)


def plot_claims(report: dict, folder: Path) -> list[Path]:
    return [p for p in (plot_effects(report, folder / "claims_effects.png"),
                        plot_verdicts(report, folder / "claims_verdicts.png")) if p is not None]
