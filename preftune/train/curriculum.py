"""Curricula over pairs cut from ranked lists: Curry-DPO (Pattnaik et al. 2024; offline.md §4).

The loss of every stage is the configured objective (for Curry-DPO `curry_dpo`, i.e. DPO); a
curriculum adds data and schedule on top of the ordinary `train()`, and the runner (runner.py)
hands a recipe with a `curriculum:` section to it:

1. ranked rows {prompt, responses, scores|ranks}: those of data.source, or for `task:<name>`
   data.task.samples_per_prompt samples per prompt of the initial model scored by the task's
   gold oracle;
2. pairs (data/ranked.py: chosen_fixed / rejected_fixed / all_pairs, min_gap) and how easy each
   one is (rating_gap; ref_implicit_margin = log pi_ref(chosen) - log pi_ref(rejected) under the
   initial reference; random);
3. a schedule (cfg.curriculum.schedule):
   - iterative: stage k trains on the k-th easiest pair of every prompt (an ordinary shuffled
     run) starting from the stage k-1 policy, and the reference of stage k is a frozen copy of
     that same policy (stage 1: the initial model). Every stage therefore starts at
     policy = reference: every margin is 0 and the first loss is log 2.
   - sorted: one run over all pairs in the order of data/ranked.easy_to_hard (every prompt's
     easiest pair, then the second easiest, ...; train.shuffle off, so there is no shuffle across
     difficulty stages), with the initial model as the fixed reference.

Layout: the last stage is the run itself (cfg.run_dir holds model/, metrics.jsonl,
train_summary.json); earlier stages live in cfg.run_dir/stages/stage-<k>/. The ranked rows and
each stage's pairs are written under cfg.run_dir/data/, and cfg.run_dir/curriculum.json records
the whole configuration (curriculum included) and every stage (its pairs, steps, run directory).

A stage with fewer pairs than one global batch cannot take a step; since stage k only holds the
prompts with at least k pairs, such stages are the last ones, and they are left out (and listed
as skipped in curriculum.json).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable

import torch

from preftune.config import CurriculumConfig, RunConfig, to_dict
from preftune.data import ranked
from preftune.data.formats import read_rows
from preftune.train.checkpoint import list_checkpoints
from preftune.train.loop import train
from preftune.train.sources import run_data, source_task, task_rows

SCHEDULES = ("iterative", "sorted")


def train_curriculum(cfg: RunConfig, resume: str | bool | None = None, data_source=None,
                     on_step_end: Callable[[int, dict], None] | None = None) -> Path:
    """Run the curriculum of cfg.curriculum; returns cfg.run_dir (the last stage's run directory).

    data_source: ranked rows in memory instead of cfg.data.source. resume: finished stages are
    kept, and an unfinished stage continues from its latest checkpoint if it has one.
    """
    settings = cfg.curriculum
    validate(settings)
    if settings.schedule == "iterative" and cfg.model.lora.enabled:
        raise ValueError("an iterative curriculum starts each stage from the previous stage's saved model, "
                         "which a LoRA run saves as an adapter only; use schedule: sorted or full fine-tuning")
    run_dir = cfg.run_dir
    rows = ranked_rows(cfg, data_source, reuse=bool(resume))
    pairs = ranked.pairs_from_ranked_rows(rows, settings.pairs, settings.min_gap)
    if not pairs:
        raise ValueError(f"the {len(rows)} ranked rows give no pair with a score gap above {settings.min_gap} "
                         f"(pairs: {settings.pairs})")
    margins = reference_margins(cfg, pairs) if settings.order == "ref_implicit_margin" else None
    ease = ranked.pair_ease(pairs, settings.order, margins, cfg.train.seed)
    if settings.schedule == "sorted":
        stages = [ranked.easy_to_hard(pairs, ease, settings.shuffle_within, cfg.train.seed)]
    else:
        stages = ranked.curriculum_stages(pairs, ease, settings.stages)
    global_batch = cfg.train.batch_size * cfg.train.grad_accum * int(os.environ.get("WORLD_SIZE", "1"))
    runnable = [stage for stage in stages if len(stage) >= global_batch]
    if not runnable:
        raise ValueError(f"no curriculum stage has a global batch of pairs ({global_batch}); "
                         f"stage sizes: {[len(s) for s in stages]}")

    record = {"config": to_dict(cfg), "ranked_rows": len(rows), "pairs": len(pairs), "stages": [],
              "skipped_stages": [{"stage": k + 1, "pairs": len(s)} for k, s in enumerate(stages)
                                 if len(s) < global_batch]}
    model = cfg.model.name_or_path
    for k, stage_pairs in enumerate(runnable, start=1):
        last = k == len(runnable)
        stage_dir = run_dir if last else run_dir / "stages" / f"stage-{k}"
        write_rows(stage_pairs, run_dir / "data" / f"stage-{k}.jsonl")
        finished = not last and (stage_dir / "train_summary.json").exists() and resume
        if not finished:
            stage_cfg = dataclasses.replace(
                cfg, name=f"{cfg.name}-stage-{k}" if not last else cfg.name, output_dir=str(stage_dir),
                model=dataclasses.replace(cfg.model, name_or_path=model),
                # The reference of each stage is a frozen copy of its initial policy (the previous
                # stage's), unless a fixed reference model was configured.
                curriculum=CurriculumConfig(),
                train=dataclasses.replace(cfg.train, shuffle=cfg.train.shuffle and settings.schedule != "sorted"))
            stage_resume = True if resume and list_checkpoints(stage_dir) else None
            train(stage_cfg, run_data(stage_cfg, stage_pairs), resume=stage_resume, on_step_end=on_step_end)
        summary = json.loads((stage_dir / "train_summary.json").read_text())
        record["stages"].append({"stage": k, "pairs": len(stage_pairs), "initial_model": model,
                                 "steps": summary["steps"], "run_dir": str(stage_dir)})
        model = str(stage_dir / "model")
    (run_dir / "curriculum.json").write_text(json.dumps(record, indent=1))
    return run_dir


def validate(settings: CurriculumConfig) -> None:
    mode = ranked.PAIR_MODE_ALIASES.get(settings.pairs, settings.pairs)
    if mode not in ranked.PAIR_MODES:
        raise ValueError(f"curriculum.pairs must be one of {ranked.PAIR_MODES}, got {settings.pairs!r}")
    if settings.order not in ranked.DIFFICULTY_SIGNALS:
        raise ValueError(f"curriculum.order must be one of {ranked.DIFFICULTY_SIGNALS}, got {settings.order!r}")
    if settings.schedule not in SCHEDULES:
        raise ValueError(f"curriculum.schedule must be one of {SCHEDULES}, got {settings.schedule!r}")


def ranked_rows(cfg: RunConfig, data_source=None, reuse: bool = False) -> list[dict]:
    """The ranked rows of the curriculum: in memory, from data.source, or sampled from a task."""
    if data_source is not None:
        return [raw.data for raw in read_rows(data_source)]
    if not cfg.data.source.startswith("task:"):
        rows = [raw.data for raw in read_rows(cfg.data.source, cfg.data.split)]
        return rows[:cfg.data.limit] if cfg.data.limit is not None else rows
    path = cfg.run_dir / "data" / f"{source_task(cfg).name}-ranked.jsonl"
    if reuse and path.exists():
        return [raw.data for raw in read_rows(str(path))]
    rows, stats = task_rows(cfg, "listwise")
    write_rows(rows, path)
    path.with_suffix(".stats.json").write_text(json.dumps(stats, indent=1))
    return rows


@torch.no_grad()
def reference_margins(cfg: RunConfig, pairs: list[dict]) -> list[float]:
    """log pi_ref(chosen) - log pi_ref(rejected) of every pair under the initial reference
    (cfg.reference when it names a model, else the initial policy), tokenised as training does."""
    from preftune.data.collate import collate
    from preftune.data.formats import row_to_example
    from preftune.data.tokenize import Tokenization
    from preftune.logps import sequence_logps
    from preftune.models import load_causal_lm, load_tokenizer

    name = cfg.reference if cfg.reference not in ("auto", "model", "lora-disabled", "none") else cfg.model.name_or_path
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    model = load_causal_lm(name, cfg.model.dtype, cfg.train.seed, tokenizer, **cfg.model.loading).to(_device()).eval()
    tokenization = Tokenization(tokenizer, cfg.data.max_length, cfg.data.max_prompt_length, "truncate")
    examples = [tokenization(row_to_example(p, f"pair {i}", "pairwise", cfg.data.format)) for i, p in enumerate(pairs)]
    margins = []
    for start in range(0, len(examples), cfg.train.batch_size):
        batch = collate(examples[start:start + cfg.train.batch_size], tokenizer.pad_token_id).to(_device())
        sums = sequence_logps(model, batch).sum.float().cpu()
        margins += (sums[:, 0] - sums[:, 1]).tolist()
    return margins


def write_rows(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
