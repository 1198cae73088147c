"""Experiment trackers through accelerate (train.report_to; preftune/train/trackers.py): the same metric
names as metrics.jsonl, nothing shown twice after a resume, clear errors for trackers that are missing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from preftune.config import load_config
from preftune.train.runner import run_training
from preftune.train.trackers import flatten, tracker_setup

ROWS = [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)} for a in range(8) for b in range(4)]


def config(tmp_path: Path, *overrides: str):
    return load_config(None, [f"--output_dir={tmp_path}/run", "--data.max_length=24", "--data.max_prompt_length=12",
                              "--train.batch_size=4", "--train.steps=4", "--train.lr=1e-3", "--train.progress=false",
                              "--data.eval_fraction=0.25", "--speed.reference_cache=off", *overrides])


def scalars(run_dir: Path) -> dict[str, list[int]]:
    """Every TensorBoard tag with the steps it holds, as TensorBoard reads the directory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_tensorboard_holds_the_names_and_steps_of_metrics_jsonl_once_even_after_a_resume(tmp_path):
    cfg = config(tmp_path, "--train.checkpoint_every=2")
    run_dir = run_training(cfg, data_source=ROWS)
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    names = {key for entry in logged for key in entry if key != "step"}
    assert set(scalars(run_dir)) == names and "eval/loss" in names
    assert scalars(run_dir)["loss"] == [1, 2, 3, 4]

    run_training(cfg, resume=str(run_dir / "checkpoints" / "step-0000002"), data_source=ROWS)  # redo 3 and 4
    assert scalars(run_dir)["loss"] == [1, 2, 3, 4]  # the first run's 3 and 4 are purged, not doubled


@pytest.mark.slow
def test_no_tracker_and_unknown_or_missing_trackers(tmp_path):
    run_dir = run_training(config(tmp_path, "--train.report_to=[]", "--train.steps=1"), data_source=ROWS)
    assert (run_dir / "metrics.jsonl").exists() and not (run_dir / "tensorboard").exists()
    with pytest.raises(ValueError, match="unknown tracker \\['tensorbored'\\]"):
        tracker_setup(["tensorbored"], tmp_path)
    from accelerate.utils import is_wandb_available

    if not is_wandb_available():
        with pytest.raises(ValueError, match="'wandb', which is not installed: pip install wandb"):
            tracker_setup(["wandb"], tmp_path)


def test_the_recipe_is_flattened_for_the_trackers():
    assert flatten({"train": {"lr": 1e-5, "report_to": ["tensorboard"]}, "loss": {"dpo": {}}, "name": "x"}) == \
        {"train.lr": 1e-5, "train.report_to": '["tensorboard"]', "loss.dpo": "{}", "name": "x"}
