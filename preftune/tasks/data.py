"""Training rows from a built-in task: demonstrations for SFT, or on-policy preference pairs.

On-policy pairs follow the quickstart recipe of the issue: sample k responses per prompt from
the model being trained (its initial weights), score them with the gold oracle, and pair the
best against the worst. Prompts whose samples all score the same give no pair. Every row also
carries the gold scores of its responses and, when the task has one, the gold answer ("gold"),
so methods that take margins or a gold response can train on task data too.

A labeller (tasks/labellers.py) other than the gold oracle decides the pairs instead: then
`chosen_score`/`rejected_score` (and a list's `scores`) are the labeller's utilities, as an
annotated dataset would carry them, and `chosen_gold`/`rejected_gold` keep the gold scores for
analysis. A task with several gold rewards (`objectives`) adds `chosen_<name>`/`rejected_<name>`.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from preftune.data.formats import usable_response
from preftune.sampling import sample
from preftune.tasks.labellers import Labeller


def pairs_from_samples(task, samples, pairing: str = "best-worst", labeller: Labeller | None = None,
                       seed: int = 0) -> list[dict]:
    """Label sampled responses (by the gold oracle unless `labeller` says otherwise) and turn them
    into preference rows. `seed` drives the labeller's randomness, so labels are reproducible."""
    if pairing not in ("best-worst", "all", "listwise"):
        raise ValueError(f"pairing must be 'best-worst', 'all' or 'listwise', got {pairing!r}")
    labeller = labeller or Labeller()
    rng = random.Random(seed)
    gold = getattr(task, "answer", None)
    objectives = getattr(task, "objectives", ())
    rows = []
    for prompt, texts in zip(samples.prompts, samples.texts):
        # A blank sample (the model stopped at once) or one with a NUL byte (a barely trained
        # model samples arbitrary bytes) is not a usable response: the data layer rejects such
        # text, so these samples take no part in pairs (counted by the caller).
        kept = [t for t in texts if usable_response(t)]
        if pairing != "listwise":
            kept = list(dict.fromkeys(kept))  # a pair of identical texts teaches nothing
        if not kept:
            continue
        gold_scores = [task.score(prompt, t) for t in kept]
        scored = list(zip(labeller.utilities(kept, gold_scores, rng), kept, gold_scores))
        extra = {"gold": gold(prompt)} if gold else {}
        if pairing == "listwise":
            if len(scored) == len(texts) and len({u for u, _, _ in scored}) > 1:
                utilities = [u for u, _, _ in scored]
                if labeller.flips(rng):
                    utilities = [-u for u in utilities]
                rows.append({"prompt": prompt, "responses": [t for _, t, _ in scored], "scores": utilities,
                             **({} if labeller.is_gold else {"gold_scores": [g for _, _, g in scored]}), **extra})
            continue
        if pairing == "best-worst":
            best = max(scored, key=lambda s: s[0])
            worst = min(scored, key=lambda s: s[0])
            candidates = [(best, worst)] if best[0] > worst[0] else []
        else:
            candidates = [(a, b) for a in scored for b in scored if a[0] > b[0]]
        for chosen, rejected in candidates:
            if labeller.flips(rng):  # the responses swap places; the annotator's scores stay in label order
                chosen, rejected = (chosen[0], *rejected[1:]), (rejected[0], *chosen[1:])
            rows.append({"prompt": prompt, "chosen": chosen[1], "rejected": rejected[1],
                         "chosen_score": chosen[0], "rejected_score": rejected[0], **extra,
                         **({} if labeller.is_gold else {"chosen_gold": chosen[2], "rejected_gold": rejected[2]}),
                         **_objective_columns(task, objectives, prompt, chosen[1], rejected[1])})
    return rows


def _objective_columns(task, objectives, prompt: str, chosen: str, rejected: str) -> dict:
    """Per-objective gold scores of a pair (for multi-objective methods and Pareto fronts)."""
    if not objectives:
        return {}
    a, b = task.objective_scores(prompt, chosen), task.objective_scores(prompt, rejected)
    return {**{f"chosen_{k}": a[k] for k in objectives}, **{f"rejected_{k}": b[k] for k in objectives}}


def build_task_rows(task, task_cfg, kind: str, model, tokenizer, seed: int, progress: bool = True) -> tuple[list[dict], dict]:
    """Rows for `kind` ("sft" demonstrations or "pairwise" on-policy pairs) and a stats dict."""
    if kind == "sft":
        rows = task.demonstrations(task_cfg.demonstrations, task_cfg.noise, seed)
        return rows, {"demonstrations": len(rows), "noise": task_cfg.noise}
    prompts = task.prompts("train", task_cfg.prompts)
    samples = sample(model, tokenizer, prompts, task_cfg.samples_per_prompt, task_cfg.temperature, 1.0,
                     task_cfg.max_new_tokens, 256, seed, progress, desc="sample pairs")
    labeller = task_labeller(task, task_cfg)
    rows = pairs_from_samples(task, samples, "listwise" if kind == "listwise" else task_cfg.pairing, labeller, seed)
    scores = [task.score(p, t) for _, p, t, _ in samples.flat()]
    blank = sum(not usable_response(t) for _, _, t, _ in samples.flat())
    stats = {"prompts": len(prompts), "samples": len(scores), "blank_samples": blank, "pairs": len(rows),
             "sample_gold_reward": sum(scores) / len(scores), "sampling_tokens_per_s": samples.tokens_per_s,
             **label_stats(rows, labeller)}
    return rows, stats


def task_labeller(task, task_cfg) -> Labeller:
    """The task's own labeller (e.g. length-bias's), with `data.task.labeller` options on top."""
    options = {**getattr(task, "default_labeller", {}), **(getattr(task_cfg, "labeller", None) or {})}
    return Labeller.from_options(options)


def label_stats(rows: list[dict], labeller: Labeller) -> dict:
    """The labeller and, for a non-gold one, how often its pairs agree with the gold oracle."""
    stats = {"labeller": labeller.as_dict()}
    judged = [r for r in rows if "chosen_gold" in r and r["chosen_gold"] != r["rejected_gold"]]
    if judged:
        stats["label_gold_agreement"] = sum(r["chosen_gold"] > r["rejected_gold"] for r in judged) / len(judged)
    return stats


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path
