"""What a run trains on, decided before the loop starts: rows from a file or a data set, rows given
in memory, or rows a built-in task makes from the run's initial model; tokenized for the objective.

`task:<name>` sources give demonstrations when the objective is plain SFT (or data.kind is sft),
scored lists for listwise objectives, and otherwise on-policy pairs: samples of the initial policy
labelled by the task's labeller (tasks/data.py). They are made once, on the main process, and
saved in the run directory (data/<task>-<kind>.jsonl with its .stats.json), which is what every
process then reads.
"""
from __future__ import annotations

import json

from preftune.config import RunConfig
from preftune.data.prepare import PreparedData, prepare_data
from preftune.methods import build_objective


def run_data(cfg: RunConfig, rows=None) -> PreparedData:
    """The run's tokenized train and held-out examples: `rows` (a list of dicts or a path) when given,
    else cfg.data.source, where a `task:` source is sampled from the initial model first."""
    from preftune.models import load_tokenizer

    objective = build_objective(cfg.loss)
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    origin = {}
    if rows is None and cfg.data.source.startswith("task:"):
        kind = cfg.data.kind if cfg.data.kind != "auto" else \
            {"any": "sft", "listwise": "listwise"}.get(objective.input_kind, "pairwise")
        rows, stats = materialize_task_rows(cfg, kind)
        origin = {"task": stats}
    # The load summary is printed with the progress bars (a bench's workers run quiet); it is in the summary either way.
    data = prepare_data(cfg.data, tokenizer, objective.input_kind, cfg.train.seed, rows,
                        log=print if cfg.train.progress else None)
    data.origin.update(origin)
    return data


def materialize_task_rows(cfg: RunConfig, kind: str) -> tuple[str, dict]:
    """Make the rows of a `task:<name>` source on the main process and save them in the run directory;
    returns their path and the task's statistics (every process gets the same)."""
    import torch
    from accelerate import PartialState

    # As make_accelerator (loop.py) will: without a GPU, the process group of a torchrun launch forms
    # only when accelerate is told to use the CPU, and the first state made is the one every later use gets.
    state = PartialState(cpu=not torch.cuda.is_available())
    path = cfg.run_dir / "data" / f"{source_task(cfg).name}-{kind}.jsonl"
    stats = {}
    if state.is_main_process:
        from preftune.tasks.data import write_jsonl

        rows, stats = task_rows(cfg, kind)
        write_jsonl(rows, path)
        path.with_suffix(".stats.json").write_text(json.dumps(stats, indent=1))
    state.wait_for_everyone()
    if not stats:
        stats = json.loads(path.with_suffix(".stats.json").read_text())
    return str(path), stats


def task_rows(cfg: RunConfig, kind: str) -> tuple[list[dict], dict]:
    """Rows of kind `kind` ("sft", "pairwise", "listwise") from the task of cfg.data.source, sampled
    (for preference rows) from the run's initial model; and the task's statistics."""
    import torch

    from preftune.models import load_causal_lm, load_tokenizer
    from preftune.tasks.data import build_task_rows

    task = source_task(cfg)
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    model = None
    if kind != "sft":  # demonstrations need no model
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_causal_lm(cfg.model.name_or_path, cfg.model.dtype, cfg.train.seed, tokenizer,
                               **cfg.model.loading).to(device)
    return build_task_rows(task, cfg.data.task, kind, model, tokenizer, cfg.train.seed, cfg.train.progress)


def source_task(cfg: RunConfig):
    """The built-in task of a `task:<name>` source, with the recipe's task options."""
    from preftune.tasks import get_task

    return get_task(cfg.data.source.split(":", 1)[1], **cfg.data.task.options)
