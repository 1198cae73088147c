"""The bench's results: mean ± std over seeds per (task, start, method), as JSON and as Markdown
(results.md, and the bench section of benchmarks/README.md)."""
from __future__ import annotations

import math
import os
import statistics
from pathlib import Path

from preftune.bench.cells import GUIDANCE_METHOD, GUIDED_BY_DPO
from preftune.bench.config import BenchConfig, Entry
from preftune.config import load_config, to_dict


HEADLINE = [("gold_reward", "gold reward", "{:.3f}"), ("win_rate", "win-rate vs SFT", "{:.3f}"),
            ("kl", "KL", "{:.2f}"), ("length", "length", "{:.2f}")]


def mean_std(values: list[float]) -> dict:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def method_taxonomy(entry: Entry) -> dict[str, list[str]]:
    """The survey-taxonomy tags (A Survey of DPO, offline.md §18) of an entry's objective, merged over its terms."""
    from preftune.methods import build_objective

    tags: dict[str, list[str]] = {}
    for term in build_objective(entry.loss or load_config(entry.recipe).loss).terms:
        for axis, values in term.spec.taxonomy.items():
            tags.setdefault(axis, [])
            tags[axis] += [v for v in values if v not in tags[axis]]
    return tags


def aggregate(cfg: BenchConfig, entries: list[Entry], assets: list[dict], results: list[dict], command: str,
              wall_seconds: float) -> dict:
    """Mean ± std over seeds of every metric, per (task, start, method), plus the SFT and base models."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["task"], r["start"], r["method"]), []).append(r)
    for a in assets:  # the starting models themselves, evaluated on the same prompts
        for start in ("sft", "base"):
            groups.setdefault((a["task"], start, f"({start} model)"), []).append(
                {"status": "ok", "metrics": a["evaluations"][start], "seed": a["seed"],
                 "train_seconds": a["sft_seconds"] if start == "sft" else 0.0})
    shared = sorted({f"{a['task']} uses {a['sft_shared_with']}'s" for a in assets if a.get("sft_shared_with")})
    rows = []
    for (task, start, method), members in sorted(groups.items()):
        ok = [m for m in members if m["status"] == "ok"]
        keys = sorted({k for m in ok for k, v in m["metrics"].items() if isinstance(v, float)})
        row = {"task": task, "start": start, "method": method, "seeds": len(members), "ok": len(ok),
               "metrics": {k: mean_std([m["metrics"].get(k) for m in ok]) for k in keys},
               "train_seconds": mean_std([m.get("train_seconds") for m in ok])}
        errors = sorted({m["error"] for m in members if m["status"] == "error"})
        if errors:
            row["errors"] = errors
        rows.append(row)
    taxonomy = {}
    for entry in entries:
        try:
            taxonomy[entry.name] = method_taxonomy(entry)
        except Exception as error:  # noqa: BLE001  (a broken recipe still gets its error row)
            taxonomy[entry.name] = {"error": [str(error)]}
    cpu = sum(a.get("cpu_seconds", 0.0) for a in assets) + sum(r.get("cpu_seconds", 0.0) for r in results)
    return {"command": command, "wall_seconds": round(wall_seconds, 1), "cpu_seconds": round(cpu, 1),
            "workers": cfg.workers,
            "threads_per_worker": cfg.threads_per_worker, "cpu_count": os.cpu_count(), "config": to_dict(cfg),
            "tasks": list(cfg.tasks), "starts": list(cfg.starts), "seeds": list(cfg.seeds),
            "methods": [e.name for e in entries], "taxonomy": taxonomy,
            "recipes": {e.name: (e.recipe if e.loss is None else f"{e.recipe} with loss {e.loss} (default "
                                 f"hyperparameters)") for e in entries},
            "assets": [{k: a[k] for k in ("task", "seed", "sft_seconds", "sample_gold_reward")} for a in assets],
            "curricula": [e.name for e in entries if e.loss is None and load_config(e.recipe).curriculum.pairs],
            "shared_sft": shared,
            "rows": rows, "cells": results}


def _cell(stat: dict | None, fmt: str = "{:.3f}") -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    return f"{fmt.format(stat['mean'])} ± {fmt.format(stat['std'])}"


def format_markdown(report: dict) -> str:
    """The results as Markdown: the exact command, a methods x tasks gold-reward table per
    starting point (with the survey's taxonomy as columns), then every metric per task."""
    rows = {(r["task"], r["start"], r["method"]): r for r in report["rows"]}
    seeds, tasks = report["seeds"], report["tasks"]
    lines = [f"Command: `{report['command']}`", "",
             f"{len(report['methods'])} methods x {len(tasks)} tasks x {len(report['starts'])} starting points x "
             f"{len(seeds)} seeds (seeds {', '.join(map(str, seeds))}); wall time {report['wall_seconds'] / 60:.1f} min "
             + (f"over {len(report['invocations'])} invocations (a resumed run reuses finished cells) "
                if len(report.get("invocations", [])) > 1 else "") +
             f"with {report['workers']} worker processes of {report['threads_per_worker']} thread(s) "
             f"on a machine with {report['cpu_count']} CPUs ({report.get('cpu_seconds', 0) / 60:.1f} CPU-minutes "
             f"in the workers; wall times also count any other load on the machine). "
             f"Every number is mean ± std over seeds.", ""]
    pretrain = report.get("config", {}).get("pretrain", {})
    if pretrain.get("steps", 0) > 0:
        lines += [f"Base model (one per seed, shared by every task): the tiny model trained by next-token prediction "
                  f"for {pretrain['steps']} steps of {pretrain['batch_size']} on an even mix of every task's "
                  f"demonstrations, {pretrain['noise']:.0%} of them with a wrong answer: a stand-in for a pretrained "
                  f"model, which knows each task's format and is tuned to none. The SFT models start from it.", ""]
    else:
        lines += ["Base model: the tiny model as initialised (random weights; `pretrain.steps: 0`).", ""]
    if report.get("shared_sft"):
        lines += [f"Tasks with the same demonstrations share one SFT model per seed ({', '.join(report['shared_sft'])}).",
                  ""]
    templated = [name for name, recipe in report.get("recipes", {}).items() if "default hyperparameters" in recipe]
    if templated:
        lines += [f"Methods without a recipe of their own run on the settings of configs/methods/dpo.yaml with "
                  f"their default hyperparameters: {', '.join(templated)}.", ""]
    guided = sorted({c["method"] for c in report.get("cells", []) if set(c.get("aux_models", {})) & set(GUIDED_BY_DPO)})
    if guided:
        lines += [f"Guidance models ({', '.join(guided)}): the `{GUIDANCE_METHOD}` run of the same task, start and "
                  f"seed, as in TGDPO's setup (where the bench runs no `{GUIDANCE_METHOD}`, the starting model, which "
                  f"makes TGDPO train as DPO).", ""]
    proposals = sorted({c["method"] for c in report.get("cells", [])
                        if set(c.get("aux_models", {})) - set(GUIDED_BY_DPO)})
    if proposals:
        lines += [f"Proposal models ({', '.join(proposals)}): the SFT model, which sampled the responses, for both "
                  f"starting points.", ""]
    curricula = report.get("curricula", [])
    if curricula:
        lines += [f"Curricula ({', '.join(curricula)}) train on the same scored lists as the listwise methods, cut into "
                  f"pairs, for the preference budget per stage (the stages refresh the reference).", ""]
    axes = ("data_strategy", "learning_framework", "constraint_mechanism", "model_property")
    titles = {"sft": "Gold reward, preference training after SFT",
              "base": "Gold reward, preference training from the base model (no SFT stage)"}
    for start in report["starts"]:
        lines += [f"### {titles[start]}", "",
                  "| method | " + " | ".join(a.replace("_", " ") for a in axes) + " | " + " | ".join(tasks) + " |",
                  "|---" * (1 + len(axes) + len(tasks)) + "|"]
        for method in [f"({start} model)"] + report["methods"]:
            tags = report["taxonomy"].get(method, {})
            tag_cells = [", ".join(tags.get(a, [])) or "–" for a in axes] if tags else ["–"] * len(axes)
            cells = []
            for task in tasks:
                row = rows.get((task, start, method))
                cells.append(_cell(row["metrics"].get("gold_reward")) if row and row["ok"] else
                             ("error" if row else "–"))
            lines.append(f"| {method} | " + " | ".join(tag_cells) + " | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### Every metric, per task", "",
              "gold reward: mean gold score of samples at temperature 1; win-rate: against the SFT model's "
              "samples on the same prompts, judged by the gold oracle (ties count half); KL: Monte-Carlo "
              "KL to the run's starting model (the base model, for the SFT model's own row); length: tokens per "
              "response; train s: wall time of the preference stage (of SFT, for the SFT model's row). Task metrics "
              "per held-out subset are in results.json.", ""]
    for task in tasks:
        extra = sorted({k for (t, _, _), r in rows.items() if t == task for k in r["metrics"]}
                       - {k for k, _, _ in HEADLINE} - {"gold_reward_greedy", "prompts", "samples"})
        extra = [k for k in extra if "/" not in k or k.startswith("gold/")]  # per-subset numbers stay in the JSON
        lines += [f"#### {task}", "",
                  "| " + " | ".join(["method", "start", *(label for _, label, _ in HEADLINE), "train s",
                                      *(k.replace("_", " ") for k in extra)]) + " |",
                  "|---" * (3 + len(HEADLINE) + len(extra)) + "|"]
        for (t, start, method), r in sorted(rows.items(), key=lambda kv: (kv[0][1] != "sft", kv[0][1], kv[0][2])):
            if t != task:
                continue
            if not r["ok"]:
                lines.append(f"| {method} | {start} | error: {'; '.join(r.get('errors', []))[:120]} |")
                continue
            values = [_cell(r["metrics"].get(k), fmt) for k, _, fmt in HEADLINE]
            values.append(_cell(r["train_seconds"], "{:.1f}"))
            values += [_cell(r["metrics"].get(k)) for k in extra]
            lines.append(f"| {method} | {start} | " + " | ".join(values) + " |")
        lines.append("")
    return "\n".join(lines)


README_INTRO = """## preftune bench: every offline method on the built-in tasks

`preftune bench` trains every offline method recipe of `configs/methods/` on every built-in task,
for several seeds, both after an SFT stage and directly from the base model (the protocol of
"Insights into Alignment", Saeidi et al. 2025), and scores each run with the task's gold reward.
The SFT model and the preference data of each task and seed are made once and shared by all
methods and both starting points. See `preftune bench --help` and `configs/bench/`.

The models are the built-in tiny model (a 0.8M-parameter Llama with a byte tokenizer), trained for
a few dozen steps: the table compares methods under one small, fixed budget on synthetic tasks with
known gold rewards. It says nothing about how the methods rank on large models, and small
differences are within the seed-to-seed spread shown after each ±.

Regenerate this section with the command below followed by `--readme benchmarks/README.md`.
"""
README_START, README_END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def write_readme(report: dict, path: str | Path) -> Path:
    """Write the bench section of a Markdown file (benchmarks/README.md): replace what stands between
    its markers, or append the section to a file without them; the rest of the file is kept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    block = f"{README_START}\n{README_INTRO}\n{format_markdown(report)}\n{README_END}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if README_START in text and README_END in text:
        before, rest = text.split(README_START, 1)
        text = before + block + rest.split(README_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
    return path
