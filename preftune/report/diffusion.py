"""Diffusion runs in pictures: sample grids (PNG) and reward curves, and their section of `preftune report`.

- `save_sample_grid`: images tiled into one PNG; 2-D toy samples as a scatter over the data's modes;
  toy videos as their frame-to-frame paths.
- `plot_reward_curves`: the evaluation metrics (reward, target fraction, on-manifold fraction, KL proxy,
  implicit accuracy) and the training loss against step, from the rows of metrics.jsonl.
- `diffusion_section`: what `preftune report RUN_DIR` shows for a `preftune diffusion train` run.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from preftune.report.plots import plt, save_figure

CURVES = [("reward", ["eval/reward"]), ("target fraction / on manifold", ["eval/target_fraction", "eval/on_manifold"]),
          ("KL proxy", ["eval/kl_proxy"]), ("implicit accuracy", ["eval/implicit_accuracy", "accuracy"]),
          ("training loss", ["loss"])]


def tile(images: torch.Tensor, columns: int | None = None):
    """(N, C, H, W) in [-1, 1] -> one PIL image, `columns` per row (default: square-ish)."""
    from PIL import Image

    images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu()
    n, c, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    canvas = torch.zeros(c, rows * (h + 1), columns * (w + 1), dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        canvas[:, r * (h + 1): r * (h + 1) + h, col * (w + 1): col * (w + 1) + w] = images[i]
    array = canvas.permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if c == 1 else array, mode="L" if c == 1 else "RGB")


def save_sample_grid(samples: torch.Tensor, task, path: Path, conditions=None, title: str = "") -> Path:
    """A PNG of samples: tiled images, or for 2-D toys a scatter (videos: one path per sample)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = samples.detach().float().cpu()
    if samples.dim() == 5:                                   # videos (N, F, C, H, W): one row of frames each
        image = tile(samples[:8].flatten(0, 1), columns=samples.shape[1])
        scale = max(1, 256 // max(image.size))
        image.resize((image.size[0] * scale, image.size[1] * scale), resample=0).save(path)
        return path
    if samples.dim() == 4:                                   # images
        image = tile(samples[:64])
        scale = max(1, 256 // max(image.size))
        image.resize((image.size[0] * scale, image.size[1] * scale), resample=0).save(path)
        return path
    fig, ax = plt.subplots(figsize=(4, 4))
    centres = getattr(task, "centres", None)
    if centres is not None:
        ax.scatter(centres[:, 0], centres[:, 1], marker="x", color="black", s=40, label="modes")
    if samples.dim() == 3:                                   # videos: (N, F, 2)
        for trajectory in samples[:64]:
            ax.plot(trajectory[:, 0], trajectory[:, 1], alpha=0.3, linewidth=0.8)
        ax.scatter(samples[:64, 0, 0], samples[:64, 0, 1], s=6, color="tab:red", label="frame 0")
    else:
        colour = None if conditions is None or not torch.is_tensor(conditions) or conditions.dim() != 1 else conditions
        ax.scatter(samples[:, 0], samples[:, 1], s=4, alpha=0.5, c=colour, cmap="tab10" if colour is not None else None)
    ax.set_aspect("equal")
    ax.set_xlim(-3, 3)
    ax.set_ylim(-3, 3)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_reward_curves(rows: list[dict], path: Path) -> Path | None:
    """The rows of a run's metrics.jsonl drawn against step (eval metrics as points, loss as a line)."""
    panels = [(title, keys) for title, keys in CURVES if any(k in r for r in rows for k in keys)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), marker="o" if key.startswith("eval/") else None, markersize=3,
                        label=key.split("/")[-1])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if len(keys) > 1:
            ax.legend(fontsize=7)
    return save_figure(fig, path)


def diffusion_section(page, run_dir: Path, plots: Path, rows: list[dict]) -> None:
    """The report section of a diffusion run; rows: its metrics.jsonl."""
    summary = json.loads((run_dir / "diffusion_summary.json").read_text())
    page.heading(f"Diffusion: {summary['objective']} on {summary['model']}")
    page.mapping({"objective": summary["objective"], "input kind": summary["kind"], "steps": summary["steps"],
                  "reference": summary["reference"], "reward": summary["reward"], "processes": summary["processes"]}, "run")
    before, after = summary.get("initial_eval", {}), summary.get("eval", {})
    keys = [k for k in after if k in before]
    if keys:
        page.table(["metric", "start", "end", "change"],
                   [[k.removeprefix("eval/"), before[k], after[k], after[k] - before[k]] for k in keys],
                   "evaluation on fixed noise (deterministic sampler)")
    page.image(plot_reward_curves(rows, plots / "diffusion_curves.png"), "reward and evaluation curves")
    grids = sorted((run_dir / "samples").glob("step-*.png")) if (run_dir / "samples").exists() else []
    for grid in ([grids[0], grids[-1]] if len(grids) > 1 else grids):
        page.paragraph(f"samples at {grid.stem}")
        page.image(grid, grid.stem)
