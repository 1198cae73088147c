"""Shared pieces of the diffusion tests: quick toy base models and small image datasets on disk.

A quick toy is pretrained for a few dozen steps (seconds), enough to exercise every code path; the
recipes' own builtin:toy-<name> models are the benchmark's, trained once and cached.
Image datasets are 16x16 PNG files with a JSONL index in each layout the data layer reads.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

QUICK_TOYS = {"gmm": ("gmm", "epsilon"), "gmm-flow": ("gmm", "flow"), "gmm-cond-flow": ("gmm-cond", "flow"),
              "gmm-underfit": ("gmm", "epsilon"), "gmm-video": ("gmm-video", "flow"),
              "gmm-control": ("gmm-control", "epsilon"), "digits": ("digits", "epsilon")}


def quick_toy(root: Path, name: str) -> Path:
    from preftune.diffusion.toy_models import pretrain
    from preftune.diffusion.toys import ToyModelConfig

    path = Path(root) / name
    if not (path / "toy.json").exists():
        task, parameterization = QUICK_TOYS[name]
        pretrain(ToyModelConfig(task=task, parameterization=parameterization, steps=30, hidden=32, batch_size=64,
                                timesteps=100), path, progress=False)
    return path


def write_png(path: Path, value: float, seed: int = 0) -> str:
    from PIL import Image

    rng = np.random.default_rng(seed)
    array = np.clip(value * 255 + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(array).save(path)
    return path.name


def write_image_data(root: Path, kind: str, rows: int = 8) -> Path:
    """A JSONL file of `kind` rows over PNGs in `root` (brighter images are the preferred ones)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    captions = ["a red circle", "a blue square", "a green field", "a grey sky"]
    lines = []
    for i in range(rows):
        caption = captions[i % len(captions)]
        bright = write_png(root / f"{kind}-{i}-bright.png", 0.8, i)
        dark = write_png(root / f"{kind}-{i}-dark.png", 0.2, 100 + i)
        if kind == "image-pairs":
            swap = i % 2
            lines.append({"caption": caption, "jpg_0": dark if swap else bright, "jpg_1": bright if swap else dark,
                          "label_0": 0 if swap else 1, "score_0": 0.2 if swap else 0.8, "score_1": 0.8 if swap else 0.2})
        elif kind == "image-lists":
            mid = write_png(root / f"{kind}-{i}-mid.png", 0.5, 200 + i)
            lines.append({"caption": caption, "images": [dark, bright, mid], "scores": [0.2, 0.8, 0.5]})
        elif kind == "unpaired":
            lines.append({"caption": caption, "image": bright, "label": 1})
            lines.append({"caption": caption, "image": dark, "label": 0})
        elif kind == "condition-pairs":
            lines.append({"image": bright, "control_chosen": caption, "control_rejected": captions[(i + 1) % 4]})
        elif kind == "prompts":
            lines.append({"caption": caption})
        elif kind == "segment-pairs":   # two 2-frame videos: frame 0 better in video 0, frame 1 in video 1
            frames = [write_png(root / f"{kind}-{i}-f{j}.png", 0.3 + 0.4 * j, 300 + 4 * i + j) for j in range(4)]
            lines.append({"caption": caption, "video_0": [frames[1], frames[0]], "video_1": [frames[0], frames[3]],
                          "segment_labels": [1, -1]})
        else:
            raise ValueError(kind)
    path = root / f"{kind}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path
