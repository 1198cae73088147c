"""Plots of the measurement tools: training diagnostics, the separability probe, the KL sweep, the bench."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from preftune.report.plots import plt, save_figure


def diagnostic_panels(k: int) -> list[tuple[str, list[str], str]]:
    """Panels of the diagnostics figure: (title, metric keys, what to read in it)."""
    return [
        ("log-likelihood, held-out pairs", ["diag/logps/chosen", "diag/logps/rejected"],
         "3D-properties: rejected collapsing"),
        (f"top-{k} entropy (bits)", [f"diag/top{k}_entropy"], "rise then fall: over-optimisation"),
        (f"top-{k} probability mass", [f"diag/top{k}_mass"], "falls while entropy rises: leak"),
        ("KL to reference", ["diag/kl", "diag/token_kl"], "sequence (sampled), per token"),
        ("gold reward of samples", ["diag/gold_reward"], "built-in tasks"),
        ("implicit-reward accuracy", ["diag/reward_accuracy"], "held-out pairs"),
        ("mean sampled length", ["diag/length"], "tokens"),
    ]


def plot_diagnostics(metrics: list[dict], path: Path) -> Path | None:
    """The training diagnostics of a run (its metrics.jsonl rows) against step (None when it logged none)."""
    rows = [r for r in metrics if any(k.startswith("diag/") for k in r)]
    if not rows:
        return None
    keys = {k for r in rows for k in r}
    k = next((int(key[len("diag/top"):-len("_entropy")]) for key in keys
              if key.startswith("diag/top") and key.endswith("_entropy")), 10)
    panels = [(title, [key for key in wanted if key in keys], note)
              for title, wanted, note in diagnostic_panels(k) if any(key in keys for key in wanted)]
    columns = min(4, len(panels))
    lines = -(-len(panels) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4 * columns, 3.1 * lines), squeeze=False)
    for ax, (title, present, note) in zip(axes.flat, panels):
        for key in present:
            points = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot(*zip(*points), marker="o", markersize=3, label=key.split("/")[-1])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"step   ({note})", fontsize=8)
        if len(present) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    return save_figure(fig, path)


def plot_probe(results: dict, path: Path) -> Path:
    """Held-out probe accuracy and AUC per layer, with the 0.5 chance line."""
    layers = sorted(results)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(layers, [results[k].accuracy for k in layers], marker="o", label="accuracy")
    ax.plot(layers, [results[k].auc for k in layers], marker="s", label="AUC")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("layer (0: embeddings)")
    ax.set_title("chosen vs rejected: linear separability (held-out)", fontsize=10)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_sweep(report: dict, path: Path) -> Path:
    """Gold reward gain against d = sqrt(KL), coloured by the swept value, with the fitted curve and its peak."""
    from preftune.eval.sweep import overopt_curve

    fig, ax = plt.subplots(figsize=(6, 4))
    for value in report["values"]:
        points = sorted((p["d"], p["gain"]) for p in report["points"] if p["value"] == value)
        ax.plot(*zip(*points), marker="o", linestyle=":", label=f"{report['parameter']} = {value:g}")
    fit = report["fit"]
    d = np.linspace(0.0, max(p["d"] for p in report["points"]) * 1.1 + 1e-9, 200)
    ax.plot(d, overopt_curve(d, fit["alpha"], fit["beta"]), color="black",
            label=f"d(α − β log d): α={fit['alpha']:.3f}, β={fit['beta']:.3f}")
    if fit["d_star"] is not None and fit["d_star"] <= d[-1] * 2:
        ax.plot([fit["d_star"]], [fit["r_star"]], marker="*", markersize=14, color="crimson",
                label=f"peak d*={fit['d_star']:.2f}")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("d = sqrt(KL to the SFT model)")
    ax.set_ylabel("gold reward gain over SFT")
    ax.set_title(f"{report['loss']} on {report['task']}: over-optimisation", fontsize=10)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_bench(report: dict, folder: Path) -> list[Path]:
    """One heatmap per starting point: methods x tasks, each cell the mean gold reward over seeds
    (written in the cell), coloured by its difference from the starting model on that task, so a
    method that helps is green and one that hurts is red whatever the task's scale."""
    import numpy as np

    rows = {(r["task"], r["start"], r["method"]): r for r in report["rows"]}
    paths = []
    for start in report["starts"]:
        tasks, methods = report["tasks"], [f"({start} model)"] + report["methods"]

        def gold(task, method):
            stat = (rows.get((task, start, method)) or {}).get("metrics", {}).get("gold_reward") or {}
            return np.nan if stat.get("mean") is None else stat["mean"]

        means = np.array([[gold(task, method) for task in tasks] for method in methods])
        change = means - means[0]
        limit = max(0.05, float(np.nanmax(np.abs(change))) if np.isfinite(change).any() else 0.05)
        fig, ax = plt.subplots(figsize=(1.3 * len(tasks) + 2.5, 0.27 * len(methods) + 1.4))
        ax.imshow(change, cmap="RdYlGn", vmin=-limit, vmax=limit, aspect="auto")
        for i in range(len(methods)):
            for j in range(len(tasks)):
                text = "error" if np.isnan(means[i, j]) else f"{means[i, j]:.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(methods)), methods, fontsize=7)
        ax.set_title(f"gold reward, preference training {'after SFT' if start == 'sft' else 'from the base model'}"
                     f" (colour: change from the {start} model, ±{limit:.2f})", fontsize=9)
        paths.append(save_figure(fig, folder / f"bench_gold_{start}.png"))
    return paths
